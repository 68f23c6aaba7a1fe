"""Prometheus metrics: per-route request counts and latency, plus memory and fact counts read at scrape time.

``/metrics`` answers without a key (scrapers call it), so by default it names no memory: the counts are totals,
and per-memory gauges come only with ``LARIMAR_METRICS_MEMORY_NAMES``. Every label value comes from the route
table or a fixed list (a client's method or path never makes a new series)."""

from __future__ import annotations

import time
from collections.abc import Iterator

from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.store import StoreError

METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")  # any other is counted as "other"


class _MemoryCollector(Collector):
    def __init__(self, app: FastAPI, names: bool) -> None:
        self.app = app
        self.names = names  # one series per memory, labelled with its name

    def collect(self) -> Iterator[GaugeMetricFamily]:
        editor = getattr(self.app.state, "editor", None)
        try:
            infos = editor.memories() if editor is not None else []
        except StoreError:  # not restored yet: nothing to report
            infos = []
        yield GaugeMetricFamily("larimar_memories", "Memories held", value=len(infos))
        yield GaugeMetricFamily("larimar_facts", "Facts currently written, all memories",
                                value=sum(m.facts for m in infos))
        if self.names:
            facts = GaugeMetricFamily("larimar_memory_facts", "Facts currently written in a memory", labels=["memory"])
            pending = GaugeMetricFamily("larimar_memory_log_entries", "Log entries not yet compacted",
                                        labels=["memory"])
            for m in infos:
                facts.add_metric([m.name], m.facts)
                pending.add_metric([m.name], m.log_entries)
            yield facts
            yield pending


def route_template(request: Request) -> str:
    """The matched route's path with its parameters put back as {names} ("/v1/memories/{memory}/facts"), so
    memory names and ids never become label values; "unmatched" for a path no route matched. (The route object
    of an included router knows its path without the router's prefix, hence the rebuild from the URL.)"""
    if "route" not in request.scope:
        return "unmatched"
    names = {v: k for k, v in request.path_params.items()}
    return "/".join(f"{{{names[seg]}}}" if seg in names else seg for seg in request.url.path.split("/"))


class Metrics:
    """One registry per app, so several apps in one process (tests) never collide."""

    def __init__(self, app: FastAPI, memory_names: bool = False) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("larimar_http_requests", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("larimar_http_request_seconds", "HTTP request latency", ["method", "route"],
                                 registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.replication_lag = Histogram(
            "larimar_replication_lag_seconds", "From Redis logging another replica's change to this replica "
            "applying it (service/replicas.py)", registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self.registry.register(_MemoryCollector(app, memory_names))

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """Pure ASGI, not Starlette's ``BaseHTTPMiddleware``: under that one a route cannot see its client
        disconnect (``Request.is_disconnected`` never turns true), and generation could not be stopped
        (service/cancel.py). The latency runs to the response's last byte, streamed ones included."""

        async def measured(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            start, status = time.perf_counter(), 500  # 500: the app raised before it answered

            async def sent(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, sent)
            finally:
                path = route_template(Request(scope))
                method = scope["method"] if scope["method"] in METHODS else "other"
                self.latency.labels(method, path).observe(time.perf_counter() - start)
                self.requests.labels(method, path, str(status)).inc()

        return measured
