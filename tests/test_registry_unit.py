"""The registry's read API (``service.memories.MemoryRegistry``) over a SQLite store and a stub encoder, fast.

What callers see of a memory (holds, facts, page, info, Reading) must agree after any writes and forgets, a
Reading must be one version of the memory, the approximate index must answer as an exact scan does and step
aside when compaction renumbers rows, and a restart must give back the very same state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor

import service.memories as memories
from memory_core import MemoryConfig
from service.errors import DuplicateFact, NoMemory
from service.memories import MemoryInfo, MemoryRegistry, Reading
from service.store import Fact, StoreError, open_store
from service.timing import utc_now
from tests.stubs import StubEncoder

DIM = 64
CFG = MemoryConfig(dim=DIM, slots=128)
Open = Callable[..., MemoryRegistry]


@pytest.fixture
def encoder() -> StubEncoder:
    return StubEncoder(DIM)


@pytest.fixture
def open_registry(tmp_path: Path) -> Iterator[Open]:
    """Open a registry on this test's store (as often as the test likes: each is restored, and closed at its end)."""
    opened: list[MemoryRegistry] = []

    def make(snapshot_every: int = 100) -> MemoryRegistry:
        reg = MemoryRegistry(open_store(f"file://{tmp_path / 'store'}"), CFG, "cpu", snapshot_every=snapshot_every)
        reg.restore()
        opened.append(reg)
        return reg

    yield make
    for reg in opened:
        reg.close()


@pytest.fixture
def registry(open_registry: Open) -> MemoryRegistry:
    return open_registry()


def texts_for(start: int, n: int) -> list[str]:
    """Texts of no shared words: their stub latents are random unit vectors, well apart."""
    return [f"fact{i} alpha{i} beta{i} gamma{i}" for i in range(start, start + n)]


def write(registry: MemoryRegistry, encoder: StubEncoder, name: str, texts: list[str],
          ids: list[str] | None = None, create: bool = True) -> list[Fact]:
    kept = None if ids is None else [(i, utc_now()) for i in ids]
    return registry.write(name, [(t, {"n": k}) for k, t in enumerate(texts)], encoder.encode(texts), kept=kept,
                          create=create)


def reading(registry: MemoryRegistry, name: str) -> Reading:
    r = registry.reading(name)
    assert r is not None
    return r


def top_ids(r: Reading, Z: Tensor, k: int = 1) -> list[list[str]]:
    return [[h.id for h in row] for row in r.nearest(Z, k)]


# --- holds, facts, page, info, infos --------------------------------------------------------------


def test_read_api_agrees_after_writes_and_forgets(registry: MemoryRegistry, encoder: StubEncoder) -> None:
    """Every way of asking what a memory holds gives the same answer, forgotten facts gone from all of them."""
    a = write(registry, encoder, "a", texts_for(0, 3))
    a += write(registry, encoder, "a", texts_for(3, 2))
    b = write(registry, encoder, "b", texts_for(10, 2))
    assert registry.forget("a", a[1].id, a[3].id)
    ids = [f.id for f in a]
    alive = [True, False, True, False, True]
    assert registry.holds("a", ids) == alive
    assert [f is not None for f in registry.facts("a", ids)] == alive
    assert [f.text for f in registry.facts("a", ids) if f is not None] == [a[i].text for i in (0, 2, 4)]
    assert registry.facts("a", [a[0].id])[0].metadata == {"n": 0}
    assert [f.id for f in registry.page("a", 10, 0)] == [ids[0], ids[2], ids[4]], "in the order written"
    assert [f.id for f in registry.page("a", 1, 1)] == [ids[2]]
    assert registry.page("a", 10, 3) == []
    info = registry.info("a")
    assert info is not None and (info.name, info.facts, info.slots, info.dim) == ("a", 3, 128, DIM)
    assert info.lookup == "exact" and info.erasure == "pending", "a forget not yet purged"
    assert reading(registry, "a").live == 3
    assert [(i.name, i.facts) for i in registry.infos()] == [("a", 3), ("b", 2)]
    assert registry.holds("b", [f.id for f in b] + [ids[0]]) == [True, True, False], "ids are per memory"
    assert registry.info("missing") is None and registry.reading("missing") is None
    assert registry.holds("missing", ["x"]) == [False]
    registry.purge()
    assert registry.info("a").erasure == "complete"


def test_forget_is_all_or_nothing(registry: MemoryRegistry, encoder: StubEncoder) -> None:
    """A forget naming one id the memory does not hold changes nothing: not the facts, not the state."""
    facts = write(registry, encoder, "a", texts_for(0, 3))
    ids = [f.id for f in facts]
    q = encoder.encode(texts_for(0, 3))
    before = reading(registry, "a").readout(q)
    assert registry.forget("a", ids[0], "no-such-id") is False
    assert registry.forget("a") is False and registry.forget("missing", ids[0]) is False
    assert registry.holds("a", ids) == [True] * 3 and len(registry.page("a", 10, 0)) == 3
    assert registry.info("a").facts == 3 and registry.info("a").erasure == "complete"
    assert torch.equal(reading(registry, "a").readout(q), before)
    assert registry.forget("a", ids[0], ids[0]) is True, "a repeated id is forgotten once"
    assert registry.holds("a", ids) == [False, True, True]


