"""The storage contract: per memory, a repository of facts, a state checkpoint and an ordered operation log.

- A *fact* (id, text, metadata, created time, latent) is stored and deleted on its own record.
- A *document* record (JSON: id, title, status, piece count, ...; its text only while it is being ingested)
  names pieces that are facts; it is kept and dropped on its own.
- The *checkpoint* is the episodic state (M, C^-1, the sequence number it covers): O(K^2) bytes, whatever
  the number of facts.
- The *log* holds, in sequence order, the operations (``Op``) since the checkpoint, each naming its facts by
  id, so the state after them is rebuilt by replaying exactly the same updates.

Sequence numbers are the store's: each change is given the next one of its memory, inside the change itself
(``write`` returns it), never by a process, so servers sharing a store (replicas, on Redis) agree on one
order. The *head* is a memory's last sequence number; it survives the memory's delete, so a server holding
an older copy of a name sees it moved on.

A forget deletes the fact and saves the checkpoint taken after it in one step: a server that starts later
begins from that checkpoint and never needs the forgotten latent, so no copy of it is kept. The forget is
logged as well, naming the ids, so servers that hold the state already subtract the latents they hold. The
server computes that state from the operations it has applied; others' writes logged meanwhile do not
matter (updates commute: least squares does not depend on their order), so the checkpoint covers those up
to ``seq`` and the forget ``folded`` in, and a restart replays the writes between and skips the forget. An
earlier forget or replace it has not applied does matter (the state would bring that latent back): then the
forget raises ``Stale`` and changes nothing; the server applies what it missed and tries again. Likewise no
checkpoint from before the last forget is saved.

Every method returns only once its change is durable (SQLite with synchronous=FULL; Redis with
``appendfsync always``), because an acknowledged write is never lost, and each change is atomic. What a
delete leaves in the files behind the store (SQLite's WAL, Redis's AOF and RDB files) is gone after
``purge``; until then erasure is pending.

Sharing: a ``shared`` store (Redis) is written by any number of servers, each following the others'
operations (``tail``, ``changes``). The embedded store is not: ``claim`` makes one process its writer until
``close`` and a second claim is refused with ``StoreHeld`` naming the holder (the lock goes with the process,
so a SIGKILL leaves nothing stale); on a shared store ``claim`` refuses no one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import Tensor


class StoreError(RuntimeError):
    """The store could not be reached or refused the operation."""


class Stale(RuntimeError):  # noqa: N818 - a state, like StoreHeld
    """The store's head is not the sequence number this change follows: another server changed the memory since
    (apply ``changes`` and try again), or the store lost operations this server had applied (reload)."""

    def __init__(self, message: str, head: int) -> None:
        super().__init__(message)
        self.head = head


class StoreHeld(RuntimeError):
    """Another process is the store's one writer (``Store.claim``); the message names it. Not a StoreError: that
    one means "unreachable, try again", while this one stays until the holder stops."""


@dataclass(frozen=True)
class Fact:
    id: str
    text: str
    metadata: dict[str, Any]
    created_at: str
    latent: Tensor | None = None  # (C,) float32; left out where a read does not need it

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "metadata": self.metadata, "created_at": self.created_at}


@dataclass(frozen=True)
class Checkpoint:
    seq: int  # the last operation it includes (bar ``folded``'s predecessors: see below)
    state: bytes  # the episodic state as codec bytes (M, C^-1, M_ref, updates)
    saved_at: str
    folded: int = 0  # a later forget or replace it includes too (others' writes came between); 0: none


OP_KINDS = ("write", "forget", "replace", "meta")  # meta: text or metadata changed, the latent did not


@dataclass(frozen=True)
class Op:
    """One logged operation: ``kind`` of the facts ``ids``, as the memory's operation ``seq``."""

    seq: int
    kind: str
    ids: list[str]


@dataclass(frozen=True)
class Stored:
    """What a store holds for one memory, bar the facts themselves (read in bulk with ``latents``)."""

    config: dict[str, Any] | None  # the memory's MemoryConfig, fixed at its first write
    checkpoint: Checkpoint | None
    log: list[Op] = field(default_factory=list)  # the operations after the checkpoint, in order
    head: int = 0  # the memory's last operation


