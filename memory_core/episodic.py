"""Larimar's episodic memory, read top to bottom.

Notation follows ../shared/docs/larimar.md: Z is (N, C) latents, one per fact;
W is (N, K) addressing weights; M is the (K, C) memory; ``^+`` is the
Moore-Penrose pseudo-inverse.

Two ways to use the memory live here:

1. Algorithm 1 (one-shot episodes): ``write_episode``, ``read``, ``generate``.
   Stateless functions: the whole episode is written at once.
2. Sequential write/forget (eqs. 2-6): ``EpisodicMemory`` keeps the keys'
   reference memory and turns a ``MemoryState`` (M and C^-1) into the next
   one, a fact or batch at a time, with alpha = +1 (write) or -1 (forget).
   States are immutable: an update returns a new state, so a reader holding
   the old one never sees half an update.

Everything is plain torch on whatever device the tensors live on; nothing here
knows about HTTP, files or models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Addressing = Literal["linear", "gaussian"]


# ---------------------------------------------------------------------------
# Algorithm 1: one-shot episodes
# ---------------------------------------------------------------------------


def pinv(A: Tensor) -> Tensor:
    """Moore-Penrose pseudo-inverse.

    The reference code iterates Ben-Israel-Cohen; an SVD-based pinv is exact
    and fast enough at K x C sizes, so we use it.
    """
    return torch.linalg.pinv(A)


def write_episode(
    Z: Tensor, M0: Tensor, noise_std: float = 0.0, generator: torch.Generator | None = None
) -> Tensor:
    """One-shot write of an episode into prior memory M0 (noise 0 at inference)."""
    # Z: (N, C), M0: (K, C)
    Z_xi = Z
    if noise_std > 0:
        Z_xi = Z + noise_std * torch.randn(Z.shape, generator=generator, device=Z.device, dtype=Z.dtype)
    W0 = Z_xi @ pinv(M0)  # (N, K)
    return pinv(W0) @ Z_xi  # (K, C)


def read(Zq: Tensor, M: Tensor) -> tuple[Tensor, Tensor]:
    """Read with query latents: W = Zq M^+, Z_r = W M. Returns (Z_r, W)."""
    # Zq: (Q, C), M: (K, C)
    W = Zq @ pinv(M)  # (Q, K)
    return W @ M, W  # (Q, C), (Q, K)


def generate(M: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
    """Sample latents from the memory: W ~ N(0, I), Z = W M."""
    W = torch.randn((n, M.shape[0]), generator=generator, device=M.device, dtype=M.dtype)  # (n, K)
    return W @ M  # (n, C)


# ---------------------------------------------------------------------------
# Section 6: long inputs, read through a hierarchy of memories
# ---------------------------------------------------------------------------


def hierarchical_read(Zq: Tensor, Z: Tensor, segment: int) -> Tensor:
    """Split the pieces Z into segments, write each into its own memory, read every memory with the query,
    write those readouts into the next level's memories, and so on until one memory remains: its readout.

    With noise 0 a one-shot memory of n <= C latents, read with a query, returns the query's orthogonal
    projection onto the span of those latents: W M = Zq M^+ M, and M^+ M projects onto the row space of
    M = W0^+ Z, which is Z's (W0^+ has full column rank). So each memory is its segment's orthonormal basis
    Q (a QR of the segment, as ``write_episode`` + ``read`` would give to round-off, at a fraction of the
    cost: no K x C pseudo-inverse per segment), and a read is Q Q^T zq.
    """
    # Zq: (q, C) queries, Z: (N, C) pieces in order; segment <= C
    if not 1 <= segment <= Z.shape[1]:
        raise ValueError(f"segment must be within [1, C={Z.shape[1]}], not {segment}")
    Zq = Zq.to(torch.float64)  # (q, C)
    level = Z.to(torch.float64)[None].expand(Zq.shape[0], -1, -1)  # (q, N, C) each query reads its own copy
    while True:
        readouts = []
        for start in range(0, level.shape[1], segment):
            Q, _ = torch.linalg.qr(level[:, start : start + segment].transpose(1, 2))  # (q, C, n) basis
            readouts.append((Q @ (Q.transpose(1, 2) @ Zq[:, :, None]))[:, :, 0])  # (q, C) projection
        level = torch.stack(readouts, dim=1)  # (q, segments, C)
        if level.shape[1] == 1:
            return level[:, 0].to(Z.dtype if Z.is_floating_point() else torch.float32)  # (q, C)


# ---------------------------------------------------------------------------
# Sequential write and forget (eqs. 2-6)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryConfig:
    """Shape and addressing of a sequential memory.

    ``ridge`` is C_0 = ridge * I: it makes C invertible before K facts are
    written and keeps forgetting well conditioned. ``gaussian_a`` is the
    appendix-E temperature.
    """

    slots: int = 512  # K
    dim: int = 384  # C
    addressing: Addressing = "linear"
    ridge: float = 1e-3
    gaussian_a: float = 1e-3
    seed: int = 0


@dataclass(frozen=True)
class MemoryState:
    """One immutable version of the memory: what a reader sees atomically."""

    M: Tensor  # (K, C) memory
    C_inv: Tensor  # (K, K) float64 inverse of C_i = ridge I + sum alpha W^T W
    updates: int = 0  # number of rank-N updates since the last exact rebuild


def reference_memory(
    cfg: MemoryConfig, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> Tensor:
    """Fixed, seeded M_ref (K, C): the same seed gives the same keys on any machine.

    Drawn on the CPU generator (device generators differ), rows ~ N(0, I/C) so
    keys W = Z M_ref^+ have norms of order sqrt(C/K) for unit-norm latents.
    """
    g = torch.Generator(device="cpu").manual_seed(cfg.seed)
    M_ref = torch.randn((cfg.slots, cfg.dim), generator=g, dtype=torch.float64) / math.sqrt(cfg.dim)
    return M_ref.to(device=device, dtype=dtype)  # (K, C)


class EpisodicMemory:
    """Keys, updates and reads of a sequential Larimar memory.

    Holds only what never changes (config and M_ref); the changing part is the
    ``MemoryState`` passed in and returned, so callers decide when a new state
    becomes visible.
    """

    def __init__(self, cfg: MemoryConfig, M_ref: Tensor | None = None, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        self.cfg = cfg
        self.M_ref = reference_memory(cfg, device, dtype) if M_ref is None else M_ref.to(device=device, dtype=dtype)
        assert self.M_ref.shape == (cfg.slots, cfg.dim), f"M_ref must be {(cfg.slots, cfg.dim)}"
        # Keys are computed in float64 (a fact's key must come out the same alone or in a batch, or
        # forgetting it leaves residue), from M_ref and M_ref^+ (C, K) kept in float64 once.
        self._M_ref64 = self.M_ref.double()
        self._M_ref_pinv64 = pinv(self._M_ref64)

    @property
    def device(self) -> torch.device:
        return self.M_ref.device

    @property
    def dtype(self) -> torch.dtype:
        return self.M_ref.dtype

    # --- addressing ---------------------------------------------------------

    def address(self, Z: Tensor) -> Tensor:
        """float64 keys of latents. Recomputable later from the same Z, which is what forgetting needs."""
        Z = Z.to(device=self.device, dtype=torch.float64)  # (N, C)
        if self.cfg.addressing == "linear":
            return Z @ self._M_ref_pinv64  # W = Z M_ref^+ : (N, K)
        # Gaussian (appendix E): w_k ~ exp(-||z - M_ref_k||^2 / (2 a s^2)), s = min_k ||z - M_ref_k||
        d2 = torch.cdist(Z, self._M_ref64).square()  # (N, K)
        s2 = d2.min(dim=1, keepdim=True).values.clamp_min(1e-12)  # (N, 1)
        return torch.softmax(-d2 / (2 * self.cfg.gaussian_a * s2), dim=1)  # (N, K), rows sum to 1

    # --- state --------------------------------------------------------------

    def empty(self) -> MemoryState:
        """M_0 = 0, C_0 = ridge I."""
        K, C = self.cfg.slots, self.cfg.dim
        M = torch.zeros((K, C), device=self.device, dtype=self.dtype)
        C_inv = torch.eye(K, device=self.device, dtype=torch.float64) / self.cfg.ridge
        return MemoryState(M=M, C_inv=C_inv)

    def update(self, state: MemoryState, Z: Tensor, alpha: float, inplace: bool = False) -> MemoryState:
        """M_i = M_{i-1} + alpha C_i^-1 W^T (Z - W M_{i-1}), C_i = C_{i-1} + alpha W^T W.

        Woodbury keeps C^-1 current with an N x N factorisation instead of a K x K solve:
          U = C_{i-1}^-1 W^T                      (K, N)
          P = I + alpha W U = L L^T               (N, N), positive definite for a write, and for a
                                                  forget of facts that are in the memory
          V = U L^-T                              (K, N)
          C_i^-1 = C_{i-1}^-1 - alpha V V^T       (exactly symmetric: forgets amplify any asymmetry)
          M_i = M_{i-1} + alpha V L^-1 (Z - W M_{i-1})

        Forgetting divides by 1 - leverage, near 0 for a fact the memory fits
        well, so everything here runs in float64. M is always a new tensor
        (readers may hold the old one). With ``inplace`` the K x K inverse is
        updated in its own storage: only writers touch it, and at K=4096 a fresh
        copy per write costs more than the update itself.
        """
        if alpha not in (1.0, -1.0):
            raise ValueError(f"alpha is +1 (write) or -1 (forget), not {alpha}")
        Z = Z.to(device=self.device, dtype=torch.float64)  # (N, C)
        W = self.address(Z)  # (N, K)
        M = state.M.double()  # (K, C)
        U = state.C_inv @ W.T  # (K, N)
        P = torch.eye(W.shape[0], device=self.device, dtype=torch.float64) + alpha * (W @ U)  # (N, N)
        L, info = torch.linalg.cholesky_ex(P)
        if int(info) != 0:
            raise ValueError("update is not positive definite: forgetting facts that are not in the memory?")
        V = torch.linalg.solve_triangular(L, U.T, upper=False).T  # (K, N)
        Y = torch.linalg.solve_triangular(L, Z - W @ M, upper=False)  # (N, C) whitened residual
        C_inv = state.C_inv if inplace else state.C_inv.clone()
        C_inv.addmm_(V, V.T, alpha=-alpha)  # (K, K)
        M = torch.addmm(M, V, Y, alpha=alpha)  # (K, C)
        return MemoryState(M=M.to(self.dtype), C_inv=C_inv, updates=state.updates + 1)

    def write(self, state: MemoryState, Z: Tensor) -> MemoryState:
        return self.update(state, Z, +1.0)

    def forget(self, state: MemoryState, Z: Tensor) -> MemoryState:
        return self.update(state, Z, -1.0)

    def rebuild(self, Z: Tensor) -> MemoryState:
        """Exact least-squares state of the facts Z, by a direct solve.

        M = (ridge I + W^T W)^-1 W^T Z: what any order of writes and forgets of
        the same surviving facts converges to; used to wash out round-off.
        """
        K = self.cfg.slots
        W = self.address(Z)  # (N, K)
        C = self.cfg.ridge * torch.eye(K, device=self.device, dtype=torch.float64) + W.T @ W  # (K, K)
        L = torch.linalg.cholesky(C)
        C_inv = torch.cholesky_inverse(L)  # (K, K)
        M = torch.cholesky_solve(W.T @ Z.to(self.device).double(), L)  # (K, C)
        return MemoryState(M=M.to(self.dtype).contiguous(), C_inv=C_inv.contiguous(), updates=0)

    # --- plain tensors, for safetensors ----------------------------------------

    def to_tensors(self, state: MemoryState) -> dict[str, Tensor]:
        """Everything needed to continue exactly where this state is (M_ref too: keys must not change)."""
        return {"M": state.M, "C_inv": state.C_inv, "M_ref": self.M_ref,
                "updates": torch.tensor([state.updates], dtype=torch.int64)}

    @classmethod
    def from_tensors(cls, cfg: MemoryConfig, tensors: dict[str, Tensor], device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float32) -> tuple[EpisodicMemory, MemoryState]:
        mem = cls(cfg, M_ref=tensors["M_ref"], device=device, dtype=dtype)
        state = MemoryState(
            M=tensors["M"].to(device=device, dtype=dtype),
            C_inv=tensors["C_inv"].to(device=device, dtype=torch.float64),
            updates=int(tensors["updates"][0]),
        )
        return mem, state

    # --- reading ------------------------------------------------------------

    def read(self, state: MemoryState, Zq: Tensor) -> Tensor:
        """Readout Z_r = W_q M with the query's own keys W_q = address(Zq)."""
        return self.address(Zq).to(self.dtype) @ state.M  # (Q, K) @ (K, C) -> (Q, C)


