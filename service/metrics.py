"""Prometheus metrics: per-route request counts and latency, plus facts per memory read at scrape time."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator

from fastapi import FastAPI, Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from service.store import StoreError


class _MemoryCollector(Collector):
    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def collect(self) -> Iterator[GaugeMetricFamily]:
        facts = GaugeMetricFamily("larimar_memory_facts", "Facts currently written in a memory", labels=["memory"])
        pending = GaugeMetricFamily("larimar_memory_log_entries", "Log entries not yet compacted", labels=["memory"])
        editor = getattr(self.app.state, "editor", None)
        try:
            infos = editor.memories() if editor is not None else []
        except StoreError:  # not restored yet: nothing to report
            infos = []
        for m in infos:
            facts.add_metric([m.name], m.facts)
            pending.add_metric([m.name], m.log_entries)
        yield facts
        yield pending


def route_template(request: Request) -> str:
    """The path with parameters put back as {names}, so memory names and ids do not explode cardinality."""
    names = {v: k for k, v in request.path_params.items()}
    return "/".join(f"{{{names[seg]}}}" if seg in names else seg for seg in request.url.path.split("/"))


class Metrics:
    """One registry per app, so several apps in one process (tests) never collide."""

    def __init__(self, app: FastAPI) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("larimar_http_requests", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("larimar_http_request_seconds", "HTTP request latency", ["method", "route"],
                                 registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.registry.register(_MemoryCollector(app))

    async def middleware(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        path = route_template(request) if "route" in request.scope else "unmatched"
        self.latency.labels(request.method, path).observe(time.perf_counter() - start)
        self.requests.labels(request.method, path, str(response.status_code)).inc()
        return response