def test_duplicate_and_missing_memory_writes_are_refused(registry: MemoryRegistry, encoder: StubEncoder) -> None:
    """A kept id the memory holds raises DuplicateFact and stores nothing; a write that may not create its memory
    raises NoMemory and creates none."""
    write(registry, encoder, "a", texts_for(0, 2), ids=["x", "y"])
    with pytest.raises(DuplicateFact, match="'y'"):
        write(registry, encoder, "a", texts_for(2, 2), ids=["z", "y"])
    assert registry.holds("a", ["x", "y", "z"]) == [True, True, False] and registry.info("a").facts == 2
    assert [f.id for f in registry.page("a", 10, 0)] == ["x", "y"]
    with pytest.raises(NoMemory):
        write(registry, encoder, "new", texts_for(0, 1), create=False)
    assert registry.info("new") is None and [i.name for i in registry.infos()] == ["a"]
    write(registry, encoder, "a", texts_for(5, 1), ids=["w"], create=False)  # an existing memory takes it
    assert registry.holds("a", ["w"]) == [True]
    # one batch naming an id twice is refused too (by the store), and leaves the memory as it was
    with pytest.raises((DuplicateFact, StoreError)):
        write(registry, encoder, "a", texts_for(6, 2), ids=["v", "v"])
    assert registry.holds("a", ["v"]) == [False] and registry.info("a").facts == 3 == len(registry.page("a", 9, 0))


def test_snapshot(registry: MemoryRegistry, encoder: StubEncoder) -> None:
    """A snapshot folds the log into a checkpoint and reports the memory; a missing one gives None."""
    write(registry, encoder, "a", texts_for(0, 2))
    write(registry, encoder, "a", texts_for(2, 2))
    before = registry.info("a")
    assert before is not None and before.log_entries == 2 and before.last_snapshot is None
    info = registry.snapshot("a")
    assert isinstance(info, MemoryInfo) and info.facts == 4 and info.log_entries == 0
    assert info.last_snapshot is not None and registry.info("a") == info
    assert registry.snapshot("missing") is None


# --- a Reading is one version -------------------------------------------------------------------


def test_a_reading_does_not_see_later_writes(registry: MemoryRegistry, encoder: StubEncoder) -> None:
    """A request reads one version: what it read before a write it reads again, whatever landed meanwhile."""
    old = write(registry, encoder, "a", texts_for(0, 4))
    Z_old = encoder.encode(texts_for(0, 4))
    Z_new = encoder.encode(texts_for(4, 2))
    before = reading(registry, "a")
    readout = before.readout(Z_new)
    near = top_ids(before, Z_new, 4)
    new = write(registry, encoder, "a", texts_for(4, 2))
    assert before.live == 4 and top_ids(before, Z_new, 4) == near
    assert not {f.id for f in new} & {i for row in near for i in row}
    assert torch.equal(before.readout(Z_new), readout)
    after = reading(registry, "a")
    assert after.live == 6 and top_ids(after, Z_new) == [[f.id] for f in new]
    assert not torch.equal(after.readout(Z_new), readout)
    assert top_ids(after, Z_old) == [[f.id] for f in old]
    # and a forget: the old reading still finds the row, its text is gone, so nearest_facts leaves it out
    assert registry.forget("a", old[0].id)
    assert top_ids(after, Z_old[:1]) == [[old[0].id]] and after.live == 6
    assert old[0].id not in {f.id for f, _ in after.nearest_facts(Z_old[:1], 3)[0]}
    assert top_ids(reading(registry, "a"), Z_old[:1], 5)[0].count(old[0].id) == 0


def test_readings_latents_are_the_float16_rounded_writes(registry: MemoryRegistry, encoder: StubEncoder) -> None:
    """The registry keeps latents as float16: a Reading gives back exactly those values, and a query equal to a
    written latent finds it at cosine 1."""
    texts = texts_for(0, 3)
    write(registry, encoder, "a", texts)
    Z = encoder.encode(texts)
    r = reading(registry, "a")
    hits = [row[0] for row in r.nearest(Z, 1)]
    assert torch.equal(r.latents(hits), Z.half().float())
    assert all(h.similarity == pytest.approx(1.0, abs=1e-3) for h in hits)


# --- the approximate index ------------------------------------------------------------------------


def exact_top(Z_written: Tensor, ids: list[str], live: set[str], Q: Tensor) -> list[str]:
    """The nearest live fact of each query by a plain scan of the float16-rounded latents."""
    sims = Q @ Z_written.half().float().T  # (Q, N)
    sims[:, [i not in live for i in ids]] = float("-inf")
    return [ids[j] for j in sims.argmax(1).tolist()]


