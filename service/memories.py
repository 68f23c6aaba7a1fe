"""Named memories: their facts, their episodic state, and how both persist.

One ``MemoryHandle`` per memory. Writers take its lock, so writes to one
memory are serialised; readers take ``handle.view`` once and use that
immutable ``MemoryView`` for the whole request, so a query never sees half an
update. Order of a write: encode -> append to the store's log (durable) ->
apply to the state -> publish the new view -> acknowledge.

A forget rewrites the snapshot without the fact and drops the log in one
atomic store step, so no copy of its text or latent is left behind.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import torch
from torch import Tensor

from memory_core import EpisodicMemory, MemoryConfig, MemoryState
from service.store import Store, StoreError, codec
from service.timing import Timer

log = logging.getLogger(__name__)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Fact:
    id: str
    text: str
    metadata: dict[str, Any]
    created_at: str

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "metadata": self.metadata, "created_at": self.created_at}


@dataclass(frozen=True)
class MemoryView:
    """One consistent version of a memory: row i of ``latents`` is fact ``ids[i]``."""

    state: MemoryState
    ids: tuple[str, ...]
    latents: Tensor  # (N, C) encoder latents of the facts, for scope and readout -> fact
    facts: Mapping[str, Fact]

    def row(self, fact_id: str) -> int:
        return self.ids.index(fact_id)


@dataclass(frozen=True)
class MemoryInfo:
    """What callers may know of a memory, as plain values (routes and metrics never reach into a handle)."""

    name: str
    facts: int
    slots: int  # K
    dim: int  # C
    addressing: str
    device: str
    log_entries: int  # in the store's log since the last snapshot
    last_snapshot: str | None


@dataclass
class MemoryHandle:
    name: str
    mem: EpisodicMemory
    view: MemoryView
    seq: int = 0  # last log sequence number applied
    log_entries: int = 0  # entries in the store's log since the last snapshot
    last_snapshot: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def info(self) -> MemoryInfo:
        cfg = self.mem.cfg
        return MemoryInfo(self.name, len(self.view.ids), cfg.slots, cfg.dim, cfg.addressing, str(self.mem.device),
                          self.log_entries, self.last_snapshot)

    # --- snapshot / log encoding --------------------------------------------

    def snapshot_bytes(self, view: MemoryView) -> bytes:
        tensors = self.mem.to_tensors(view.state) | {"latents": view.latents}
        meta = {
            "kind": "snapshot",
            "seq": self.seq,
            "config": self.mem.cfg.__dict__,
            "facts": [view.facts[i].as_dict() for i in view.ids],
            "snapshot_at": now(),
        }
        return codec.encode(tensors, meta)

    @staticmethod
    def log_entry(seq: int, facts: list[Fact], latents: Tensor) -> bytes:
        return codec.encode({"latents": latents}, {"kind": "write", "seq": seq, "facts": [f.as_dict() for f in facts]})

    # --- state transitions (callers hold ``lock``) ---------------------------

    def applied(self, facts: list[Fact], latents: Tensor) -> MemoryView:
        """The view after writing ``facts``: one rank-N update for the whole batch."""
        v = self.view
        state = self.mem.update(v.state, latents, +1.0, inplace=True)  # only writers read C^-1
        return MemoryView(
            state=state,
            ids=v.ids + tuple(f.id for f in facts),
            latents=torch.cat([v.latents, latents.to(v.latents)]),
            facts={**v.facts, **{f.id: f for f in facts}},
        )

    def without(self, fact_id: str) -> MemoryView:
        """The view after forgetting one fact (alpha = -1 with its recomputed key)."""
        v = self.view
        i = v.row(fact_id)
        state = self.mem.update(v.state, v.latents[i : i + 1], -1.0, inplace=False)  # old view stays valid on failure
        facts = dict(v.facts)
        del facts[fact_id]
        return MemoryView(
            state=state,
            ids=v.ids[:i] + v.ids[i + 1 :],
            latents=torch.cat([v.latents[:i], v.latents[i + 1 :]]),
            facts=facts,
        )


class MemoryRegistry:
    """All memories of this process, created on first write, restored from the store at start."""

    def __init__(self, store: Store, cfg: MemoryConfig, device: str, snapshot_every: int) -> None:
        self.store = store
        self.cfg = cfg
        self.device = device
        self.snapshot_every = snapshot_every
        self._handles: dict[str, MemoryHandle] = {}
        self._lock = threading.Lock()
        self.restored = False  # nothing is served before the stored memories are back

    def require_restored(self) -> None:
        if not self.restored:
            raise StoreError("the store is unreachable: stored memories are not restored yet")

    # --- lookup --------------------------------------------------------------

    def get(self, name: str) -> MemoryHandle | None:
        self.require_restored()
        return self._handles.get(name)

    def handles(self) -> list[MemoryHandle]:
        self.require_restored()
        with self._lock:
            return [self._handles[n] for n in sorted(self._handles)]

    def get_or_create(self, name: str) -> MemoryHandle:
        with self._lock:
            h = self._handles.get(name)
            if h is None:
                h = self._empty_handle(name)
                self._handles[name] = h
            return h

    def _empty_handle(self, name: str) -> MemoryHandle:
        mem = EpisodicMemory(self.cfg, device=self.device)
        empty = MemoryView(mem.empty(), (), torch.zeros((0, self.cfg.dim), device=self.device), {})
        return MemoryHandle(name=name, mem=mem, view=empty)

    # --- writes --------------------------------------------------------------

    @contextmanager
    def _holding(self, name: str, create: bool = False) -> Iterator[MemoryHandle | None]:
        """The memory's handle with its lock held (None if there is no such memory).

        Re-checked once held: a delete, or the drop of a memory whose first write failed, may have
        unregistered the handle while we waited, and nothing may then land in the store for it.
        Lock order everywhere: a memory's lock, then the registry's.
        """
        self.require_restored()
        while True:
            h = self.get_or_create(name) if create else self.get(name)
            if h is None:
                yield None
                return
            with h.lock:
                if self._handles.get(name) is h:
                    yield h
                    return

    def write(self, name: str, texts_meta: list[tuple[str, dict[str, Any]]], latents: Tensor,
              timer: Timer | None = None) -> list[Fact]:
        """Durably append, then apply and publish. Returns the new facts; ``timer`` gets each step's time."""
        timer = timer or Timer()
        with self._holding(name, create=True) as h:
            assert h is not None
            timer.lap("lock")
            created = now()
            facts = [Fact(uuid.uuid4().hex, t, m, created) for t, m in texts_meta]
            entry = h.log_entry(h.seq + 1, facts, latents)
            timer.lap("log_entry")
            try:
                self.store.append(name, entry)
            except Exception:
                self._drop_if_unborn(h)  # a memory exists from its first *acknowledged* write
                raise
            timer.lap("store_append")
            h.seq += 1
            h.log_entries += 1
            h.view = h.applied(facts, latents)
            timer.lap("apply")
            if h.log_entries >= self.snapshot_every:
                self._compact_logged(h)
                timer.lap("compaction")
            return facts

    def _drop_if_unborn(self, h: MemoryHandle) -> None:
        with self._lock:
            if h.seq == 0 and not h.view.ids and h.last_snapshot is None:
                self._handles.pop(h.name, None)

    def forget(self, name: str, fact_id: str) -> bool:
        with self._holding(name) as h:
            if h is None or fact_id not in h.view.facts:
                return False
            view = h.without(fact_id)
            self.store.replace(name, h.snapshot_bytes(view))  # raises StoreError: nothing changed
            h.view, h.log_entries, h.last_snapshot = view, 0, now()
            return True

    def snapshot(self, name: str) -> MemoryHandle | None:
        with self._holding(name) as h:
            if h is not None:
                self.store.replace(name, h.snapshot_bytes(h.view))
                h.log_entries, h.last_snapshot = 0, now()
            return h

    def delete(self, name: str) -> bool:
        with self._holding(name) as h:
            if h is None:
                return False
            self.store.delete(name)
            with self._lock:
                del self._handles[name]
            return True

    def _compact_logged(self, h: MemoryHandle) -> None:
        """Fold the log into a snapshot; the log already holds the data, so failure is only logged."""
        try:
            self.store.replace(h.name, h.snapshot_bytes(h.view))
            h.log_entries, h.last_snapshot = 0, now()
        except Exception:  # noqa: BLE001 - compaction is an optimisation here, durability came from the log
            log.exception("compaction of memory %r failed; its log stays in place", h.name)

    # --- restore -------------------------------------------------------------

    def restore(self) -> int:
        """Rebuild every stored memory from its snapshot plus log tail. Returns how many."""
        for name in self.store.names():
            stored = self.store.load(name)
            h = self._restore_one(name, stored.snapshot, stored.log)
            with self._lock:
                self._handles[name] = h
            if stored.log:  # fold the tail now: also drops any entry a crash left behind a newer snapshot
                self._compact_logged(h)
            log.info("restored memory %r: %d facts", name, len(h.view.ids))
        self.restored = True
        return len(self._handles)

    def restore_in_background(self, every_s: float = 2.0) -> threading.Thread:
        """Retry ``restore`` until the store answers (the service starts, unready, meanwhile)."""

        def loop() -> None:
            while not self.restored:
                try:
                    self.restore()
                except StoreError as e:
                    log.warning("restore failed, retrying in %.0f s: %s", every_s, e)
                    time.sleep(every_s)

        t = threading.Thread(target=loop, name="larimar-restore", daemon=True)
        t.start()
        return t

    def _restore_one(self, name: str, snapshot: bytes | None, entries: list[bytes]) -> MemoryHandle:
        if snapshot is not None:
            tensors, meta = codec.decode(snapshot)
            cfg = MemoryConfig(**meta["config"])
            mem, state = EpisodicMemory.from_tensors(cfg, tensors, device=self.device)
            facts = [Fact(**f) for f in meta["facts"]]
            view = MemoryView(state, tuple(f.id for f in facts), tensors["latents"].to(self.device),
                              {f.id: f for f in facts})
            h = MemoryHandle(name=name, mem=mem, view=view, seq=int(meta["seq"]), last_snapshot=meta["snapshot_at"])
        else:
            h = self._empty_handle(name)
        for blob in entries:
            tensors, meta = codec.decode(blob)
            if meta["seq"] <= h.seq:
                continue  # already inside the snapshot
            facts = [Fact(**f) for f in meta["facts"]]
            h.view = h.applied(facts, tensors["latents"].to(self.device))
            h.seq = int(meta["seq"])
            h.log_entries += 1
        return h
