"""Liveness, readiness and Prometheus metrics (no API key: probes and scrapers call these)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health)
def readyz(request: Request, response: Response) -> Health:
    editor = getattr(request.app.state, "editor", None)
    checks = {"models": editor is not None, "store": editor is not None and editor.ready()}
    if not all(checks.values()):
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        restoring = editor.restoring() if editor is not None else ""
        return Health(status="restoring" if restoring else "unavailable", checks=checks, detail=restoring or None)
    return Health(status="ready", checks=checks)


@router.get("/metrics")
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
