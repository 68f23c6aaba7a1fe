"""Named memories: their episodic state and fact latents in memory, and how both persist.

One ``MemoryHandle`` per memory. Writers take its lock, so writes to one memory are serialised;
readers get a ``Reading`` (``MemoryRegistry.reading``), which holds one ``MemoryView`` for the whole
request, so a query never sees half an update. Order of a write: encode -> store the facts and log the
write (durable) -> apply to the state -> publish the new view -> acknowledge.

The read API (``Reading``; ``holds``, ``facts``, ``page``, ``info``, ``exported`` and the document records on
the registry) is how every other module reads a memory: nothing outside this module and ``service.indexer``
touches a handle's view, index, row map or the store.

Size does not matter: the latents live in a growable buffer (amortised O(1) appends: rows below a
view's ``n`` never change, so readers of older views are undisturbed), a forget marks its row dead
instead of moving the others (the dead rows are compacted away once they are a quarter of the buffer),
and the store keeps each fact as its own record with the state checkpointed apart, O(K^2) whatever N.
Texts and metadata stay in the store; a query fetches those of the facts it recalled.

A forget deletes the fact and saves the state after it in one store step, so no copy of its text or
latent is needed or kept; the files behind the store shed theirs at the next purge, which runs
``purge_delay_s`` after a forget (or at once with ``purge``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from memory_core import EpisodicMemory, MemoryConfig, MemoryState, hierarchical_read
from service import indexer
from service.errors import DuplicateFact, NoMemory
from service.factcache import FactCache
from service.lookup import FactIndex, top_k
from service.store import Checkpoint, Fact, Op, Stale, Store, StoreError, codec, entries
from service.timing import Timer, utc_now

log = logging.getLogger(__name__)
MIN_CAPACITY = 1024  # rows a buffer starts with
GROWTH = 1.25  # a full buffer grows by this factor: amortised O(1) appends, at most a quarter of it unused
COMPACT_DEAD = 0.25  # dead rows are compacted away past this share of the rows
STALE_TRIES = 20  # a forget or replace recomputed after another server's change, at most this often
RELOAD_TRIES = 3  # reloads of a memory in one catch-up before it gives up (StoreError; the next one retries)
# Latents are kept as float16: half the memory of float32 (0.7 GiB for a million 384-d facts instead of
# 1.4) and half the bytes a scan reads, for cosines that move by about 1e-4. A write rounds its latents
# to float16 before anything sees them, so the store, the state and the buffer hold the very same values
# and a forget subtracts exactly what its write added.
LATENT_DTYPE = torch.float16


def capacity_for(n: int) -> int:
    return max(MIN_CAPACITY, int(n * GROWTH) + 1)


@dataclass(frozen=True)
class MemoryView:
    """One consistent version of a memory: rows [0, n) of the buffers, row i being fact ``ids[i]`` unless dead.

    The buffers and ``ids`` are shared with later views, which only ever write past ``n`` (appends) or
    into buffers of their own (forgets clone ``dead``; compaction and growth make new buffers).
    """

    state: MemoryState
    n: int
    buffer: Tensor  # (capacity, C) encoder latents of the facts, for scope and readout -> fact
    dead_buffer: Tensor  # (capacity,) bool, forgotten rows
    ids: list[str]
    live: int  # facts alive in rows [0, n)
    generation: int = 0  # which buffers: compaction makes new ones and counts up (an index numbers its rows)

    @property
    def latents(self) -> Tensor:
        """(n, C), dead rows included (mask them with ``dead``)."""
        return self.buffer[: self.n]

    @property
    def dead(self) -> Tensor | None:
        """(n,) bool, or None when no row is dead (the common case needs no masking)."""
        return None if self.live == self.n else self.dead_buffer[: self.n]

    def live_latents(self) -> Tensor:
        """(live, C), in write order."""
        return self.latents if self.dead is None else self.latents[~self.dead]


@dataclass(frozen=True)
class MemoryInfo:
    """What callers may know of a memory, as plain values (routes and metrics never reach into a handle)."""

    name: str
    facts: int
    slots: int  # K
    dim: int  # C
    addressing: str
    device: str
    log_entries: int  # writes in the store's log since the last checkpoint
    last_snapshot: str | None  # when the state was last checkpointed
    erasure: str  # "complete", or "pending": a forget has not yet reached every file the store writes
    lookup: str  # "exact" (scans), or "index" (the approximate index is current for this memory)
    seq: int  # the operation this server's copy is at (service/replicas.py: Larimar-Seq)


@dataclass(frozen=True)
class StateCheck:
    """This server's copy of a memory against its facts, and in a form replicas compare (``MemoryRegistry.check``)."""

    name: str
    seq: int
    facts: int
    fingerprint: list[float]  # four fixed random projections of M: equal, to round-off, on replicas at one seq
    norm: float  # ||M||_F: the scale of the fingerprint (a projection R.M has standard deviation ||M||_F)
    facts_digest: str  # sha256 of the ids held, sorted, one a line: equal where the same facts are held
    deviation: float  # max |M - M_rebuilt| / max |M_rebuilt|, M_rebuilt solved directly from the facts held


@dataclass(frozen=True)
class Hit:
    """A fact a lookup found: its id, its cosine to the query row, and its row in the reading that found it."""

    id: str
    similarity: float
    row: int


def cached_facts(store: Store, cache: FactCache, name: str, ids: list[str]) -> list[Fact | None]:
    """Facts by id, in order: the cache's, and the rest from the store (kept in the cache after). With every one
    cached no store is asked, so queries answer while it is out of reach."""
    found: dict[str, Fact | None] = dict(cache.get(name, ids))
    if missing := [i for i in dict.fromkeys(ids) if i not in found]:
        epoch = cache.epoch(name)
        fetched = store.facts(name, missing)
        cache.fetched(name, [f for f in fetched if f is not None], epoch)
        found |= dict(zip(missing, fetched, strict=True))
    return [found[i] for i in ids]


