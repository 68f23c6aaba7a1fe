"""Property tests of the episodic-memory math in memory_core/episodic.py.

Shapes, seeds and write/forget histories are drawn by hypothesis; the tensors themselves come from a torch
generator seeded by hypothesis, so every failure is reproducible from the printed example. Exactness claims are
checked in float64 against closed forms computed here, independently of the code under test:

- Algorithm 1: the one-shot readout of N <= C written latents is the projection Zq Z^+ Z onto their span.
- Sequential updates (eqs. 2-6): any history of writes and forgets leaves M = (ridge I + W^T W)^-1 W^T Z and
  C^-1 = (ridge I + W^T W)^-1 over the facts still written, W = address(Z).

Tolerances are relative to the size of what is compared. Forgetting is a downdate (it divides by 1 - leverage), so
its round-off grows with the conditioning of C; the linear-addressing histories therefore use K >= C + 8, which keeps
M_ref^+ (and so C) well conditioned, the regime of the service's defaults (K=512, C=384).

Two regressions are pinned: batch write/forget cycles under linear keys must not accumulate round-off (the Woodbury
step must keep C^-1 symmetric), and a rebuilt state must go from to_tensors straight to safetensors.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from memory_core.episodic import (
    EpisodicMemory,
    MemoryConfig,
    MemoryState,
    generate,
    nearest,
    pinv,
    read,
    reference_memory,
    write_episode,
)

F64 = torch.float64
MODES = ("linear", "gaussian")
FAST = settings(max_examples=25, deadline=None)
seeds = st.integers(min_value=0, max_value=2**31 - 1)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The matrices here are at most 64 x 64: extra threads only add overhead (minutes on a busy 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --- helpers -----------------------------------------------------------------------------------------------------


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=g, dtype=F64)


def _latents(g: torch.Generator, n: int, c: int) -> torch.Tensor:
    """Unit-norm latents, like the encoder's (N, C)."""
    return torch.nn.functional.normalize(_randn(g, n, c), dim=1)


def _memory(slots: int, dim: int, mode: str, ridge: float = 1e-3, seed: int = 0,
            dtype: torch.dtype = F64) -> EpisodicMemory:
    return EpisodicMemory(MemoryConfig(slots=slots, dim=dim, addressing=mode, ridge=ridge, seed=seed), dtype=dtype)


