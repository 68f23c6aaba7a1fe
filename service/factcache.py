"""Facts' texts and metadata kept in memory, most recently used first, so queries go on answering while the
store is out of reach (a Redis restart, a network cut): the memory itself (latents, M, C^-1) is always in
memory, and a query needs only the texts of the few facts it recalls. Writes and forgets still need the store
(503 without it): nothing here is ever the only copy of a fact.

A fact leaves the cache when it is forgotten, replaced or its memory deleted. A read that fetched a fact from
the store just before a forget must not put it back after: each memory has an epoch, which every removal
moves on, and a fetched fact is kept only if its memory's epoch is still the one seen before the fetch.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

from service.store import Fact


class FactCache:
    def __init__(self, size: int) -> None:
        self.size = size
        self._facts: OrderedDict[tuple[str, str], Fact] = OrderedDict()
        self._epochs: dict[str, int] = {}
        self._lock = threading.Lock()

    def epoch(self, memory: str) -> int:
        """Read before fetching from the store; hand it to ``fetched``."""
        with self._lock:
            return self._epochs.get(memory, 0)

    def get(self, memory: str, ids: list[str]) -> dict[str, Fact]:
        with self._lock:
            found = {i: f for i in ids if (f := self._facts.get((memory, i))) is not None}
            for i in found:
                self._facts.move_to_end((memory, i))
            return found

    def fetched(self, memory: str, facts: Iterable[Fact], epoch: int) -> None:
        """Keep facts read from the store, unless a removal from this memory happened since ``epoch``."""
        with self._lock:
            if self._epochs.get(memory, 0) == epoch:
                self._keep(memory, facts)

    def written(self, memory: str, facts: Iterable[Fact]) -> None:
        """Keep facts just stored (under the memory's lock, so no removal can be missed)."""
        with self._lock:
            self._keep(memory, facts)

    def removed(self, memory: str, ids: Iterable[str] | None = None) -> None:
        """Facts forgotten or replaced (``ids``), or the whole memory deleted (None)."""
        with self._lock:
            self._epochs[memory] = self._epochs.get(memory, 0) + 1
            gone = [k for k in self._facts if k[0] == memory] if ids is None else [(memory, i) for i in ids]
            for k in gone:
                self._facts.pop(k, None)

    def _keep(self, memory: str, facts: Iterable[Fact]) -> None:
        if self.size <= 0:
            return
        for f in facts:
            self._facts[(memory, f.id)] = Fact(f.id, f.text, f.metadata, f.created_at)  # the latent is elsewhere
            self._facts.move_to_end((memory, f.id))
        while len(self._facts) > self.size:
            self._facts.popitem(last=False)