class Reading:
    """One memory as one request reads it, from a single view: a write landing meanwhile is wholly seen or not
    at all. Code outside this module reads a memory through this and nothing else (no view, index or store)."""

    def __init__(self, name: str, mem: EpisodicMemory, view: MemoryView, index: FactIndex | None, store: Store,
                 cache: FactCache) -> None:
        self.name = name
        self._mem, self._view, self._index, self._store, self._cache = mem, view, index, store, cache

    @property
    def live(self) -> int:
        """Facts in this version of the memory."""
        return self._view.live

    @property
    def state(self) -> MemoryState:
        """The episodic state (M, C^-1) this reading reads; checks compare it with ``rebuilt``."""
        return self._view.state

    def rebuilt(self) -> MemoryState:
        """The least-squares state of the live facts by a direct solve: what any order of writes and forgets of
        them must equal (to round-off)."""
        return self._mem.rebuild(self.live_latents().float())

    def readout(self, Zq: Tensor) -> Tensor:
        """(S, C) z_r per query row of ``Zq`` (S, C): the memory's reconstruction, read from its state M."""
        return self._mem.read(self._view.state, Zq)  # (S, C)

    def hierarchical_readout(self, Zq: Tensor, segment: int) -> Tensor:
        """(S, C) z_r through the paper's hierarchy of segment memories over the written latents (section 6)."""
        return hierarchical_read(Zq, self.live_latents().float(), segment)  # (S, C)

    def live_latents(self) -> Tensor:
        """(live, C) the written latents, in write order (float16, as kept; see LATENT_DTYPE)."""
        return self._view.live_latents()

    @property
    def index_params(self) -> dict[str, int] | None:
        """The approximate index this reading looks up through (None: exact scans), as benchmarks record it."""
        return None if self._index is None else {"nlist": self._index.nlist, "nprobe": self._index.ivf.nprobe}

    def nearest(self, Z: Tensor, k: int) -> list[list[Hit]]:
        """Per row of ``Z`` (Q, C) unit latents, the k live facts of nearest latent, best first (exact cosines;
        through the approximate index when one is current)."""
        v = self._view
        sims, rows = top_k(Z, v.latents, min(k, v.live), v.dead, self._index)  # (Q, k)
        return [[Hit(v.ids[r], s, r) for s, r in zip(srow, rrow, strict=True)]
                for srow, rrow in zip(sims.tolist(), rows.tolist(), strict=True)]

    def latents(self, hits: list[Hit]) -> Tensor:
        """(k, C) the written latents of these hits, in their order."""
        return self._view.latents[[h.row for h in hits]].float()  # (k, C)

    def facts(self, ids: list[str]) -> list[Fact | None]:
        """The facts' texts and metadata, in order, from the cache or the store; None for one forgotten since."""
        return cached_facts(self._store, self._cache, self.name, ids)

    def nearest_facts(self, Z: Tensor, k: int) -> list[list[tuple[Fact, float]]]:
        """``nearest`` with each hit's fact, one store read for all rows (a fact forgotten meanwhile is left out)."""
        hits = self.nearest(Z, k)
        flat = [h.id for row in hits for h in row]
        held = dict(zip(flat, self.facts(flat), strict=True))
        return [[(held[h.id], h.similarity) for h in row if held[h.id] is not None] for row in hits]


def empty_view(mem: EpisodicMemory, state: MemoryState, capacity: int = MIN_CAPACITY) -> MemoryView:
    # rows past a view's n are never read, so they stay unwritten: pages the OS has not had to back yet
    buf = torch.empty((capacity, mem.cfg.dim), device=mem.device, dtype=LATENT_DTYPE)  # (capacity, C)
    return MemoryView(state, 0, buf, torch.zeros(capacity, dtype=torch.bool, device=mem.device), [], 0)


def release_free_memory() -> None:
    """Hand the allocator's free pages back to the OS (glibc keeps those of a bulk restore's read chunks)."""
    libc = ctypes.util.find_library("c")
    if libc:
        try:
            ctypes.CDLL(libc).malloc_trim(0)
        except (OSError, AttributeError):  # not glibc: nothing to trim this way
            pass


