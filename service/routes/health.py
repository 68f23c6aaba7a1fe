"""Liveness, readiness and Prometheus metrics (no API key: probes and scrapers call these).

The probes never wait behind requests: ``/healthz`` runs on the event loop, and ``/readyz`` asks the store on
a thread of its own limiter, not of the pool every sync route shares (48 queries at once once kept
``/healthz`` from answering within 30 s).
"""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, Query, Request, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.schemas import Health

router = APIRouter(tags=["health"])
PROBE_THREADS = 2  # threads for readiness checks, apart from the routes' pool


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health)
async def readyz(request: Request, response: Response,
                 writes: Annotated[bool, Query(description="ready only if writes can be taken too")] = False,
                 ) -> Health:
    """200 ``ready``; 200 ``degraded`` when the store is out of reach but the memories are restored (queries
    answer from memory, writes and forgets get 503), or 503 then with ``?writes=true``; 503 while restoring or
    before the models are loaded. A load balancer that sends reads and writes alike keeps a degraded replica
    for its reads: taking every replica out when the store blinks would stop the queries too."""
    editor = getattr(request.app.state, "editor", None)
    if getattr(request.app.state, "probes", None) is None:  # made on the app's own event loop
        request.app.state.probes = anyio.CapacityLimiter(PROBE_THREADS)
    restored, store = (False, False) if editor is None else \
        await anyio.to_thread.run_sync(editor.readiness, limiter=request.app.state.probes)
    checks = {"models": editor is not None, "store": store, "reads": restored, "writes": store}
    if not restored:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        restoring = editor.restoring() if editor is not None else ""
        return Health(status="restoring" if restoring else "unavailable", checks=checks, detail=restoring or None)
    if not store:
        if writes:
            response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return Health(status="degraded", checks=checks, detail="the store is out of reach: queries answer from "
                      "memory, writes and forgets get 503 until it is back")
    return Health(status="ready", checks=checks)


@router.get("/metrics")
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
