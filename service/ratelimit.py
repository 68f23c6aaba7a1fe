"""Per-key rate limits: a token bucket for each API key, so that no one client can flood the service.

Each key (by its digest) has a bucket of ``LARIMAR_RATE_BURST`` tokens that refills at ``LARIMAR_RATE_PER_S``
tokens a second; every /v1 call and every /mcp request takes one before any work, and a call that finds the
bucket empty gets 429 with ``Retry-After`` (the whole seconds until a token is back, at least 1). Calls that
name no valid key (no keys configured, or a wrong or missing key: those get 401 next) take from a bucket of
their client address (``request.client.host``: uvicorn puts a trusted proxy's ``X-Forwarded-For`` there), so
an open local service is bounded too. The health probes (/healthz, /readyz, /metrics) never take a token.

Buckets live in this process's memory: at most ``MAX_BUCKETS``, the least recently used evicted past that,
so random or spoofed identities cannot grow memory without bound (a bucket left idle for ``burst / rate``
seconds is full again and loses nothing by being dropped). Settings of 0 turn limiting off.

The defaults (100 a second, bursts of 300) sit above what one sequential client reaches (fact writes one by one
over HTTP: ~70/s on 2 cores; the test suite's busiest client: ~45/s for 8 s, peaks of ~58 in a second), so only
many requests in flight at once meet them; generation has its own bound besides (service/admission.py).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from starlette.datastructures import State

from service import auth
from service.auth import ApiKey, Role
from service.settings import Settings

MAX_BUCKETS = 10_000


class RateLimited(RuntimeError):
    """A call past its bucket: 429 with ``Retry-After``, nothing done."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # whole seconds, at least 1


class TokenBucket:
    """Token buckets by identity, thread-safe: ``take`` spends one token of an identity's bucket."""

    def __init__(self, rate: float, burst: int, max_buckets: int = MAX_BUCKETS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1 or max_buckets < 1:
            raise ValueError("rate must be > 0, burst and max_buckets >= 1")
        self.rate, self.burst, self.max_buckets, self.clock = rate, burst, max_buckets, clock
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # identity -> (tokens, when), LRU

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, identity: str) -> float:
        """Spend one token of ``identity``'s bucket: 0.0 when there was one, else the seconds until one is back
        (nothing is spent: a refused call costs its client nothing more)."""
        with self._lock:
            now = self.clock()  # read under the lock: a bucket's times never go backwards
            held = self._buckets.pop(identity, None)
            tokens = float(self.burst) if held is None else min(self.burst, held[0] + (now - held[1]) * self.rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
            self._buckets[identity] = (tokens if wait else tokens - 1, now)  # most recently used last
            while len(self._buckets) > self.max_buckets:
                self._buckets.popitem(last=False)
        return wait


class RateLimiter:
    """The service's limit (``LARIMAR_RATE_PER_S``, ``LARIMAR_RATE_BURST``) over keys and client addresses."""

    def __init__(self, rate: float, burst: int, max_buckets: int = MAX_BUCKETS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.buckets = TokenBucket(rate, burst, max_buckets, clock)

    def check(self, key: ApiKey | None, client: str | None) -> None:
        """Take a token for a call by ``key`` (None: a call naming no valid key, by its client address), or
        raise ``RateLimited`` naming the limit and when to retry."""
        if key is not None:
            identity, who = "key:" + key.digest.hex(), f"API key {key.name}"
        else:
            identity, who = f"client:{client or 'unknown'}", f"client {client or 'unknown'}"
        wait = self.buckets.take(identity)
        if wait > 0:
            b = self.buckets
            raise RateLimited(f"rate limit of {who} reached: {b.rate:g} requests per second, bursts of {b.burst} "
                              "(LARIMAR_RATE_PER_S, LARIMAR_RATE_BURST); retry later", max(1, math.ceil(wait)))


def from_settings(settings: Settings) -> RateLimiter | None:
    """The app's limiter (None: limiting is off); ``create_app`` keeps it as ``state.rate_limiter``."""
    on = settings.rate_per_s > 0 and settings.rate_burst > 0
    return RateLimiter(settings.rate_per_s, settings.rate_burst) if on else None


def admit(state: State, authorization: str | None, client: str | None, memory: str | None, need: Role
          ) -> ApiKey | None:
    """The gate of every /v1 and /mcp request, before any work: a token of the caller's bucket (``RateLimited``;
    by key, or by client address for a call naming no valid key), then the key check (``auth.Unauthenticated``,
    ``auth.Forbidden``). The key is looked up once for both. Returns it (None: no keys configured)."""
    keys: list[ApiKey] = state.api_keys
    key = auth.from_header(authorization, keys) if keys else None
    if state.rate_limiter is not None:
        state.rate_limiter.check(key, client)
    return auth.permit(keys, key, memory, need)
