"""Replicas: servers sharing one store (Redis) follow each other's operations, and clients read their writes.

The store's operation log is the one truth (``service.store.base``): every server applies every operation,
its own and the others', in sequence order, so M and C^-1 are the same everywhere (to round-off). Here:

- ``follow``: a thread per server blocks on the store's change stream (``Store.tail``, XREAD BLOCK: no sleep
  loop) and catches up each memory named there (``MemoryRegistry.catch_up``); every ``SWEEP_S`` it also
  compares every memory's head with its own (``sweep``), which covers what the stream cannot tell (Redis
  restarted, this server cut off for a while).
- Consistency a client gets: a write or forget is acknowledged once the store holds it and the server that
  took it applied it, so that server reads it at once (read-your-writes there). Every response about a memory
  carries ``Larimar-Seq``: the operation that server's copy of the memory is at. A client that sends it back
  on a request to any server (``Larimar-Seq: N``) is answered from a copy at N or later: that server catches
  up from the store first, or answers 503 with Retry-After if the store does not hold N yet.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import InvalidInput, Lagging
from service.schemas import MEMORY_NAME
from service.store import StoreError

if TYPE_CHECKING:
    from service.memories import MemoryRegistry

log = logging.getLogger(__name__)
SEQ_HEADER = "Larimar-Seq"
BLOCK_S = 1.0  # one wait on the change stream (the thread sees its stop event this often)
SWEEP_S = 5.0  # every memory's head compared with this server's copy this often
MEMORY_PATH = re.compile(rf"^/v1/memories/({MEMORY_NAME.strip('^$')})(?:/|$)")


def follow(registry: MemoryRegistry, stop: threading.Event, observe: Callable[[float], None] | None = None
           ) -> threading.Thread:
    """Start the thread that applies the other servers' operations as the store logs them; ``observe`` gets,
    per memory caught up, the seconds from the store logging another server's change to this server applying
    it (or finding it applied already: a write here may have applied it first)."""

    def loop() -> None:
        position, swept = "", time.monotonic()
        while not stop.is_set():
            if not registry.restored:  # restore takes the position to follow from before it reads anything
                stop.wait(0.1)
                continue
            try:
                position = position or registry.position or registry.store.tail("", 0)[0]
                position, changed = registry.store.tail(position, BLOCK_S)
                for name, logged_at in changed:
                    registry.catch_up(name)
                    if observe is not None:
                        observe(max(0.0, time.time() - logged_at))
                if time.monotonic() - swept >= SWEEP_S:
                    registry.sweep()
                    swept = time.monotonic()
            except StoreError as e:
                if stop.is_set():
                    return
                log.warning("following the store's changes: %s; again in 1 s, then every memory is compared", e)
                swept = 0.0  # sweep once it answers: what the stream said meanwhile may be lost
                stop.wait(1.0)
            except Exception:  # noqa: BLE001 - the thread must outlive one bad memory; logged with its trace
                log.exception("following the store's changes failed; again in 1 s")
                stop.wait(1.0)

    t = threading.Thread(target=loop, name="larimar-follow", daemon=True)
    t.start()
    return t


def reach(registry: MemoryRegistry, memory: str, asked: str | None) -> None:
    """Make sure a request that names ``Larimar-Seq: N`` reads memory ``memory`` at operation N or later."""
    if asked is None:
        return
    if not (asked.strip().isascii() and asked.strip().isdigit()) or len(asked.strip()) > 18:  # not "²": int() fails
        raise InvalidInput(f"{SEQ_HEADER} must be an operation number (a non-negative integer), not {asked[:40]!r}")
    want = int(asked)
    if (registry.applied(memory) or 0) >= want:
        return
    now = registry.catch_up(memory) or 0
    if now < want:
        raise Lagging(f"memory {memory!r} is at operation {now} in the store, not yet {want}: retry shortly", 1)


class SeqHeader:
    """Pure ASGI: every response about memory ``m`` (``/v1/memories/m...``) says, in ``Larimar-Seq``, the
    operation this server's copy of ``m`` is at (after the request: a write's own included)."""

    def __init__(self, app: ASGIApp, registry: Callable[[], MemoryRegistry | None]) -> None:
        self.app, self.registry = app, registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = MEMORY_PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None:
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start" and (registry := self.registry()) is not None:
                seq = registry.applied(match.group(1))
                if seq is not None:
                    message["headers"] = [*message.get("headers", []), (SEQ_HEADER.lower().encode(), b"%d" % seq)]
            await send(message)

        await self.app(scope, receive, sending)
