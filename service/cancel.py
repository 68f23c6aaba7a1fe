"""Stopping the generation of a client that has gone.

A generation holds one of the LLM's few admission slots for seconds; a client that times out or closes the
connection would otherwise keep that slot until the last token, while the clients still waiting are refused.
Here a route learns that its client has gone and sets the request's ``gone`` event; the batcher then drops
the request if its answer has not begun, and stops a batch whose clients have all gone at the next token
(``batching.Watching``: both generation paths hand every token to a streamer). Nothing is written either way
(generation never writes).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

import anyio
from fastapi import Request
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

T = TypeVar("T")
POLL_S = 0.1  # how often a waiting route asks the server whether its client is still connected


class ClientGone(Exception):
    """The client closed the connection: its generation was stopped (answered 499 to no one, and counted)."""

    @classmethod
    def everyone(cls) -> ClientGone:
        """What a batch raises once every client in it has gone."""
        return cls("every client of this generation closed its connection; it was stopped")


async def _watch(request: Request, gone: threading.Event) -> None:
    while not await request.is_disconnected():
        await anyio.sleep(POLL_S)
    gone.set()


async def while_connected(request: Request, gone: threading.Event, work: Callable[[], T]) -> T:
    """``work()`` on a worker thread; ``gone`` is set if the client disconnects meanwhile (its generation stops).
    What ``work`` raises is raised as it is (not inside the task group's exception group)."""
    error: Exception | None = None
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_watch, request, gone)
        try:
            result = await run_in_threadpool(work)
        except Exception as e:  # noqa: BLE001 - re-raised below, outside the group
            error = e
        finally:
            tasks.cancel_scope.cancel()
    if error is not None:
        raise error
    return result


async def relayed_while_connected(request: Request, events: Iterator[str], gone: threading.Event
                                  ) -> AsyncIterator[str]:
    """A streamed answer's events, each read on a worker thread. A client found gone between two events, or
    the server closing this generator (a disconnect seen while sending, cancellation), stops the generation
    behind them. No task is started here: a generator may be closed from another task than the one that ran it.
    """
    try:
        async for event in iterate_in_threadpool(events):
            if await request.is_disconnected():
                break
            yield event
    finally:
        gone.set()