class Store(Protocol):
    shared: bool  # several servers may write it (each then follows the others: ``tail``)

    def ping(self) -> bool: ...

    def claim(self, owner: str) -> None:
        """Make this process the store's one writer until ``close`` (``owner`` names it: host, pid, since when).
        StoreHeld (naming the holder): another process holds it; StoreError: the store is out of reach."""
        ...

    def names(self) -> list[str]:
        """Every memory with anything stored."""
        ...

    # --- changes: atomic and durable on return --------------------------------

    def write(self, name: str, facts: list[Fact], config: dict[str, Any], entry_size: int | None = None,
              create: bool = True) -> int:
        """Add the facts and log the write as the memory's next operation, or, with ``entry_size``, as its next
        operations of at most that many facts each (``entries``; an import: one step however large, each
        operation small enough to replay); ``config`` is kept at the memory's first write. Returns the first
        operation's sequence number. DuplicateFact (nothing written): one of the ids is taken. Without ``create``,
        NoMemory (nothing written) when the memory is not stored (deleted meanwhile): the check and the write are one
        step, so a delete is never undone by a write that began before it."""
        ...

    def forget(self, name: str, fact_ids: list[str], checkpoint: Checkpoint) -> int:
        """Delete the facts, log the forget as the next operation and save ``checkpoint`` (the state after the
        operations up to ``checkpoint.seq`` and this forget) in one step; returns the forget's sequence number.
        0 (and nothing changed): one of them is not there. Stale: a forget or replace came after
        ``checkpoint.seq``, or the store is behind it."""
        ...

    def replace(self, name: str, fact: Fact, checkpoint: Checkpoint | None) -> int:
        """Overwrite the fact's text and metadata, and its latent unless ``fact.latent`` is None, in one step: the
        old fact or the new one, never both or neither. Keeps its place in the write order and its created_at.
        A new latent comes with ``checkpoint``, logged and saved as ``forget`` does (Stale alike); without one
        the change is logged as ``meta`` where the store is shared. Returns its sequence number where it is
        logged (else the head); 0: no such fact."""
        ...

    def checkpoint(self, name: str, checkpoint: Checkpoint) -> None:
        """Save the state and drop the log it covers (compaction; costs O(K^2), not O(facts)). An older one than
        the saved checkpoint is ignored; Stale: it is past the head (the store lost operations)."""
        ...

    def delete(self, name: str) -> None:
        """The memory and everything stored for it."""
        ...

    # --- reads ------------------------------------------------------------------

    def load(self, name: str) -> Stored:
        """Config, checkpoint, the log after it and the head, read at one instant."""
        ...

    def latents(self, name: str, chunk: int = 8192, upto: int | None = None) -> Iterator[tuple[list[str], Tensor]]:
        """Every fact's id and latent, in the order they were written, ``chunk`` at a time: (ids, (n, C)). With
        ``upto``, a fact whose latent was written by a later operation is left out (a shared store changes
        while it is read; an unshared one cannot)."""
        ...

    def latents_of(self, name: str, ids: list[str]) -> list[Tensor | None]:
        """The latents (C,) of these facts as stored now, None where there is no such fact."""
        ...

    def changes(self, name: str, since: int) -> tuple[int, list[Op]]:
        """(head, the logged operations from ``since`` on, in order): ``since`` itself too, so a caller that
        applied it can tell it is still the same operation (a store restored from an older copy numbers new
        ones again). Operations missing after ``since`` (trimmed past, the memory deleted) or a different one at
        ``since`` mean the caller reloads the memory."""
        ...

    def tail(self, position: str, block_s: float) -> tuple[str, list[tuple[str, float]]]:
        """Shared stores: the memories other servers changed since ``position`` ("" = from now on), each with
        when (Unix time, the store's clock) it first changed, waiting up to ``block_s`` for one, and the position
        to follow on from."""
        ...

    def heads(self, names: list[str]) -> list[int]:
        """Each memory's head (0: none)."""
        ...

    def facts(self, name: str, ids: list[str]) -> list[Fact | None]:
        """Text and metadata (no latent) of the given facts, None where there is no such fact."""
        ...

    def count(self, name: str) -> int:
        """How many facts the memory holds."""
        ...

    def page(self, name: str, limit: int, offset: int) -> list[Fact]:
        """Facts in the order they were written, ``limit`` from ``offset`` on."""
        ...

    def migrate(self, default_config: dict[str, Any]) -> list[str]:
        """Memories found in the layout before per-fact records, moved into this one (their names).
        ``default_config`` is the configuration of one that never had a snapshot."""
        ...

    # --- documents: a record each (their pieces are facts, written and forgotten as facts are) ---------

    def put_document(self, name: str, record: dict[str, Any]) -> None:
        """Create or overwrite the record ``record["id"]`` of memory ``name`` (durable on return)."""
        ...

    def documents(self, name: str) -> list[dict[str, Any]]:
        """The memory's document records, oldest first."""
        ...

    def document(self, name: str, doc_id: str) -> dict[str, Any] | None: ...

    def delete_document(self, name: str, doc_id: str) -> bool:
        """Drop the record (its pieces are forgotten before, as facts). False: no such record."""
        ...

    def unfinished_documents(self) -> list[tuple[str, dict[str, Any]]]:
        """(memory, record) of every document whose status is ``ingesting`` or ``deleting``: work a restart
        resumes."""
        ...

    # --- erasure ----------------------------------------------------------------

    def purge(self) -> None:
        """Make every delete so far reach every file the store writes (blocking until it has)."""
        ...

    def erasure_since(self) -> float | None:
        """Shared stores: when (Unix time) the oldest delete not yet purged happened, whichever server made it
        (so another purges it if that one stops first); None: none, or an unshared store (its one server
        knows)."""
        ...

    def close(self) -> None:
        """Release the connection, and the claim where this process made one."""
        ...


def entries(facts: list[Fact], entry_size: int | None) -> list[list[Fact]]:
    """The operations a write of ``facts`` is logged as (``Store.write``): one, or runs of ``entry_size``."""
    size = entry_size or max(1, len(facts))
    return [facts[i : i + size] for i in range(0, len(facts), size)] or [[]]
