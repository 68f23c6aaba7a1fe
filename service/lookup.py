"""Which written facts are nearest a query: exact while that is fast, an approximate index above a size.

Below ``index_above`` live facts every lookup is an exact scan of the memory's latents. Above it, a
faiss inverted-file index is built in the background and kept current there; a lookup then asks it for
candidates, adds the rows written since it last caught up (scanned exactly, so writes never wait for the
index), drops dead rows, and ranks the candidates by their exact cosine from the latents (float16, computed in float32).

The index is IVF over sqrt(N) lists with 4-bit product-quantised codes scanned by faiss's SIMD "fast
scan" (``IVF{nlist},PQ{C/4}x4fs``: 48 bytes per 384-d latent, a thirty-second of the float32 row). Chosen
by measurement on this CPU at 1M unit latents (docs/scale.md): it scans codes about ten times faster than
8-bit scalar codes (0.6 ms against 7 ms for two queries at the same lists probed) in an eighth of the
memory, so half the lists can be probed, which is what recall on far queries needs; the exact re-rank
makes up for the coarse codes. An HNSW graph (usearch) took 42 s to build for 100k.

The index is an accelerator only: what a query may see is still decided by its view (rows below ``n``,
not dead), so an index that lags or is being rebuilt never shows half an update.
"""

from __future__ import annotations

import math
import threading

import faiss
import numpy as np
import torch
from torch import Tensor

from memory_core import RERANK_SLACK, nearest, rerank


def index_spec(dim: int, nlist: int) -> str:
    """faiss factory string: 4-bit PQ fast scan needs sub-vectors that split the dimension evenly."""
    return f"IVF{nlist},PQ{dim // 4}x4fs" if dim % 4 == 0 else f"IVF{nlist},SQ8"


class FactIndex:
    """An IVF index over buffer rows [0, n_indexed); row numbers are the ids."""

    def __init__(self, latents: Tensor, dead: Tensor, generation: int, candidates: int = 128) -> None:
        n, dim = latents.shape
        self.nlist = max(64, int(math.sqrt(n)))
        self.index = faiss.index_factory(dim, index_spec(dim, self.nlist), faiss.METRIC_INNER_PRODUCT)
        # lists searched: half of them. Measured at 1M random unit latents, queries at cosine ~0.64 to their
        # fact (as real questions are): recall@1 after re-rank 0.97 at 300 of 1,000 lists, 0.99 at 500
        self.ivf = faiss.extract_index_ivf(self.index)
        self.ivf.nprobe = min(self.nlist, max(48, self.nlist // 2))
        self.candidates = candidates
        self.generation = generation  # the buffers whose rows it numbers (``MemoryView.generation``)
        self.lock = threading.Lock()  # faiss indexes are not safe for a search during an add
        rng = np.random.default_rng(0)
        live = latents[~dead[:n]].float().cpu().numpy()  # forgotten rows shape nothing, not even the centroids
        self.index.train(live[rng.choice(len(live), min(len(live), 40 * self.nlist), replace=False)])
        self.n_indexed = 0
        self.add(latents, dead, 0)

    def add(self, latents: Tensor, dead: Tensor, start: int) -> None:
        """Rows [start, len(latents)) of the buffer, bar the dead ones."""
        rows = torch.arange(start, latents.shape[0])[~dead[start : latents.shape[0]].cpu()]
        if len(rows):
            with self.lock:
                self.index.add_with_ids(latents[rows].float().cpu().numpy(), rows.numpy().astype(np.int64))
        self.n_indexed = latents.shape[0]

    def remove(self, row: int) -> None:
        with self.lock:
            self.index.remove_ids(np.array([row], dtype=np.int64))

    def search(self, Q: Tensor, n: int) -> Tensor:
        """(m, candidates) row numbers (-1 where none), restricted to rows below ``n``."""
        with self.lock:
            _, rows = self.index.search(Q.cpu().numpy().astype(np.float32), self.candidates)
        rows = torch.from_numpy(rows)
        return torch.where(rows < n, rows, -1)


def top_k(Q: Tensor, latents: Tensor, k: int, dead: Tensor | None, index: FactIndex | None
          ) -> tuple[Tensor, Tensor]:
    """Exact cosines and rows of the k nearest live latents for each query (Q: (m, C) unit rows).

    With an ``index`` (the caller passes one only for these buffers' generation), over its candidates plus
    the rows it has not caught up with, all queries at once; else an exact scan.
    """
    n = latents.shape[0]
    if index is None:
        return nearest(Q, latents, k, dead, unit=True)
    cand = index.search(Q, n)  # (m, c), -1 where none
    tail = torch.arange(min(index.n_indexed, n), n)  # (t,) rows the index has not caught up with
    rows = torch.cat([cand, tail.expand(Q.shape[0], -1)], dim=1)  # (m, c + t)
    usable = rows >= 0  # (m, c + t)
    if dead is not None:
        usable &= ~dead[rows.clamp(min=0)]
    found = int(usable.sum(1).min())
    if found == 0:  # nothing live found for some query: the exact scan for all
        return nearest(Q, latents, k, dead, unit=True)
    Z = latents[rows.clamp(min=0)].to(Q)  # (m, c + t, C)
    sims = (Q[:, None, :] * Z).sum(-1).masked_fill(~usable, float("-inf"))  # (m, c + t)
    j = sims.topk(min(k + RERANK_SLACK, found), dim=-1).indices  # (m, k + slack), all usable
    return rerank(Q, latents, rows.gather(1, j), k)  # (m, k), (m, k)