@dataclass
class MemoryHandle:
    name: str
    mem: EpisodicMemory
    view: MemoryView
    seq: int = 0  # last operation applied
    log_entries: int = 0  # writes in the store's log since the last checkpoint
    last_snapshot: str | None = None
    row_of: dict[str, int] = field(default_factory=dict)  # fact id -> row, for forgets (writers only)
    unpurged: int = 0  # forgets not yet purged from the store's files
    index: FactIndex | None = None  # approximate lookup, kept by the registry's indexer above index_above facts
    last: Op | None = None  # the operation applied last (None: unknown), to tell the store still holds it
    absent: set[str] = field(default_factory=set)  # logged facts forgotten before their latent could be read:
    # never in the state, so their forget subtracts nothing (a shared store, where other servers forget)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def info(self) -> MemoryInfo:
        cfg = self.mem.cfg
        return MemoryInfo(self.name, self.view.live, cfg.slots, cfg.dim, cfg.addressing, str(self.mem.device),
                          self.log_entries, self.last_snapshot, "pending" if self.unpurged else "complete",
                          "index" if self.current_index(self.view) is not None else "exact", self.seq)

    def current_index(self, view: MemoryView) -> FactIndex | None:
        """The approximate index when it numbers the rows of ``view``'s buffers, else None (exact scans)."""
        index = self.index
        return index if index is not None and index.generation == view.generation else None

    def checkpoint(self, state: MemoryState, seq: int) -> Checkpoint:
        return Checkpoint(seq, codec.encode(self.mem.to_tensors(state), {}), utc_now())

    def adopt(self, other: MemoryHandle) -> None:
        """Take ``other``'s contents (a reload of this memory), keeping this handle and its lock."""
        self.mem, self.view, self.seq, self.log_entries = other.mem, other.view, other.seq, other.log_entries
        self.last_snapshot, self.row_of, self.absent, self.index = other.last_snapshot, other.row_of, other.absent, None
        self.last = other.last

    # --- state transitions (callers hold ``lock``) ---------------------------

    def appended(self, ids: list[str], latents: Tensor, base: MemoryView | None = None) -> MemoryView:
        """The view after writing facts ``ids`` to ``base`` (default: the published view, whose state it
        updates in place, as only writers read C^-1): one rank-N update, their latents appended."""
        v = base or self.view
        state = self.mem.update(v.state, latents, +1.0, inplace=True)
        n, k = v.n, len(ids)
        buf, dead, row_ids = v.buffer, v.dead_buffer, v.ids
        if n + k > buf.shape[0]:  # grow geometrically: amortised O(1) per appended row
            cap = max(capacity_for(buf.shape[0]), n + k)
            buf, old = buf.new_empty((cap, buf.shape[1])), buf  # (cap, C), its rows past n untouched
            buf[:n] = old[:n]
            dead = torch.cat([dead[:n], dead.new_zeros(cap - n)])  # (cap,)
        buf[n : n + k] = latents.to(buf)  # rows past every published view's n
        row_ids.extend(ids)
        self.row_of.update({i: n + j for j, i in enumerate(ids)})
        return MemoryView(state, n + k, buf, dead, row_ids, v.live + k, v.generation)

    def without(self, *fact_ids: str) -> MemoryView:
        """The view after forgetting facts (alpha = -1 with their recomputed keys, one rank-N downdate, as a
        batch write is one rank-N update); their rows are marked dead."""
        v = self.view
        rows = [self.row_of[i] for i in fact_ids]
        state = self.mem.update(v.state, v.buffer[rows], -1.0, inplace=False)  # old view stays valid on failure
        dead = v.dead_buffer.clone()  # (capacity,) readers of the old view keep theirs
        dead[rows] = True
        return MemoryView(state, v.n, v.buffer, dead, v.ids, v.live - len(rows), v.generation)

    def compacted(self, view: MemoryView) -> MemoryView:
        """The same facts in fresh buffers without the dead rows (rebuilds ``row_of``)."""
        keep = ~view.dead_buffer[: view.n]
        live = view.buffer[: view.n][keep]  # (live, C)
        ids = [i for i, k in zip(view.ids, keep.tolist(), strict=False) if k]
        out = empty_view(self.mem, view.state, capacity_for(len(ids)))
        out.buffer[: len(ids)] = live
        self.row_of = {i: r for r, i in enumerate(ids)}
        return MemoryView(view.state, len(ids), out.buffer, out.dead_buffer, ids, len(ids), view.generation + 1)


