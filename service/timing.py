"""Wall time per named step of a request, reported back to the caller (responses, Server-Timing, benchmarks)."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def utc_now() -> str:
    """The time as stored and reported: ISO 8601 in UTC to the millisecond, with a Z."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Timer:
    """``lap(name)`` records the milliseconds since the previous lap (or the start) under ``name``."""

    def __init__(self) -> None:
        self.marks: dict[str, float] = {}
        self._start = self._t = time.perf_counter()

    def lap(self, name: str, at: float | None = None) -> None:
        """``at``: a ``time.perf_counter()`` reading taken earlier, where the lap ended (default: now)."""
        t = time.perf_counter() if at is None else at
        self.marks[name] = round(self.marks.get(name, 0.0) + (t - self._t) * 1e3, 3)
        self._t = t

    def total(self) -> dict[str, float]:
        """The marks plus ``total``, the time since the start."""
        return self.marks | {"total": round((time.perf_counter() - self._start) * 1e3, 3)}


def server_timing(marks: dict[str, float]) -> str:
    """The marks as an HTTP ``Server-Timing`` header value (browsers' dev tools and clients can read it)."""
    return ", ".join(f"{name};dur={ms}" for name, ms in marks.items())
