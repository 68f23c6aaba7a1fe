"""Which written facts are nearest a query: exact while that is fast, an approximate index above a size.

Below ``index_above`` live facts every lookup is an exact scan of the memory's latents. Above it, a
faiss inverted-file index (IVF, 8-bit scalar-quantised codes, inner product on unit latents) is built in
the background and kept current there; a lookup then asks it for candidates, adds the rows written since
it last caught up (scanned exactly, so writes never wait for the index), drops dead rows, and ranks the
candidates by their exact cosine from the float32 latents. faiss was chosen by measurement on this CPU
(docs/scale.md): at 1M latents it builds in about 9 s and answers in well under a millisecond; an HNSW
graph (usearch) took 42 s for 100k.

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

from memory_core import nearest


class FactIndex:
    """IVF-SQ8 over buffer rows [0, n_indexed); row numbers are the ids."""

    def __init__(self, latents: Tensor, dead: Tensor, ids_list: list[str], candidates: int = 64) -> None:
        n, dim = latents.shape
        self.nlist = max(64, int(math.sqrt(n)))
        self.index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, self.nlist,
                                                   faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        # lists searched: a tenth of them, at least 48. Measured on 1M random unit latents with near-duplicate
        # queries: recall@1 against exact 0.970 at 48 of 1,000 lists (1.1 ms), 0.992 at 96 (2.2 ms), 1.0 at 160
        self.index.nprobe = min(self.nlist, max(48, self.nlist // 10))
        self.candidates = candidates
        self.ids_list = ids_list  # the buffer generation this index numbers rows of (compaction makes a new one)
        self.lock = threading.Lock()  # faiss indexes are not safe for a search during an add
        rng = np.random.default_rng(0)
        live = latents[~dead[:n]].cpu().numpy()  # forgotten rows shape nothing, not even the centroids
        self.index.train(live[rng.choice(len(live), min(len(live), 40 * self.nlist), replace=False)])
        self.n_indexed = 0
        self.add(latents, dead, 0)

    def add(self, latents: Tensor, dead: Tensor, start: int) -> None:
        """Rows [start, len(latents)) of the buffer, bar the dead ones."""
        rows = torch.arange(start, latents.shape[0])[~dead[start : latents.shape[0]].cpu()]
        if len(rows):
            with self.lock:
                self.index.add_with_ids(latents[rows].cpu().numpy(), rows.numpy().astype(np.int64))
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


def top_k(Q: Tensor, latents: Tensor, k: int, dead: Tensor | None, index: FactIndex | None,
          ids_list: list[str]) -> tuple[Tensor, Tensor]:
    """Exact cosines and rows of the k nearest live latents for each query (Q: (m, C) unit rows).

    With an ``index`` of this buffer generation, over its candidates plus the rows it has not caught up
    with; else an exact scan.
    """
    n = latents.shape[0]
    if index is None or index.ids_list is not ids_list:
        return nearest(Q, latents, k, dead, unit=True)
    cand = index.search(Q, n)  # (m, c)
    tail = torch.arange(min(index.n_indexed, n), n)
    sims_out, rows_out = [], []
    for i in range(Q.shape[0]):
        rows = torch.cat([cand[i][cand[i] >= 0], tail]).unique()
        if dead is not None:
            rows = rows[~dead[rows]]
        if len(rows) == 0:  # nothing live found: fall back to the exact scan
            return nearest(Q, latents, k, dead, unit=True)
        s, j = nearest(Q[i : i + 1], latents[rows], k, unit=True)  # (1, k)
        sims_out.append(s[0])
        rows_out.append(rows[j[0]])
    kk = min(len(s) for s in sims_out)
    return torch.stack([s[:kk] for s in sims_out]), torch.stack([r[:kk] for r in rows_out])