# ---------------------------------------------------------------------------
# From a readout back to the facts it reconstructs
# ---------------------------------------------------------------------------


def nearest(readout: Tensor, latents: Tensor, k: int = 1, exclude: Tensor | None = None,
            unit: bool = False) -> tuple[Tensor, Tensor]:
    """Cosine similarity of each readout to the written latents, top k; rows marked in ``exclude`` never win.

    ``unit`` says the latents are unit norm already (an encoder's are): normalising N rows again costs
    more than the search itself. Unit latents are scanned in their own dtype (float16 halves what a scan
    reads); the best ``k + RERANK_SLACK`` are then ranked by their exact float32 cosines.
    Returns (similarities (Q, k), indices (Q, k)), best first.
    """
    # readout: (Q, C), latents: (N, C), exclude: (N,) bool
    r = torch.nn.functional.normalize(readout, dim=-1)  # (Q, C)
    z = latents if unit else torch.nn.functional.normalize(latents.to(readout), dim=-1)  # (N, C)
    sims = (z @ r.to(z.dtype).T).T.float()  # (Q, N); latents-major, a product that streams them once
    if exclude is not None:
        sims[:, exclude] = float("-inf")
    n = z.shape[0] - (0 if exclude is None else int(exclude.sum()))
    _, idx = sims.topk(min(k + RERANK_SLACK, n), dim=-1)  # (Q, k + slack), all allowed rows
    return rerank(readout, z, idx, k)  # (Q, k), (Q, k)


RERANK_SLACK = 8  # extra candidates that a coarse ranking (a float16 scan, an index) passes to the exact one


def rerank(readout: Tensor, latents: Tensor, idx: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k of each readout's candidate rows ``idx`` with the highest exact cosine, best first."""
    # readout: (Q, C), latents: (N, C), idx: (Q, c)
    s = cosines(readout, latents[idx])  # (Q, c)
    s, j = s.topk(min(k, idx.shape[1]), dim=-1)  # (Q, k)
    return s, idx.gather(1, j)  # (Q, k), (Q, k)


def cosines(readout: Tensor, rows: Tensor) -> Tensor:
    """Cosine of each readout to its own rows, computed row by row.

    A matrix product rounds differently with the number of rows it multiplies, and the same facts must get
    the same similarities whatever else the memory holds (dead rows, say) and however they were found (a
    scan or an index).
    """
    # readout: (Q, C), rows: (Q, k, C)
    r = torch.nn.functional.normalize(readout, dim=-1)  # (Q, C)
    zk = torch.nn.functional.normalize(rows.to(readout), dim=-1)  # (Q, k, C)
    return (r[:, None, :] * zk).sum(-1)  # (Q, k)
