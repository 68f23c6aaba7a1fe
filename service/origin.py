"""Requests a browser was tricked into sending: DNS rebinding and cross-site writes.

A web page cannot read a key it does not have, so a service with API keys is safe from both. Without keys, a
page a user opens could (1) point its own domain at 127.0.0.1 (DNS rebinding) and then read and write the
memories of the service on the user's machine as if same-origin, or (2) post to it from its own origin (a
"simple" request needs no CORS preflight). Hence two checks, before any route runs:

- **Host**: a request must name a host this service answers to: by default, without keys, only loopback names
  (and ``LARIMAR_HOST`` when it is a specific address); with keys, any. ``LARIMAR_ALLOWED_HOSTS`` sets the
  list ("*": any). The probes (/healthz, /readyz, /metrics) answer whatever the Host, for load balancers.
- **Origin**: a state-changing request (POST, PUT, PATCH, DELETE) that a browser marks with an ``Origin`` must
  come from this service's own origin (its console) or one listed in ``LARIMAR_ALLOWED_ORIGINS``. Clients
  that are not browsers send no Origin and are not affected.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import status
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from service.settings import Settings

LOOPBACK = ("localhost", "127.0.0.1", "::1")
WILDCARD_ADDRESSES = ("", "0.0.0.0", "::")
PROBES = ("/healthz", "/readyz", "/metrics")
UNSAFE = ("POST", "PUT", "PATCH", "DELETE")


def served_hosts(settings: Settings, keyed: bool) -> frozenset[str] | None:
    """The host names requests may name (lower case, no port); None: any."""
    if settings.allowed_hosts:
        return None if "*" in settings.allowed_hosts else frozenset(h.lower() for h in settings.allowed_hosts)
    if keyed:
        return None
    own = () if settings.host in WILDCARD_ADDRESSES else (settings.host.lower(),)
    return frozenset((*LOOPBACK, *own))


def hostname(authority: str) -> str:
    """The host of a Host header or an origin's authority, lower case, without its port ("[::1]:8000" -> "::1")."""
    a = authority.strip().lower()
    if a.startswith("["):
        return a[1 : a.find("]")] if "]" in a else a
    return a.rsplit(":", 1)[0] if a.count(":") == 1 else a


class SameOrigin:
    """The two checks of this module, as ASGI middleware: 400 for a host not served, 403 for a cross-origin
    write; each names the setting that would allow it."""

    def __init__(self, app: ASGIApp, hosts: frozenset[str] | None, origins: list[str]) -> None:
        self.app, self.hosts = app, hosts
        self.any_origin = "*" in origins
        self.origins = frozenset(o.lower().rstrip("/") for o in origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            host = headers.get("host", "")
            if self.hosts is not None and scope["path"] not in PROBES and hostname(host) not in self.hosts:
                await JSONResponse({"detail": f"host {host!r} is not served here (LARIMAR_ALLOWED_HOSTS)"},
                                   status.HTTP_400_BAD_REQUEST)(scope, receive, send)
                return
            origin = headers.get("origin")
            if scope["method"] in UNSAFE and origin is not None and not self.same_or_allowed(origin, host):
                await JSONResponse({"detail": f"a {scope['method']} from origin {origin!r} is refused: "
                                    "list it in LARIMAR_ALLOWED_ORIGINS to allow it"},
                                   status.HTTP_403_FORBIDDEN)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def same_or_allowed(self, origin: str, host: str) -> bool:
        o = origin.strip().lower().rstrip("/")
        return self.any_origin or o in self.origins or (o != "null" and urlsplit(o).netloc == host.strip().lower())
