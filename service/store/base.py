"""The storage contract: per memory, one snapshot plus an append-only log.

Every method returns only once the data is durable (fsync for files, an
append-only Redis with appendfsync always), because an acknowledged write is
never lost.
"""

from __future__ import annotations

from typing import Protocol

from service.store.codec import Stored


class StoreError(RuntimeError):
    """The store could not be reached or refused the operation."""


class Store(Protocol):
    def ping(self) -> bool: ...

    def names(self) -> list[str]:
        """Every memory that has a snapshot or a log."""
        ...

    def load(self, name: str) -> Stored: ...

    def append(self, name: str, entry: bytes) -> None:
        """Add one entry to the memory's log."""
        ...

    def replace(self, name: str, snapshot: bytes) -> None:
        """Make ``snapshot`` the memory's whole state, dropping its log, as one atomic step."""
        ...

    def delete(self, name: str) -> None: ...

    def close(self) -> None: ...
