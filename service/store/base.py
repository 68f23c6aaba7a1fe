"""The storage contract: per memory, a repository of facts, a state checkpoint and an ordered operation log.

- A *fact* (id, text, metadata, created time, latent) is stored and deleted on its own record.
- A *document* record (JSON: id, title, status, piece count, ...; its text only while it is being ingested)
  names pieces that are facts; it is kept and dropped on its own.
- The *checkpoint* is the episodic state (M, C^-1, the sequence number it covers): O(K^2) bytes, whatever
  the number of facts.
- The *log* holds, in sequence order, the writes since the checkpoint, each naming its facts by id, so the
  state after them is rebuilt by replaying exactly the same updates (bit for bit).

A forget deletes the fact and saves the checkpoint taken after it, dropping the log it covers, in one step:
the forgotten latent is never needed again, so no copy of it is kept to replay. Hence the log after a
checkpoint only ever holds writes.

Every method returns only once its change is durable (SQLite with synchronous=FULL; Redis with
``appendfsync always``), because an acknowledged write is never lost, and each change is atomic. What a
delete leaves in the files behind the store (SQLite's WAL, Redis's AOF and RDB files) is gone after
``purge``; until then erasure is pending.

One writer: a server keeps the state in memory and saves it as the checkpoint, dropping the log, so two
servers on one store would erase each other's acknowledged writes. ``claim`` makes this process the store's
one writer until ``close``; a second claim, from any process, is refused with ``StoreHeld`` naming the
holder. A holder that dies without closing (SIGKILL) does not block the next: SQLite's lock goes with the
process, a Redis lease lapses within ``redis_store.LEASE_TTL_S``. A store nobody claims (tools, tests reading
it) is not stopped: the claim keeps servers apart, not every connection.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import Tensor


class StoreError(RuntimeError):
    """The store could not be reached or refused the operation."""


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
    seq: int  # the last operation it includes
    state: bytes  # the episodic state as codec bytes (M, C^-1, M_ref, updates)
    saved_at: str


@dataclass(frozen=True)
class Stored:
    """What a store holds for one memory, bar the facts themselves (read in bulk with ``latents``)."""

    config: dict[str, Any] | None  # the memory's MemoryConfig, fixed at its first write
    checkpoint: Checkpoint | None
    log: list[tuple[int, list[str]]] = field(default_factory=list)  # (seq, fact ids) of each write since


class Store(Protocol):
    def ping(self) -> bool: ...

    def claim(self, owner: str) -> None:
        """Make this process the store's one writer until ``close`` (``owner`` names it: host, pid, since when).
        StoreHeld (naming the holder): another process holds it; StoreError: the store is out of reach."""
        ...

    def names(self) -> list[str]:
        """Every memory with anything stored."""
        ...

    # --- changes: atomic and durable on return --------------------------------

    def write(self, name: str, seq: int, facts: list[Fact], config: dict[str, Any], entry_size: int | None = None
              ) -> None:
        """Add the facts and log the write as operation ``seq``, or, with ``entry_size``, as operations ``seq``,
        ``seq + 1``, ... of at most that many facts each (``entries``; an import: one step however large, each
        operation small enough to replay); ``config`` is kept at the memory's first write."""
        ...

    def forget(self, name: str, fact_ids: list[str], checkpoint: Checkpoint) -> bool:
        """Delete the facts and make ``checkpoint`` the state, dropping the log it covers, in one step. False
        (and nothing changed): one of them is not there."""
        ...

    def replace(self, name: str, fact: Fact, checkpoint: Checkpoint | None) -> bool:
        """Overwrite the fact's text and metadata, and its latent unless ``fact.latent`` is None, and make
        ``checkpoint`` (when given) the state, in one step: the old fact or the new one, never both or neither.
        Keeps its place in the write order and its created_at. False: no such fact."""
        ...

    def checkpoint(self, name: str, checkpoint: Checkpoint) -> None:
        """Save the state and drop the log it covers (compaction; costs O(K^2), not O(facts))."""
        ...

    def delete(self, name: str) -> None:
        """The memory and everything stored for it."""
        ...

    # --- reads ------------------------------------------------------------------

    def load(self, name: str) -> Stored: ...

    def latents(self, name: str, chunk: int = 8192) -> Iterator[tuple[list[str], Tensor]]:
        """Every fact's id and latent, in the order they were written, ``chunk`` at a time: (ids, (n, C))."""
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

    def close(self) -> None:
        """Release the connection, and the claim where this process made one."""
        ...


def entries(facts: list[Fact], entry_size: int | None) -> list[list[Fact]]:
    """The operations a write of ``facts`` is logged as (``Store.write``): one, or runs of ``entry_size``."""
    size = entry_size or max(1, len(facts))
    return [facts[i : i + size] for i in range(0, len(facts), size)] or [[]]