class MemoryRegistry:
    """All memories of this process, created on first write, restored from the store at start."""

    def __init__(self, store: Store, cfg: MemoryConfig, device: str, snapshot_every: int,
                 purge_delay_s: float = 10.0, claim: Callable[[], None] | None = None, fact_cache: int = 100_000
                 ) -> None:
        self.store = store
        self.cache = FactCache(fact_cache)  # texts for queries while the store is out of reach
        self._claim = claim  # run once before restore first reads the store (a server claiming it: Store.claim)
        self.cfg = cfg
        self.device = device
        self.snapshot_every = snapshot_every
        self.purge_delay_s = purge_delay_s
        self._handles: dict[str, MemoryHandle] = {}
        self._memories: dict[MemoryConfig, EpisodicMemory] = {}  # one M_ref per configuration, shared
        self._lock = threading.Lock()
        self._purge_lock = threading.Lock()
        self._purged_from = -1.0  # when the last purge that succeeded began (time.monotonic())
        self._pending_since: float | None = None  # when the oldest unpurged forget or delete happened
        self._stop = threading.Event()  # ends the background threads
        self.restored = False  # nothing is served before the stored memories are back
        self.restoring = ""  # what restore is doing now, for /readyz
        self.position = ""  # where this server follows the others' changes from (a shared store: Store.tail)

    def require_restored(self) -> None:
        if not self.restored:
            raise StoreError("stored memories are not restored yet" + (f" ({self.restoring})" if self.restoring
                                                                         else ": the store is unreachable"))

    def memory_for(self, cfg: MemoryConfig, M_ref: Tensor | None = None) -> EpisodicMemory:
        """The shared keys of this configuration (a stored M_ref that differs gets its own)."""
        with self._lock:
            mem = self._memories.get(cfg)
            if mem is None:
                mem = self._memories[cfg] = EpisodicMemory(cfg, device=self.device)
        if M_ref is not None and not torch.equal(M_ref.to(mem.M_ref), mem.M_ref):
            return EpisodicMemory(cfg, M_ref=M_ref, device=self.device)
        return mem

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
            mem = self.memory_for(self.cfg)
            with self._lock:
                h = self._handles.setdefault(name, MemoryHandle(name, mem, empty_view(mem, mem.empty())))
        return h

    # --- reads ---------------------------------------------------------------

    def reading(self, name: str) -> Reading | None:
        """The memory as it is now, for one request to read (None: no such memory)."""
        h = self.get(name)
        if h is None:
            return None
        view = h.view
        return Reading(name, h.mem, view, h.current_index(view), self.store, self.cache)

    def info(self, name: str) -> MemoryInfo | None:
        h = self.get(name)
        return None if h is None else h.info()

    def infos(self) -> list[MemoryInfo]:
        """Every memory's, by name."""
        return [h.info() for h in self.handles()]

    def holds(self, name: str, ids: list[str]) -> list[bool]:
        """Per id, whether the memory holds that fact now (read under its lock: writes meanwhile are whole)."""
        with self._holding(name) as h:
            return [False] * len(ids) if h is None else [i in h.row_of for i in ids]

    def facts(self, name: str, ids: list[str]) -> list[Fact | None]:
        """Facts by id from the cache or the store, in order; None for one the memory does not hold."""
        self.require_restored()
        return cached_facts(self.store, self.cache, name, ids)

    def page(self, name: str, limit: int, offset: int) -> list[Fact]:
        """Facts in the order written, ``limit`` from ``offset``."""
        self.require_restored()
        return self.store.page(name, limit, offset)

    def exported(self, name: str, chunk: int) -> Iterator[tuple[Fact, Tensor]]:
        """Every fact with its latent (C,), in the order written, ``chunk`` at a time from the store (writes
        and forgets meanwhile may or may not be seen)."""
        for ids, Z in self.store.latents(name, chunk):  # Z: (n, C)
            for fact, z in zip(self.store.facts(name, ids), Z, strict=True):
                if fact is not None:  # forgotten since the chunk was read
                    yield fact, z

    def reachable(self) -> bool:
        """Whether the store answers now."""
        return self.store.ping()

    def readiness(self) -> tuple[bool, bool]:
        """(restored, the store answers now): what /readyz reports. Restored without the store, queries still
        answer (``FactCache``) while writes and forgets cannot."""
        return self.restored, self.restored and self.reachable()

    # --- documents: records the store keeps beside a memory's facts (service.documents) ----

    def put_document(self, name: str, record: dict[str, Any]) -> None:
        self.store.put_document(name, record)

    def document(self, name: str, doc_id: str) -> dict[str, Any] | None:
        return self.store.document(name, doc_id)

    def documents(self, name: str) -> list[dict[str, Any]]:
        self.require_restored()
        return self.store.documents(name)

    def delete_document(self, name: str, doc_id: str) -> None:
        self.store.delete_document(name, doc_id)

    def unfinished_documents(self) -> list[tuple[str, dict[str, Any]]]:
        return self.store.unfinished_documents()

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

    # --- following the other servers of a shared store ------------------------------------

    def catch_up(self, name: str) -> int | None:
        """Apply every operation the store logged for the memory that this server has not (another server's, on a
        shared store); a memory made elsewhere is loaded. Returns the sequence number applied to (None: no such
        memory). Writes read their own writes; a client reads another server's with ``Larimar-Seq``."""
        self.require_restored()
        if self.get(name) is None:
            made = self._restore_one(name)
            if made is None:
                return None
            with self._lock:
                self._handles.setdefault(name, made)
        with self._holding(name) as h:
            return None if h is None else self._catch_up(h)

    def check(self, name: str) -> StateCheck | None:
        """``StateCheck`` of the memory as it is now (None: no such memory). Costs a direct solve over every fact
        (O(N K^2)): an operator's check, not a request path."""
        with self._holding(name) as h:  # the view and the operation it is at, together
            if h is None:
                return None
            view, seq = h.view, h.seq
            reading = Reading(name, h.mem, view, None, self.store, self.cache)
        M = view.state.M.double()  # (K, C)
        R = torch.randn((4, *M.shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # (4, K, C)
        rebuilt = reading.rebuilt().M.double() if view.live else torch.zeros_like(M)  # (K, C)
        scale = float(rebuilt.abs().max()) or 1.0
        dead = view.dead_buffer[: view.n].tolist()  # ids past n belong to later views
        ids = sorted(i for i, gone in zip(view.ids[: view.n], dead, strict=True) if not gone)
        return StateCheck(name, seq, view.live, (R * M.to(R.device)).sum((1, 2)).tolist(), float(M.norm()),
                          hashlib.sha256("".join(i + "\n" for i in ids).encode()).hexdigest(),
                          float((M - rebuilt).abs().max()) / scale)

    def applied(self, name: str) -> int | None:
        """The operation this server's copy of the memory is at (None: it holds none)."""
        h = self._handles.get(name)
        return None if h is None else h.seq

    def follow_in_background(self, observe: Callable[[float], None] | None = None) -> threading.Thread | None:
        """On a shared store, apply the other servers' operations as they are logged (service.replicas);
        ``observe`` gets each one's visibility lag in seconds."""
        from service import replicas  # it reads the request schemas, which read this module

        return replicas.follow(self, self._stop, observe) if self.store.shared else None

    def sweep(self) -> None:
        """Catch up every memory whose head moved, and load those made elsewhere: what ``tail`` missed (a Redis
        restart, a trimmed change stream)."""
        handles = {h.name: h for h in self.handles()}
        names = sorted(set(self.store.names()) | set(handles))
        for name, head in zip(names, self.store.heads(names), strict=True):
            h = handles.get(name)
            if h is None or head != h.seq:
                self.catch_up(name)

    def _current(self, h: MemoryHandle) -> bool:
        """Caught up with the store before a forget or replace checks what the memory holds (a shared store);
        False: the memory is gone."""
        return not self.store.shared or self._catch_up(h) is not None

    def _catch_up(self, h: MemoryHandle, own: dict[int, Tensor] | None = None) -> int | None:
        """``catch_up`` with ``h.lock`` held; ``own``: latents (n, C) of this server's operations by sequence
        number, so they are not read back. A gap in the log (trimmed past, a delete, a store behind this server)
        reloads the memory; None: it is gone."""
        for _ in range(RELOAD_TRIES):
            head, ops = self.store.changes(h.name, h.seq)
            if ops and ops[0].seq == h.seq:  # the operation applied last: still the same one?
                mine, ops = ops[0], ops[1:]
                same = h.last is None or h.last.seq != h.seq or (mine.kind, mine.ids) == (h.last.kind, h.last.ids)
            else:
                same = True  # trimmed past, or nothing applied yet: nothing to compare
            if same and head == h.seq:
                return h.seq
            if same and head > h.seq and [op.seq for op in ops] == list(range(h.seq + 1, head + 1)):
                if all(self._apply(h, op, own or {}) for op in ops):
                    return h.seq
            if not self._reload(h):
                return None
        raise StoreError(f"memory {h.name!r} kept changing while it was reloaded ({RELOAD_TRIES} tries)")

    def _reload(self, h: MemoryHandle) -> bool:
        """Replace ``h``'s contents by the store's (caller holds ``h.lock``); False: the store holds no such memory
        (deleted elsewhere), and it is dropped here too."""
        log.info("memory %r: reloading from the store (at operation %d)", h.name, h.seq)
        self.cache.removed(h.name)
        fresh = self._restore_one(h.name)
        if fresh is None:
            with self._lock:
                if self._handles.get(h.name) is h:
                    del self._handles[h.name]
            return False
        h.adopt(fresh)
        return True

    def _apply(self, h: MemoryHandle, op: Op, own: dict[int, Tensor]) -> bool:
        """Apply another server's (or this one's) logged operation ``op``, the next after ``h.seq``, to ``h``.
        The state then holds the latent each fact has in the store now (a later replace's, if one came since,
        which that replace's own turn then leaves as it is). False: it cannot be applied exactly (a fact the
        state holds whose latent this server never read): the caller reloads."""
        fresh = [i for i in op.ids if i not in h.row_of]
        if op.kind == "write" and len(fresh) < len(op.ids):
            return False  # applied already: this copy is not what the log says
        if op.kind in ("forget", "replace") and any(i not in h.absent for i in fresh):
            return False
        view, rows = h.view, [h.row_of[i] for i in op.ids if i in h.row_of]
        if op.kind in ("forget", "replace") and rows:
            view = h.without(*(i for i in op.ids if i in h.row_of))
            for i in op.ids:
                h.row_of.pop(i, None)
        if op.kind == "forget":
            h.absent.difference_update(op.ids)
        elif op.kind in ("write", "replace"):
            Z = own.get(op.seq)
            found = list(Z) if Z is not None else self.store.latents_of(h.name, op.ids)  # (C,) each, or None
            here = [(i, z) for i, z in zip(op.ids, found, strict=True) if z is not None]
            h.absent.difference_update(i for i, _ in here)
            h.absent.update(i for i, z in zip(op.ids, found, strict=True) if z is None)
            if here:
                latents = torch.stack([z for _, z in here]).to(LATENT_DTYPE).float()  # (n, C)
                view = h.appended([i for i, _ in here], latents, base=view if rows else None)
        if op.kind != "write":
            self.cache.removed(h.name, op.ids)
        h.seq, h.last = op.seq, op
        if op.kind in ("forget", "replace"):  # it saved a checkpoint: the log before it is covered
            h.log_entries = 0
            for row in rows:
                if (index := h.current_index(view)) is not None and row < index.n_indexed:
                    index.remove(row)
            if view.n - view.live > max(MIN_CAPACITY, COMPACT_DEAD * view.n):
                view = h.compacted(view)
                h.index = None
        else:
            h.log_entries += op.kind == "write"
        h.view = view
        return True

    def write(self, name: str, texts_meta: list[tuple[str, dict[str, Any]]], latents: Tensor,
              timer: Timer | None = None, kept: list[tuple[str, str]] | None = None, create: bool = True,
              entry_size: int | None = None) -> list[Fact]:
        """Durably store and log, then apply and publish. Returns the new facts; ``timer`` gets each step.

        The memory's lock is not held while the store writes: the store gives the write its place in the order,
        and it is applied under the lock in that order (with what other writers, here or on other servers,
        logged before it), so one slow store round trip does not hold up the others.

        ``kept``: each fact's (id, created_at) from elsewhere (an import), instead of new ones; an id the memory
        already holds raises ``DuplicateFact`` before anything is stored. Without ``create`` a memory that does
        not exist (deleted meanwhile) raises ``NoMemory`` instead of being made anew. ``entry_size`` (an import):
        still one store transaction and one published view, so readers and a restart see all of it or none,
        applied and logged as updates of at most that many facts (``Store.write``), each a small solve."""
        timer = timer or Timer()
        with self._holding(name, create=create) as h:  # checks only: the store is written without the lock
            if h is None:
                raise NoMemory(f"memory {name!r} does not exist")
            timer.lap("lock")
            created = utc_now()
            if kept is None:
                kept = [(uuid.uuid4().hex, created) for _ in texts_meta]
            elif self.store.shared and self._catch_up(h) is None:
                raise NoMemory(f"memory {name!r} was deleted meanwhile")
            if kept is not None and (taken := [i for i, _ in kept if i in h.row_of]):
                self._drop_if_unborn(h)
                raise DuplicateFact(f"memory {name!r} already holds fact {taken[0]!r}")
            config = asdict(h.mem.cfg)
        latents = latents.to(LATENT_DTYPE).float()  # (N, C) the values the memory keeps, see LATENT_DTYPE
        facts = [Fact(i, t, m, c, z) for (t, m), (i, c), z in zip(texts_meta, kept, latents, strict=True)]
        try:  # the store numbers it (ids are checked unique there too), so writers need not wait for each other
            first = self.store.write(name, facts, config, entry_size, create=create)
        except Exception:
            self._drop_if_unborn(h)  # a memory exists from its first *acknowledged* write
            raise
        timer.lap("store_append")
        self.cache.written(name, facts)
        ops, start = entries(facts, entry_size), 0
        own = {}  # seq -> (len(op), C) the latents of each operation of this write
        for k, op in enumerate(ops):
            own[first + k] = latents[start : start + len(op)]
            start += len(op)
        with self._holding(name, create=create) as h:  # made anew if a delete came between: it follows the store
            if h is None:  # deleted here since it was stored, and not to be made anew
                raise NoMemory(f"memory {name!r} was deleted meanwhile")
            if first == h.seq + 1:  # nothing from another writer in between: apply what is in hand
                view = h.view
                for k, op in enumerate(ops):
                    view = h.appended([f.id for f in op], own[first + k], view)
                h.seq, h.log_entries, h.view = first + len(ops) - 1, h.log_entries + len(ops), view
                h.last = Op(h.seq, "write", [f.id for f in ops[-1]])
            elif h.seq < first + len(ops) - 1:  # others' operations first, in the store's order
                self._catch_up(h, own)
            timer.lap("apply")
            if h.log_entries >= self.snapshot_every:
                self._checkpoint_logged(h)
                timer.lap("compaction")
            return [Fact(f.id, f.text, f.metadata, f.created_at) for f in facts]

    def _drop_if_unborn(self, h: MemoryHandle) -> None:
        with self._lock:
            if h.seq == 0 and not h.view.n and h.last_snapshot is None:
                self._handles.pop(h.name, None)

    def forget(self, name: str, *fact_ids: str) -> bool:
        """Forget these facts in one step (one downdate, one store transaction): all of them, or, when one is
        not in the memory, none (False)."""
        with self._holding(name) as h:
            fact_ids = tuple(dict.fromkeys(fact_ids))
            if h is None or not fact_ids or not self._current(h) or any(i not in h.row_of for i in fact_ids):
                return False
            return self._forget(h, fact_ids)

    def forget_held(self, name: str, *fact_ids: str) -> list[str]:
        """Forget those of these facts the memory holds now, in one step as ``forget`` does, and return them (in
        the order given, once each): one forgotten meanwhile by another request is left out, not an error (how a
        write's ``supersedes`` forgets what it replaces)."""
        if not fact_ids:
            return []
        with self._holding(name) as h:
            held = [] if h is None or not self._current(h) else [i for i in dict.fromkeys(fact_ids) if i in h.row_of]
            return held if held and self._forget(h, tuple(held)) else []

    def _forget(self, h: MemoryHandle, fact_ids: tuple[str, ...]) -> bool:
        """Forget facts the memory holds, distinct (caller holds ``h.lock``); False: the store had one no more."""
        for _ in range(STALE_TRIES):
            view = h.without(*fact_ids)
            cp = h.checkpoint(view.state, h.seq)  # the state after h.seq, and this forget
            try:
                seq = self.store.forget(h.name, list(fact_ids), cp)  # raises StoreError: nothing changed
            except Stale:  # another server forgot or updated facts since: follow it and compute again
                if self._catch_up(h) is None or any(i not in h.row_of for i in fact_ids):
                    return False
                continue
            if not seq:
                return False
            self.cache.removed(h.name, fact_ids)
            if seq == h.seq + 1:
                self._publish_removal(h, view, Op(seq, "forget", list(fact_ids)), cp.saved_at,
                                      [h.row_of.pop(i) for i in fact_ids])
            else:  # other servers' writes came between: apply them, then this forget, in the store's order
                self._catch_up(h)
                h.unpurged += len(fact_ids)
                self.erasure_pending()
            return True
        raise StoreError(f"memory {h.name!r} kept changing under this forget ({STALE_TRIES} tries): try again")

    def _publish_removal(self, h: MemoryHandle, view: MemoryView, op: Op, saved_at: str, rows: list[int]) -> None:
        """After a forget or a replace is stored with checkpoint ``cp``: drop the dead ``rows`` from the index,
        compact when dead rows pile up, publish ``view``, and mark the store's files for purging."""
        h.seq, h.last, h.log_entries, h.last_snapshot = op.seq, op, 0, saved_at
        for row in rows:
            if (index := h.current_index(view)) is not None and row < index.n_indexed:
                index.remove(row)  # its code goes from the index too, not only from the view
        if view.n - view.live > max(MIN_CAPACITY, COMPACT_DEAD * view.n):
            view = h.compacted(view)
            h.index = None  # rows are renumbered: exact lookups until the indexer has rebuilt it
        h.view = view
        h.unpurged += len(rows)  # old texts and latents stay in the store's files until purged
        self.erasure_pending()

    def replace(self, name: str, fact_id: str, text: str | None, metadata: dict[str, Any] | None,
                latent: Tensor | None) -> Fact | None:
        """Give a fact new ``text`` and/or new ``metadata`` (None: keep the stored one) durably in one store step,
        then publish: readers see the old fact or the new one. None: no such fact.

        The stored fact is read and merged with what changes here, under the memory's lock, so two updates of
        one fact never undo each other (a metadata-only update racing a text update keeps the new text). New
        text comes with ``latent`` (C,), its encoding, made by the caller before the lock (encoding is slow):
        the memory forgets the old latent and writes this one, unless the stored text already equals ``text``
        (then nothing in the memory changes and ``latent`` is unused)."""
        with self._holding(name) as h:
            for _ in range(STALE_TRIES):
                if h is None or not self._current(h) or fact_id not in h.row_of:
                    return None
                (old,) = self.store.facts(name, [fact_id])
                if old is None:
                    return None
                new = Fact(fact_id, old.text if text is None else text,
                           old.metadata if metadata is None else metadata, old.created_at)
                if new.text == old.text:  # the memory holds latents only: nothing in it changes
                    replaced = self.store.replace(name, new, None)
                    self.cache.removed(name, [fact_id])
                    return new if replaced else None
                if latent is None:
                    raise ValueError(f"new text for fact {fact_id!r} comes without its latent")
                latent = latent.to(LATENT_DTYPE).float()  # (C,)
                row, n = h.row_of[fact_id], h.view.n
                view = h.appended([fact_id], latent[None], base=h.without(fact_id))  # nothing published yet
                try:
                    cp = h.checkpoint(view.state, h.seq)  # the state after h.seq, and this replace
                    seq = self.store.replace(name, Fact(fact_id, new.text, new.metadata, old.created_at, latent),
                                             cp)
                    self.cache.removed(name, [fact_id])
                    if not seq:
                        raise LookupError(fact_id)
                except BaseException as e:  # the published view stays: put back what appending changed
                    h.row_of[fact_id] = row
                    del view.ids[n:]
                    if isinstance(e, LookupError):
                        return None
                    if isinstance(e, Stale):  # another server forgot or updated facts first: follow, compute again
                        continue
                    raise
                if seq != h.seq + 1:  # stored after other servers' writes: apply them, then this, in order
                    h.row_of[fact_id] = row
                    del view.ids[n:]
                    self._catch_up(h)
                    h.unpurged += 1
                    self.erasure_pending()
                    return new
                # the new row is indexed later, as writes are
                self._publish_removal(h, view, Op(seq, "replace", [fact_id]), cp.saved_at, [row])
                return new
            raise StoreError(f"memory {name!r} kept changing under this update ({STALE_TRIES} tries): try again")

    def snapshot(self, name: str) -> MemoryInfo | None:
        with self._holding(name) as h:
            if h is None:
                return None
            self._checkpoint(h)
            return h.info()

    def delete(self, name: str) -> bool:
        with self._holding(name) as h:
            if h is None:
                return False
            self.store.delete(name)
            self.cache.removed(name)
            with self._lock:
                del self._handles[name]
            self.erasure_pending()
            return True

    def _checkpoint(self, h: MemoryHandle) -> None:
        """Save the state as of the last operation and drop the log it covers (caller holds ``h.lock``)."""
        cp = h.checkpoint(h.view.state, h.seq)
        try:
            self.store.checkpoint(h.name, cp)
        except Stale as e:  # the store lost operations this server applied (Redis restarted without them)
            log.warning("memory %r: %s; reloading it from the store", h.name, e)
            self._catch_up(h)
            raise StoreError(str(e)) from e
        h.log_entries, h.last_snapshot = 0, cp.saved_at

    def _checkpoint_logged(self, h: MemoryHandle) -> None:
        """Checkpoint the state; the log already holds the writes, so failure is only logged."""
        try:
            self._checkpoint(h)
        except Exception:  # noqa: BLE001 - compaction is an optimisation here, durability came from the log
            log.exception("checkpoint of memory %r failed; its log stays in place", h.name)

    # --- erasure -------------------------------------------------------------

    def erasure_pending(self) -> None:
        """Something was deleted from the store: purge its files ``purge_delay_s`` from the first such mark."""
        with self._lock:
            if self._pending_since is None:
                self._pending_since = time.monotonic()

    def purge(self) -> None:
        """Make every forget and delete so far reach every file the store writes; blocks until it has.

        Coalesced: callers that arrive while a purge runs wait for it, and the first of them runs one more (a
        purge covers what was deleted before it began); the rest return with that one. So a client calling it
        in a loop costs one store purge at a time, however many wait. Reads and writes of memories never wait
        for it on Redis (a background rewrite); on SQLite only for the WAL checkpoint, bounded by the WAL's
        size (SqliteStore keeps it small by checkpointing as it goes)."""
        self.require_restored()
        asked = time.monotonic()
        with self._purge_lock:
            if self._purged_from >= asked:  # one that began after this call was made has done it
                return
            began = time.monotonic()
            with self._lock:
                counts = {h.name: h.unpurged for h in self._handles.values()}
                self._pending_since = None
            try:
                self.store.purge()
            except Exception:
                self.erasure_pending()
                raise
            self._purged_from = began
            with self._lock:
                for h in self._handles.values():
                    h.unpurged -= min(h.unpurged, counts.get(h.name, 0))

    # --- approximate lookup ------------------------------------------------------

    def index_in_background(self, index_above: int, every_s: float = 0.5) -> threading.Thread:
        """Keep an approximate index for every memory with more than ``index_above`` live facts (service.indexer)."""
        return indexer.start(lambda: self.handles() if self.restored else [], self._stop, index_above, every_s)

    def index_now(self, name: str) -> bool:
        """Build the memory's approximate index now, whatever its size (benchmarks); False: no such memory."""
        h = self.get(name)
        if h is not None:
            indexer.step(h, 0)
        return h is not None

    def purge_in_background(self, every_s: float = 0.5) -> threading.Thread:
        """Purge ``purge_delay_s`` after the first forget or delete not yet purged (forgets in a burst share one);
        on a shared store, also one another server made and did not purge (it stopped, say) a second later."""

        def due() -> bool:
            since = self._pending_since
            if since is not None:
                return time.monotonic() - since >= self.purge_delay_s
            if not self.store.shared:
                return False
            shared = self.store.erasure_since()  # another server's, which may have stopped before it purged
            return shared is not None and time.time() - shared >= self.purge_delay_s + 1.0

        def loop() -> None:
            while not self._stop.wait(every_s):
                try:
                    if due():
                        self.purge()
                except Exception as e:  # noqa: BLE001 - retried on the next round
                    log.warning("purge failed, retrying: %s", e)

        t = threading.Thread(target=loop, name="larimar-purge", daemon=True)
        t.start()
        return t

    def close(self) -> None:
        """Stop the background threads, then the store."""
        self._stop.set()
        with self._purge_lock:
            self.store.close()

    # --- restore -------------------------------------------------------------

    def restore(self) -> int:
        """Rebuild every stored memory from its checkpoint, its facts' latents and the log. Returns how many."""
        self.restoring = "reading the store"
        if self._claim is not None:  # raises StoreError (restore is retried) or StoreHeld
            self._claim()
            self._claim = None
        migrated = self.store.migrate(asdict(self.cfg))
        if migrated:
            log.info("migrated %d memories from the old storage layout: %s", len(migrated), ", ".join(migrated))
        if self.store.shared:  # follow the other servers from before anything is read: nothing falls between
            self.position = self.store.tail("", 0)[0]
        names = self.store.names()
        for k, name in enumerate(names):
            self.restoring = f"memory {k + 1} of {len(names)}"  # no name: /readyz answers anyone
            h = self._restore_one(name)
            if h is None:  # deleted meanwhile by another server
                continue
            with self._lock:
                self._handles[name] = h
            if h.log_entries:  # fold the tail now: the next start replays nothing
                self._checkpoint_logged(h)
            log.info("restored memory %r: %d facts", name, h.view.live)
        self.restoring = ""
        self.restored = True
        release_free_memory()
        return len(self._handles)

    def restore_in_background(self, every_s: float = 2.0) -> threading.Thread:
        """Run ``restore`` (retried until the store answers) while the service starts, unready meanwhile."""

        def loop() -> None:
            while not self.restored and not self._stop.is_set():
                try:
                    self.restore()
                except StoreError as e:
                    self.restoring = ""
                    log.warning("restore failed, retrying in %.0f s: %s", every_s, e)
                    self._stop.wait(every_s)

        t = threading.Thread(target=loop, name="larimar-restore", daemon=True)
        t.start()
        return t

    def _restore_one(self, name: str) -> MemoryHandle | None:
        """The memory as the store holds it: its checkpoint, its facts' latents and the log after the checkpoint,
        replayed; None: it is not stored (deleted). On a shared store, facts whose latent was written after the
        load's head are left for ``catch_up`` (their operations follow the head); a logged write whose fact is
        gone by the time its latent is read is ``absent``, and its forget, still to come, subtracts nothing."""
        stored = self.store.load(name)
        if stored.config is None:
            return None
        cfg = MemoryConfig(**stored.config)
        seq, last = 0, None
        if stored.checkpoint is not None:
            tensors, _ = codec.decode(stored.checkpoint.state)
            mem = self.memory_for(cfg, tensors["M_ref"])
            state = MemoryState(M=tensors["M"].to(device=mem.device, dtype=mem.dtype),
                                C_inv=tensors["C_inv"].to(device=mem.device, dtype=torch.float64),
                                updates=int(tensors["updates"][0]))
            seq, last = stored.checkpoint.seq, stored.checkpoint.saved_at
        else:
            mem = self.memory_for(cfg)
            state = mem.empty()
        total = self.store.count(name)
        h = MemoryHandle(name, mem, empty_view(mem, state, capacity_for(total)), seq=seq, last_snapshot=last)
        ids = h.view.ids
        for chunk_ids, Z in self.store.latents(name, upto=stored.head):  # in bulk, in write order, into the buffer
            if len(ids) + len(chunk_ids) > h.view.buffer.shape[0]:  # more were written meanwhile: grow
                grown = empty_view(mem, state, capacity_for(len(ids) + len(chunk_ids)))
                grown.buffer[: len(ids)] = h.view.buffer[: len(ids)]
                h.view = MemoryView(state, 0, grown.buffer, grown.dead_buffer, ids, 0)
            h.view.buffer[len(ids) : len(ids) + len(chunk_ids)] = Z.to(h.view.buffer)
            ids += chunk_ids
            if len(ids) % 100_000 < len(chunk_ids):
                log.info("memory %r: %d of %d facts read", name, len(ids), total)
        h.row_of = {i: r for r, i in enumerate(ids)}
        h.view = MemoryView(state, len(ids), h.view.buffer, h.view.dead_buffer, ids, len(ids))
        folded = stored.checkpoint.folded if stored.checkpoint else 0
        for op in stored.log:  # the writes since the checkpoint, replayed as they were made
            if op.seq <= seq:
                continue
            if op.seq == folded:
                pass  # a forget or replace the checkpoint includes already
            elif op.kind == "write":
                rows = [h.row_of[i] for i in op.ids if i in h.row_of]
                h.absent.update(i for i in op.ids if i not in h.row_of)
                if rows:
                    state = mem.update(state, h.view.buffer[rows], +1.0, inplace=True)
            elif op.kind != "meta":  # forgets and replaces save the checkpoint they log: none follows it
                raise StoreError(f"memory {name!r}: a {op.kind} (operation {op.seq}) after its checkpoint")
            seq, h.last = op.seq, op
            h.log_entries += 1
        h.seq = seq
        h.view = MemoryView(state, h.view.n, h.view.buffer, h.view.dead_buffer, h.view.ids, h.view.live)
        return h
