"""Admission control for the LLM: a bounded number of generations at once, a bounded queue behind them, and
an at-once refusal past both.

Without it every request that reaches the LLM runs at once (40 threads on 2 cores answered 48 queries in up to
45 s and starved the health probes). With it, ``concurrency`` requests run, ``queue`` more wait at most
``wait_s`` for a slot, and any other is refused at once with ``Busy`` (503 with ``Retry-After``): a client
learns within milliseconds that the service is full instead of holding a connection for a minute.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from service.errors import Busy


def default_concurrency(device: str, cores: int) -> int:
    """Generations at once that fit the machine: a GPU overlaps a few; on a CPU every generation already uses
    all cores (torch's threads), so more at once only share them."""
    return 4 if device.startswith("cuda") else max(1, cores // 4)


class Admission:
    def __init__(self, concurrency: int, queue: int, wait_s: float) -> None:
        self.concurrency, self.queue, self.wait_s = concurrency, queue, wait_s
        self._slots = threading.BoundedSemaphore(concurrency)
        self._lock = threading.Lock()
        self._inside = 0  # running plus waiting
        self.on_release: Callable[[], None] | None = None

    @property
    def inside(self) -> int:
        """Requests running or waiting now."""
        return self._inside

    @contextmanager
    def admitted(self) -> Iterator[None]:
        """Count the block as running or waiting; ``Busy`` at once when those are full. What runs inside takes
        a slot itself, through ``slot`` or, for generation, the batcher (service/batching.py)."""
        with self._lock:
            if self._inside >= self.concurrency + self.queue:
                raise Busy(f"{self._inside} requests are running or waiting for the LLM; retry later",
                           self.retry_after())
            self._inside += 1
        try:
            yield
        finally:
            with self._lock:
                self._inside -= 1

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Be admitted and hold one of the ``concurrency`` slots for the block; ``Busy`` when running and
        waiting are full, or when no slot came free within ``wait_s``."""
        with self.admitted():
            if not self._slots.acquire(timeout=self.wait_s):
                raise Busy(f"no LLM slot came free within {self.wait_s:g} s; retry later", self.retry_after())
            try:
                yield
            finally:
                self.release()

    def try_acquire(self) -> bool:
        """Take a free slot now, if there is one (a batch's leader; ``release`` it after)."""
        return self._slots.acquire(blocking=False)

    def release(self) -> None:
        """Give a slot back, and tell whoever waits for one without blocking on it (``on_release``: the
        batcher's followers, who would otherwise wait for their timeout after a score's slot came free)."""
        self._slots.release()
        if self.on_release is not None:
            self.on_release()

    def retry_after(self) -> int:
        """Seconds a refused client should wait: about one queue's worth of turns, at least one."""
        return max(1, math.ceil(self.wait_s * self._inside / max(1, self.concurrency + self.queue)))
