"""The indexer thread: keeps each large memory's approximate index (``service.lookup``) current.

An index is built from a view outside the memory's lock (seconds at a million facts), then caught up, under
the lock, with the writes and forgets that landed meanwhile, and published on the handle; afterwards new rows
are added every round. It numbers the rows of one buffer generation (``MemoryView.generation``): after a
compaction it is rebuilt, and lookups scan exactly until then. Only this module and ``service.memories``
touch a handle's view and index.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from service.lookup import FactIndex

if TYPE_CHECKING:
    from service.memories import MemoryHandle, MemoryView

log = logging.getLogger(__name__)


def _catch_up(h: MemoryHandle, index: FactIndex, since: MemoryView | None) -> None:
    """Bring ``index`` to the published view: forgets since ``since`` (the view it was built from), then new
    rows. The caller holds ``h.lock``."""
    v = h.view
    if since is not None:
        gone = (v.dead_buffer[: since.n] & ~since.dead_buffer[: since.n]).nonzero().flatten().tolist()
        for row in gone:
            index.remove(row)
    if index.n_indexed < v.n:
        index.add(v.latents, v.dead_buffer[: v.n], index.n_indexed)


def step(h: MemoryHandle, index_above: int) -> None:
    """One round for one memory: catch its index up, or build one once it holds ``index_above`` live facts."""
    v = h.view
    if (index := h.current_index(v)) is not None:
        if index.n_indexed < v.n:
            with h.lock:
                _catch_up(h, index, None)
        return
    if v.live < index_above:
        return
    t0 = time.perf_counter()
    index = FactIndex(v.latents, v.dead_buffer[: v.n], v.generation)
    with h.lock:
        if h.view.generation != v.generation:
            return  # compacted meanwhile: the next round builds on the new rows
        _catch_up(h, index, v)
        h.index = index
    log.info("memory %r: approximate index over %d facts built in %.1f s", h.name, v.live, time.perf_counter() - t0)


def start(handles: Callable[[], list[MemoryHandle]], stop: threading.Event, index_above: int,
          every_s: float = 0.5) -> threading.Thread:
    """Run ``step`` over ``handles()`` every ``every_s`` until ``stop``; a failure leaves lookups exact and
    is retried next round."""

    def loop() -> None:
        while not stop.wait(every_s):
            for h in handles():
                try:
                    step(h, index_above)
                except Exception:  # noqa: BLE001 - lookups stay exact; retried next round
                    log.exception("indexing memory %r failed", h.name)

    t = threading.Thread(target=loop, name="larimar-index", daemon=True)
    t.start()
    return t