def _closed_form(mem: EpisodicMemory, Z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M*, C*^-1) of the facts Z by a direct K x K solve, independent of update() and rebuild()."""
    K = mem.cfg.slots
    A = mem.cfg.ridge * torch.eye(K, dtype=F64)
    if Z.shape[0] == 0:
        return torch.zeros((K, mem.cfg.dim), dtype=F64), torch.linalg.inv(A)
    W = mem.address(Z).double()  # (N, K)
    A = A + W.T @ W
    return torch.linalg.solve(A, W.T @ Z.double()), torch.linalg.inv(A)


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, scale: float | None = None) -> None:
    """||actual - expected||_F <= rtol * max(||expected||_F, scale): a relative check that survives expected = 0."""
    actual, expected = actual.double(), expected.double()
    assert actual.shape == expected.shape
    ref = expected.norm().item() if scale is None else max(expected.norm().item(), scale)
    err = (actual - expected).norm().item()
    assert err <= rtol * ref, f"relative error {err / ref:.3e} > {rtol:.1e}"


def _cuts(data: st.DataObject, n: int) -> list[tuple[int, int]]:
    """Split range(n) into uneven consecutive batches drawn by hypothesis."""
    points = data.draw(st.sets(st.integers(1, n - 1), max_size=min(n - 1, 6)) if n > 1 else st.just(set()))
    bounds = [0, *sorted(points), n]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


@st.composite
def mem_shapes(draw: st.DrawFn, mode: str) -> tuple[int, int]:
    """(K, C). Linear keys need K >= C + 8 for the sequential histories to be well conditioned (see module doc)."""
    C = draw(st.integers(4, 32))
    K = draw(st.integers(max(8, C + 8), 64)) if mode == "linear" else draw(st.integers(8, 64))
    return K, C


# --- 1. Algorithm 1: one-shot write, read, generate ------------------------------------------------------------


@FAST
@given(data=st.data(), seed=seeds)
def test_one_shot_readout_is_the_projection_onto_the_written_span(data: st.DataObject, seed: int) -> None:
    K = data.draw(st.integers(8, 64))
    C = data.draw(st.integers(4, min(32, K)))
    N = data.draw(st.integers(1, C))
    Q = data.draw(st.integers(1, 6))
    g = _gen(seed)
    M0, Z, Zq = _randn(g, K, C), _randn(g, N, C), _randn(g, Q, C)

    M = write_episode(Z, M0)
    assert M.shape == (K, C)
    Zr, W = read(Zq, M)
    assert Zr.shape == (Q, C) and W.shape == (Q, K)
    _assert_close(Zr, W @ M, 1e-12)

    expected = Zq @ torch.linalg.pinv(Z) @ Z  # orthogonal projection of the queries onto span(Z)
    _assert_close(Zr, expected, 1e-8, scale=Zq.norm().item())
    # The written latents themselves read back exactly.
    _assert_close(read(Z, M)[0], Z, 1e-8)
    # With N < C the readout is a real projection, not the identity: directions orthogonal to span(Z) read as 0.
    if N < C:
        perp = torch.linalg.svd(Z, full_matrices=True).Vh[N:]  # (C - N, C) orthonormal basis of span(Z)^perp
        _assert_close(read(perp, M)[0], torch.zeros_like(perp), 1e-8, scale=1.0)


@FAST
@given(data=st.data(), seed=seeds)
def test_one_shot_write_is_deterministic_and_noise_is_the_documented_perturbation(
        data: st.DataObject, seed: int) -> None:
    K = data.draw(st.integers(8, 64))
    C = data.draw(st.integers(4, min(32, K)))
    N = data.draw(st.integers(1, C))
    g = _gen(seed)
    M0, Z = _randn(g, K, C), _randn(g, N, C)

    assert torch.equal(write_episode(Z, M0), write_episode(Z, M0))
    assert torch.equal(write_episode(Z, M0, noise_std=0.0, generator=_gen(1)), write_episode(Z, M0))

    # Noise: same generator seed -> same memory; it is Z_xi = Z + std * randn(Z.shape) that gets written.
    std = 0.1
    M_a = write_episode(Z, M0, noise_std=std, generator=_gen(seed + 1))
    M_b = write_episode(Z, M0, noise_std=std, generator=_gen(seed + 1))
    assert torch.equal(M_a, M_b)
    if N < C:  # with N >= C latents spanning R^C, W0^+ Z_xi is M0 whatever the noise: nothing to tell apart
        assert not torch.allclose(M_a, write_episode(Z, M0))
    Z_xi = Z + std * torch.randn(Z.shape, generator=_gen(seed + 1), dtype=F64)
    _assert_close(read(Z_xi, M_a)[0], Z_xi, 1e-8)


@FAST
@given(data=st.data(), seed=seeds)
def test_generate_returns_latents_in_the_row_space_of_the_memory(data: st.DataObject, seed: int) -> None:
    K = data.draw(st.integers(8, 64))
    C = data.draw(st.integers(5, min(32, K)))
    N = data.draw(st.integers(1, C - 1))  # N < C: the row space is a proper subspace, so random vectors fail
    n = data.draw(st.integers(1, 8))
    g = _gen(seed)
    Z = _randn(g, N, C)
    M = write_episode(Z, _randn(g, K, C))

    Zg = generate(M, n, generator=_gen(seed + 1))
    assert Zg.shape == (n, C) and Zg.dtype == M.dtype
    assert torch.equal(Zg, generate(M, n, generator=_gen(seed + 1)))
    assert Zg.norm() > 0
    _assert_close(Zg @ pinv(M) @ M, Zg, 1e-9)  # residual of the projection onto row(M) is ~0
    _assert_close(Zg @ torch.linalg.pinv(Z) @ Z, Zg, 1e-9)  # row(M) = span of the written latents
    # Equivalently (and what random vectors would fail): no component along span(Z)^perp.
    perp = torch.linalg.svd(Z, full_matrices=True).Vh[N:]  # (C - N, C)
    assert (Zg @ perp.T).norm() <= 1e-9 * Zg.norm()


# --- 2. sequential writes == batch least squares -----------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@FAST
@given(data=st.data(), seed=seeds)
def test_sequential_writes_equal_the_batch_least_squares_memory(mode: str, data: st.DataObject, seed: int) -> None:
    K, C = data.draw(mem_shapes(mode))
    N = data.draw(st.integers(1, 40))  # N may exceed C and K: still exact least squares, thanks to the ridge
    g = _gen(seed)
    mem = _memory(K, C, mode, seed=seed)
    Z = _latents(g, N, C)
    M_star, C_inv_star = _closed_form(mem, Z)

    rebuilt = mem.rebuild(Z)
    _assert_close(rebuilt.M, M_star, 1e-9)
    _assert_close(rebuilt.C_inv, C_inv_star, 1e-9)
    assert rebuilt.updates == 0

    one_at_a_time = mem.empty()
    for i in range(N):
        one_at_a_time = mem.write(one_at_a_time, Z[i:i + 1])
    batches = mem.empty()
    cuts = _cuts(data, N)
    for a, b in cuts:
        batches = mem.write(batches, Z[a:b])

    assert one_at_a_time.updates == N and batches.updates == len(cuts)
    for state in (one_at_a_time, batches):
        _assert_close(state.M, M_star, 1e-9)
        _assert_close(state.M, rebuilt.M, 1e-9)
        _assert_close(state.C_inv, C_inv_star, 1e-9)
        assert state.M.dtype == F64 and state.C_inv.dtype == F64


# --- 3. write then forget is the identity ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@FAST
@given(data=st.data(), seed=seeds)
def test_write_then_forget_gives_back_the_previous_memory(mode: str, data: st.DataObject, seed: int) -> None:
    K, C = data.draw(mem_shapes(mode))
    n_old = data.draw(st.integers(0, 20))
    n_new = data.draw(st.integers(1, 5))
    g = _gen(seed)
    mem = _memory(K, C, mode, seed=seed)
    old, new = _latents(g, n_old, C), _latents(g, n_new, C)

    before = mem.empty()
    for i in range(n_old):
        before = mem.write(before, old[i:i + 1])
    M_before, C_inv_before = before.M.clone(), before.C_inv.clone()

    after_write = mem.write(before, new)
    assert not torch.allclose(after_write.M, M_before)  # the write did something
    # Forget the same facts: as the same batch, or one at a time in another order.
    if data.draw(st.booleans()):
        after_forget = mem.forget(after_write, new)
    else:
        after_forget = after_write
        for i in data.draw(st.permutations(range(n_new))):
            after_forget = mem.forget(after_forget, new[i:i + 1])

    # Forgetting divides by 1 - leverage ~ ridge / ||w||^2: a downdate loses ~3 of float64's digits here.
    scale = max(after_write.M.norm().item(), 1.0)
    _assert_close(after_forget.M, M_before, 1e-7, scale=scale)
    _assert_close(after_forget.C_inv, C_inv_before, 1e-7)
    # The old state was not touched by the default (copying) updates.
    assert torch.equal(before.M, M_before) and torch.equal(before.C_inv, C_inv_before)


# --- 4. forgetting one fact leaves the others' readouts alone ----------------------------------------------------


@FAST
@given(data=st.data(), seed=seeds)
def test_forgetting_one_fact_leaves_the_other_readouts_unchanged(data: st.DataObject, seed: int) -> None:
    """Linear keys, N <= C // 2 facts, small ridge lam.

    Why it holds, and how well: with G = W W^T (N x N), the readout of the written facts is
    W M = G (lam I + G)^-1 Z = Z - lam (lam I + G)^-1 Z. So every written fact reads back as itself up to a ridge
    bias of norm <= lam / (lam + mu) ||Z||, mu = lambda_min(G). After forgetting fact f the others are read through
    G' = G without row/column f, whose smallest eigenvalue is >= mu (Cauchy interlacing), so the others' readouts
    move by at most 2 lam / (lam + mu) ||Z||_F: that bound (plus round-off) is the honest tolerance. It is small
    because N <= C // 2 random latents keep G well conditioned. Exactly unchanged they are not: the ridge couples
    the facts.

    Round-off: forgetting divides by 1 - leverage ~ lam / ||w||^2, so the smaller the ridge the more digits the
    downdate loses (measured: at lam = 1e-6 with K = C the forgotten fact's readout can be off by O(1); at
    lam = 1e-5, K >= C + 8, by < 1e-4). Hence lam = 1e-5, K >= C + 8, a round-off allowance of 5e-4, and draws
    with mu = lambda_min(G) < 1e-2 (about 1 in 100) are skipped.

    The forgotten fact must lose its readout: after the forget M's rows lie in span(Z_others), so its readout does
    too, and its cosine to z_f is at most ||P z_f|| / ||z_f|| (P the projection onto that span) instead of ~1.
    """
    C = data.draw(st.integers(8, 32))
    K = data.draw(st.integers(C + 8, 64))
    N = data.draw(st.integers(2, C // 2))
    f = data.draw(st.integers(0, N - 1))
    lam = 1e-5
    g = _gen(seed)
    mem = _memory(K, C, "linear", ridge=lam, seed=seed)
    Z = _latents(g, N, C)
    others = [i for i in range(N) if i != f]
    Z_o, z_f = Z[others], Z[f:f + 1]

    state = mem.empty()
    for i in data.draw(st.permutations(range(N))):
        state = mem.write(state, Z[i:i + 1])
    forgotten = mem.forget(state, z_f)

    W = mem.address(Z).double()
    mu = torch.linalg.eigvalsh(W @ W.T)[0].item()
    assume(mu >= 1e-2)  # rare nearly dependent draws: round-off then outgrows the allowance below
    bias = lam / (lam + mu)
    fp = 5e-4  # round-off allowance (see docstring)

    before_o, after_o = mem.read(state, Z_o), mem.read(forgotten, Z_o)
    assert (after_o - before_o).norm().item() <= 2 * bias * Z.norm().item() + fp
    assert (after_o - Z_o).norm().item() <= bias * Z_o.norm().item() + fp  # the others still read back as themselves

    # The forgotten fact: reconstructed before, not after.
    before_f, after_f = mem.read(state, z_f), mem.read(forgotten, z_f)
    P = torch.linalg.pinv(Z_o) @ Z_o  # (C, C) projection onto span(Z_others)
    dist_span = (z_f - z_f @ P).norm().item()  # > 0: N <= C // 2 random latents are independent
    dist_before, dist_after = (before_f - z_f).norm().item(), (after_f - z_f).norm().item()
    assert dist_before <= bias * Z.norm().item() + fp
    outside = (after_f - after_f @ P).norm().item()
    assert outside <= fp  # the readout now lies in span(Z_others) (up to the round-off left of z_f) ...
    assert dist_after >= dist_span - fp  # ... so it is at least as far from z_f as that span is
    assert dist_after >= dist_before + 0.5 * dist_span  # it moved away: a no-op forget fails here
    # Cosines: cos(r, z_f) <= ||P z_f|| / ||z_f|| + ||(I - P) r|| / ||r|| for any r (Cauchy-Schwarz on both parts).
    cos_before = torch.nn.functional.cosine_similarity(before_f, z_f).item()
    cos_after = torch.nn.functional.cosine_similarity(after_f, z_f).item()
    cos_span = ((z_f @ P).norm() / z_f.norm()).item()
    leak = outside / after_f.norm().item()
    assert cos_before >= 1 - 2 * dist_before  # ~1 before
    assert cos_after <= cos_span + leak + 1e-9
    if leak < 0.1:  # a readout not dominated by round-off: its cosine dropped by at least half the gap
        assert cos_after <= cos_before - 0.5 * (1 - cos_span)


# --- 5. Woodbury state == direct solve after any history ---------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@FAST
@given(data=st.data(), seed=seeds)
def test_woodbury_state_equals_a_direct_solve_after_writes_and_forgets(
        mode: str, data: st.DataObject, seed: int) -> None:
    K, C = data.draw(mem_shapes(mode))
    pool = data.draw(st.integers(2, 16))
    g = _gen(seed)
    mem = _memory(K, C, mode, seed=seed)
    Z = _latents(g, pool, C)

    state = mem.empty()
    written: list[int] = []  # multiset of pool indices: a fact written twice counts twice
    peak = 1.0
    for _ in range(data.draw(st.integers(1, 12))):
        if written and data.draw(st.booleans()):
            # One fact per forget, as the service does: forgetting batches of >= 2 facts is not numerically stable
            # under linear keys (see test_batch_write_forget_cycles_do_not_accumulate_round_off).
            i = written.pop(data.draw(st.integers(0, len(written) - 1)))
            state = mem.forget(state, Z[i:i + 1])
        else:
            idx = data.draw(st.lists(st.integers(0, pool - 1), min_size=1, max_size=3))
            state = mem.write(state, Z[idx])
            written += idx
        peak = max(peak, state.M.norm().item())

    M_star, C_inv_star = _closed_form(mem, Z[written])
    _assert_close(state.C_inv, C_inv_star, 1e-7)
    _assert_close(state.M, M_star, 1e-6, scale=peak)
    rebuilt = mem.rebuild(Z[written])
    _assert_close(state.M, rebuilt.M, 1e-6, scale=peak)


@pytest.mark.parametrize("mode", MODES)
def test_batch_write_forget_cycles_do_not_accumulate_round_off(mode: str) -> None:
    """Write a batch, forget the same batch, repeat: the state must stay the empty one (M = 0, C^-1 = I / ridge)."""
    mem = _memory(16, 4, mode)
    g = _gen(0)
    empty = mem.empty()
    state = empty
    for _ in range(8):
        Z = _latents(g, 2, 4)
        state = mem.forget(mem.write(state, Z), Z)
    _assert_close(state.C_inv, empty.C_inv, 1e-8)
    assert state.M.abs().max().item() < 1e-8


# --- 6. inplace ---------------------------------------------------------------------------------------------------


def _run_history(mem: EpisodicMemory, state: MemoryState, Z: torch.Tensor, ops: list[tuple[float, int]],
                 inplace: bool) -> list[MemoryState]:
    states = [state]
    for alpha, i in ops:
        states.append(mem.update(states[-1], Z[i:i + 1], alpha, inplace=inplace))
    return states


@pytest.mark.parametrize("start", ["written", "rebuilt"])
@pytest.mark.parametrize("mode", MODES)
@FAST
@given(data=st.data(), seed=seeds)
def test_inplace_update_gives_the_same_state_as_a_copying_one(
        mode: str, start: str, data: st.DataObject, seed: int) -> None:
    K, C = data.draw(mem_shapes(mode))
    n = data.draw(st.integers(2, 12))
    g = _gen(seed)
    mem = _memory(K, C, mode, seed=seed)
    Z = _latents(g, n, C)
    n_base = data.draw(st.integers(1, n - 1))
    if start == "written":
        base = mem.empty()
        for i in range(n_base):
            base = mem.write(base, Z[i:i + 1])
    else:
        base = mem.rebuild(Z[:n_base])
    # A history that forgets only facts currently written.
    written, ops = list(range(n_base)), []
    for _ in range(data.draw(st.integers(1, 6))):
        if written and data.draw(st.booleans()):
            i = written.pop(data.draw(st.integers(0, len(written) - 1)))
            ops.append((-1.0, i))
        else:
            i = data.draw(st.integers(0, n - 1))
            written.append(i)
            ops.append((1.0, i))

    copies = _run_history(mem, MemoryState(M=base.M.clone(), C_inv=base.C_inv.clone()), Z, ops, inplace=False)
    own = MemoryState(M=base.M.clone(), C_inv=base.C_inv.clone())
    snapshots = []
    state = own
    for alpha, i in ops:
        M_old = state.M.clone()
        new = mem.update(state, Z[i:i + 1], alpha, inplace=True)
        # inplace: C^-1 is updated in its own storage, M is still a new tensor (a reader of the old M sees no change)
        assert new.C_inv.data_ptr() == state.C_inv.data_ptr()
        assert new.M.data_ptr() != state.M.data_ptr() and torch.equal(state.M, M_old)
        snapshots.append(new.M.clone())
        state = new
    assert state.updates == copies[-1].updates == len(ops)

    if start == "written":
        # The service's path (C^-1 row-major throughout): bitwise the same.
        assert all(torch.equal(m, c.M) for m, c in zip(snapshots, copies[1:], strict=True))
        assert torch.equal(state.C_inv, copies[-1].C_inv)
    else:
        # rebuild() hands back a column-major C^-1 (cholesky_inverse); updating it in place keeps that layout while a
        # copying update returns a row-major one, so the products round differently: equal to round-off, not bitwise.
        for m, c in zip(snapshots, copies[1:], strict=True):
            _assert_close(m, c.M, 1e-7, scale=1.0)
        _assert_close(state.C_inv, copies[-1].C_inv, 1e-7)
    # Copying updates leave every earlier state whole.
    replay = _run_history(mem, MemoryState(M=base.M.clone(), C_inv=base.C_inv.clone()), Z, ops, inplace=False)
    for c, r in zip(copies, replay, strict=True):
        assert torch.equal(c.M, r.M) and torch.equal(c.C_inv, r.C_inv)


# --- 7. persistence and seeding ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("mode", MODES)
@FAST
@given(data=st.data(), seed=seeds)
def test_state_round_trips_bit_for_bit_through_safetensors(
        mode: str, dtype: torch.dtype, data: st.DataObject, seed: int) -> None:
    K, C = data.draw(mem_shapes(mode))
    g = _gen(seed)
    cfg = MemoryConfig(slots=K, dim=C, addressing=mode, seed=seed % 1000)
    mem = EpisodicMemory(cfg, dtype=dtype)
    Z = _latents(g, data.draw(st.integers(1, 10)), C).to(dtype)
    more = _latents(g, data.draw(st.integers(1, 6)), C).to(dtype)

    state = mem.empty()
    for i in range(Z.shape[0]):
        state = mem.write(state, Z[i:i + 1])

    tensors = mem.to_tensors(state)
    loaded = st_load(st_save(tensors))
    assert set(loaded) == set(tensors)
    for name, t in tensors.items():
        assert loaded[name].dtype == t.dtype and torch.equal(loaded[name], t), name

    # A config with another seed must not change the keys: M_ref comes from the file.
    other_cfg = MemoryConfig(slots=K, dim=C, addressing=mode, seed=cfg.seed + 1)
    mem2, state2 = EpisodicMemory.from_tensors(other_cfg, loaded, dtype=dtype)
    assert torch.equal(mem2.M_ref, mem.M_ref) and torch.equal(mem2._M_ref_pinv64, mem._M_ref_pinv64)
    assert torch.equal(state2.M, state.M) and torch.equal(state2.C_inv, state.C_inv)
    assert state2.M.dtype == dtype and state2.C_inv.dtype == F64 and state2.updates == state.updates

    # Continuing after the round trip is bitwise the same as continuing without it.
    s1, s2 = state, state2
    for i in range(more.shape[0]):
        s1, s2 = mem.write(s1, more[i:i + 1]), mem2.write(s2, more[i:i + 1])
    s1, s2 = mem.forget(s1, Z[:1]), mem2.forget(s2, Z[:1])
    assert torch.equal(s1.M, s2.M) and torch.equal(s1.C_inv, s2.C_inv) and s1.updates == s2.updates
    assert torch.equal(mem.read(s1, more), mem2.read(s2, more))


@pytest.mark.parametrize("mode", MODES)
def test_a_rebuilt_state_can_be_saved_with_safetensors(mode: str) -> None:
    mem = _memory(16, 8, mode, dtype=torch.float32)
    Z = _latents(_gen(0), 5, 8).float()
    state = mem.rebuild(Z)
    loaded = st_load(st_save(mem.to_tensors(state)))
    assert torch.equal(loaded["M"], state.M) and torch.equal(loaded["C_inv"], state.C_inv)


@FAST
@given(K=st.integers(8, 64), C=st.integers(4, 32), seed=seeds, mode=st.sampled_from(MODES))
def test_reference_memory_is_reproducible_from_the_seed(K: int, C: int, seed: int, mode: str) -> None:
    cfg = MemoryConfig(slots=K, dim=C, addressing=mode, seed=seed)
    a, b = EpisodicMemory(cfg), EpisodicMemory(cfg)
    assert a.M_ref.shape == (K, C)
    assert torch.equal(a.M_ref, b.M_ref) and torch.equal(a._M_ref_pinv64, b._M_ref_pinv64)
    assert torch.equal(a.M_ref, reference_memory(cfg))
    # Drawn once in float64: the float32 keys are the float64 ones rounded.
    assert torch.equal(EpisodicMemory(cfg, dtype=F64).M_ref.float(), a.M_ref)
    other = EpisodicMemory(MemoryConfig(slots=K, dim=C, addressing=mode, seed=seed + 1))
    assert not torch.equal(a.M_ref, other.M_ref)
    # rows ~ N(0, I / C): mean squared entry ~ 1 / C (loose check, K * C >= 32 entries)
    assert 0.2 / C < a.M_ref.double().square().mean().item() < 5.0 / C


# --- 8. nearest and Gaussian addressing --------------------------------------------------------------------------


@FAST
@given(data=st.data(), seed=seeds)
def test_nearest_finds_exact_copies(data: st.DataObject, seed: int) -> None:
    C = data.draw(st.integers(4, 32))
    N = data.draw(st.integers(1, 40))
    idx = data.draw(st.lists(st.integers(0, N - 1), min_size=1, max_size=10))
    k = data.draw(st.integers(1, N + 3))
    g = _gen(seed)
    latents = _randn(g, N, C)
    scales = torch.rand((len(idx), 1), generator=g, dtype=F64) * 10 + 0.1  # cosine ignores positive scale
    readout = (latents[idx] * scales).float()

    sims, top = nearest(readout, latents, k=k)
    assert sims.shape == top.shape == (len(idx), min(k, N))
    assert top[:, 0].tolist() == idx
    torch.testing.assert_close(sims[:, 0], torch.ones(len(idx)), rtol=0, atol=1e-5)
    assert (sims[:, :-1] >= sims[:, 1:]).all()  # sorted, best first
    assert (sims <= 1 + 1e-5).all() and (sims >= -1 - 1e-5).all()


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@FAST
@given(data=st.data(), seed=seeds)
def test_gaussian_addressing_rows_are_distributions_peaked_at_the_nearest_slot(
        dtype: torch.dtype, data: st.DataObject, seed: int) -> None:
    K, C = data.draw(mem_shapes("gaussian"))
    N = data.draw(st.integers(1, 20))
    g = _gen(seed)
    mem = _memory(K, C, "gaussian", seed=seed, dtype=dtype)
    Z = _latents(g, N, C).to(dtype)

    W = mem.address(Z)
    assert W.shape == (N, K) and W.dtype == torch.float64  # keys are float64 whatever the memory dtype
    assert (W >= 0).all()
    atol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(W.sum(dim=1), torch.ones(N, dtype=W.dtype), rtol=0, atol=atol)
    # exp(-d^2 / (2 a s^2)) decreases with the distance: the heaviest slot is the nearest one.
    d2 = torch.cdist(Z.double(), mem.M_ref.double()).square()
    assert torch.equal(W.argmax(dim=1), d2.argmin(dim=1))
    # A latent sitting on a slot of M_ref addresses that slot alone.
    k = data.draw(st.integers(0, K - 1))
    w = mem.address(mem.M_ref[k:k + 1])
    assert w.argmax().item() == k and w[0, k].item() > 1 - 1e-6


# --- 9. input errors ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, 0.5, 2.0, -2.0, -0.5, math.inf, math.nan])
def test_alpha_other_than_plus_or_minus_one_is_refused(alpha: float) -> None:
    mem = _memory(16, 8, "linear")
    state = mem.write(mem.empty(), _latents(_gen(0), 2, 8))
    with pytest.raises((AssertionError, ValueError)):
        mem.update(state, _latents(_gen(1), 1, 8), alpha)


@pytest.mark.parametrize("alpha", [1, -1, 1.0, -1.0])
def test_alpha_plus_or_minus_one_is_accepted(alpha: float) -> None:
    mem = _memory(16, 8, "linear")
    Z = _latents(_gen(0), 2, 8)
    state = mem.write(mem.empty(), Z)
    out = mem.update(state, Z[:1], alpha)
    M_star, _ = _closed_form(mem, Z[1:] if alpha < 0 else Z[[0, 0, 1]])  # forgot fact 0, or wrote it twice
    _assert_close(out.M, M_star, 1e-9)