def test_index_answers_as_an_exact_scan_and_steps_aside_on_compaction(
        open_registry: Open, encoder: StubEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    """index_now binds an index to the memory's buffers; compaction renumbers the rows, so lookups scan exactly
    until the index is rebuilt, and no lookup ever returns a forgotten fact (nor after a restart)."""
    monkeypatch.setattr(memories, "MIN_CAPACITY", 16)  # compaction past max(16, n/4) dead rows, not 1024
    registry = open_registry()
    n = 200
    texts = texts_for(0, n)
    ids = [f.id for f in write(registry, encoder, "a", texts)]
    Z = encoder.encode(texts)  # (n, C)
    assert registry.info("a").lookup == "exact"
    assert registry.index_now("a") and not registry.index_now("missing")
    assert registry.info("a").lookup == "index"
    live = set(ids)
    assert top_ids(reading(registry, "a"), Z) == [[i] for i in ids] == [[i] for i in exact_top(Z, ids, live, Z)]
    # a write after the index was built: its rows are scanned beside the index's candidates
    extra = write(registry, encoder, "a", texts_for(n, 1))[0]
    ids.append(extra.id)
    live.add(extra.id)
    Z = torch.cat([Z, encoder.encode(texts_for(n, 1))])
    assert registry.info("a").lookup == "index" and top_ids(reading(registry, "a"), Z[-1:]) == [[extra.id]]
    # a few forgets: the index drops their codes and stays bound
    gone = ids[:10]
    assert registry.forget("a", *gone)
    live -= set(gone)
    assert registry.info("a").lookup == "index"
    r = reading(registry, "a")
    assert [row[0] for row in top_ids(r, Z)] == exact_top(Z, ids, live, Z)
    assert not set(gone) & {i for row in top_ids(r, Z[:10], 5) for i in row}
    # enough forgets to compact (dead rows > max(MIN_CAPACITY, n / 4)): rows are renumbered, the index unbound
    more = ids[10:60]
    assert registry.forget("a", *more)
    live -= set(more)
    assert registry.info("a").lookup == "exact" and registry.info("a").facts == len(live) == n + 1 - 60
    r = reading(registry, "a")
    assert [row[0] for row in top_ids(r, Z)] == exact_top(Z, ids, live, Z)
    assert not (set(gone) | set(more)) & {i for row in top_ids(r, Z[:60], 5) for i in row}
    assert registry.holds("a", ids) == [i in live for i in ids]
    # rebuilt on the new rows: bound again, same answers, and a forget after compaction still works
    assert registry.index_now("a") and registry.info("a").lookup == "index"
    assert [row[0] for row in top_ids(reading(registry, "a"), Z)] == exact_top(Z, ids, live, Z)
    assert registry.forget("a", ids[100])
    live.discard(ids[100])
    r = reading(registry, "a")
    assert top_ids(r, Z[100:101], 3)[0].count(ids[100]) == 0
    assert [row[0] for row in top_ids(r, Z)] == exact_top(Z, ids, live, Z)
    readout = r.readout(Z[:20])
    registry.close()  # the index is not stored: a restart scans exactly, over the same live facts and state
    again = open_registry()
    assert again.info("a").lookup == "exact" and again.holds("a", ids) == [i in live for i in ids]
    assert [row[0] for row in top_ids(reading(again, "a"), Z)] == exact_top(Z, ids, live, Z)
    assert torch.equal(reading(again, "a").readout(Z[:20]), readout)


# --- restore ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("snapshot_every", [100, 2])
def test_restore_gives_back_the_same_state(open_registry: Open, encoder: StubEncoder, snapshot_every: int) -> None:
    """Closed and reopened on the same store (checkpoint plus log replay, or mostly checkpoints), every memory
    reads exactly as before: the same facts and bit-for-bit the same readouts."""
    first = open_registry(snapshot_every)
    a = write(first, encoder, "a", texts_for(0, 4))
    a += write(first, encoder, "a", texts_for(4, 3))
    assert first.forget("a", a[2].id)
    a += write(first, encoder, "a", texts_for(7, 2))
    write(first, encoder, "b", texts_for(20, 2))
    Q = encoder.encode(["fact1 alpha3 beta5", "gamma8 fact0", "something else entirely"])
    ids = [f.id for f in a]
    held = first.holds("a", ids)
    readouts = {name: reading(first, name).readout(Q) for name in ("a", "b")}
    near = top_ids(reading(first, "a"), Q, 3)
    infos = [(i.name, i.facts) for i in first.infos()]
    first.close()
    second = open_registry(snapshot_every)
    assert second.holds("a", ids) == held and held.count(False) == 1
    for name, z in readouts.items():
        assert torch.equal(reading(second, name).readout(Q), z)
    assert top_ids(reading(second, "a"), Q, 3) == near
    assert [(i.name, i.facts) for i in second.infos()] == infos
    assert all(i.log_entries == 0 for i in second.infos()), "the restored log is folded into a checkpoint"
