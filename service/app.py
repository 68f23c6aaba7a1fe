"""The FastAPI application: wiring only. Models load once in the lifespan; routes get the editor injected."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, FastAPI, HTTPException, Request, Response, status
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.utils import is_body_allowed_for_status_code
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from memory_core import MemoryConfig
from models.choice import DecoderChoice, choose_decoder
from models.decoders import load_decoder
from models.encoder import TextEncoder
from models.loading import LoadedModels, load_models
from models.relation import RelationGate, find_gate, load_gate
from models.remote import EngineError
from models.scope import ScopeRule
from service import mcp_tools, ratelimit
from service.auth import load_keys
from service.cancel import ClientGone
from service.documents import Documents
from service.editor import Editor
from service.errors import Busy, Conflict, InvalidInput, NotFound
from service.memories import MemoryRegistry
from service.metrics import Metrics
from service.origin import SameOrigin, served_hosts
from service.replicas import SeqHeader
from service.routes import documents, facts, health, memories, openai, query
from service.schemas import ERRORS
from service.settings import Settings, get_settings
from service.store import Store, StoreError, StoreHeld, open_store
from service.timing import utc_now

log = logging.getLogger("larimar")
CONSOLE = Path(__file__).resolve().parent / "console"
CLIENT_GONE = 499  # nginx's "client closed request": what /metrics counts for a generation stopped that way


def decoder_choice(settings: Settings) -> DecoderChoice:
    """The decoder and scope threshold these settings ask for (LARIMAR_DECODER, _ADAPTER, _SCOPE_THRESHOLD)."""
    return choose_decoder(settings.llm, settings.encoder, settings.decoder, settings.adapter, settings.scope_threshold)


def build_editor(settings: Settings, models: LoadedModels | Callable[[], LoadedModels], background: bool = False,
                 replication_lag: Callable[[float], None] | None = None) -> Editor:
    """The editor over the configured store, decoder and scope threshold (set, or chosen on development data).

    ``background`` (the server): restore runs while the service already answers, unready, and forgets are
    purged from the store's files ``purge_delay_s`` after them. Otherwise restore is done on return.

    The server first claims the store as its one writer (``Store.claim``): a store another server holds stops
    the start with StoreHeld, naming it, before ``models`` (given as a loader) are loaded, so a refused server
    exits at once. A store out of reach is claimed by the background restore before it reads anything; a holder
    found only then is logged as critical and the process stopped.
    """
    device = settings.resolved_device()
    store = open_store(settings.store_url)
    claim = claim_store(store, settings.store_url) if background else None
    try:
        models = models() if callable(models) else models
    except BaseException:
        store.close()  # gives the claim back
        raise
    registry = MemoryRegistry(store, memory_config(settings, models.encoder.dim), device, settings.snapshot_every,
                              settings.purge_delay_s, claim=claim, fact_cache=settings.fact_cache)
    try:
        if background:
            registry.restore_in_background()
            registry.purge_in_background()
            registry.index_in_background(settings.index_above)
            registry.follow_in_background(replication_lag)  # a shared store: the other replicas' changes
        else:
            try:
                n = registry.restore()
                log.info("restored %d memories from %s", n, settings.store_url)
            except StoreError as e:
                log.error("store %s unreachable (%s): unready, retrying in the background", settings.store_url, e)
                registry.restore_in_background()
        choice = decoder_choice(settings)
        log.info("decoder: %s%s, scope threshold %.2f", choice.decoder,
                 f" (adapter {choice.adapter})" if choice.adapter else "", choice.scope_threshold)
        if choice.decoder == "latent":
            log.warning("decoder latent is experimental: the shipped adapter barely moves the LLM (README)")
        decoder = load_decoder(choice.decoder, choice.adapter, device, settings.answer_bias)
        return Editor(settings, models.encoder, models.llm, decoder, registry, scope_rule(settings, models.encoder))
    except BaseException:
        registry.close()  # gives the claim back: nothing will serve from this store
        raise


def claim_store(store: Store, url: str) -> Callable[[], None] | None:
    """Claim the store for this server as its one writer now (StoreHeld, naming the holder, stops the start);
    for a store out of reach, the claim the background restore makes first (None: claimed now)."""
    owner = f"{socket.gethostname()} pid {os.getpid()} since {utc_now()}"
    try:
        store.claim(owner)
        return None
    except StoreHeld as e:
        log.critical("not starting: %s", e)
        store.close()
        raise
    except StoreError as e:
        log.error("store %s unreachable (%s): the background restore claims it for this server first", url, e)

    def claim_or_stop() -> None:
        try:
            store.claim(owner)
        except StoreHeld as e:
            log.critical("%s: stopping", e)
            os.kill(os.getpid(), signal.SIGTERM)
            raise

    return claim_or_stop


def memory_config(settings: Settings, dim: int) -> MemoryConfig:
    """A new memory's configuration (LARIMAR_MEMORY_*), for latents of ``dim``."""
    return MemoryConfig(slots=settings.memory_slots, dim=dim, addressing=settings.memory_addressing,
                        ridge=settings.memory_ridge, seed=settings.memory_seed)


def scope_rule(settings: Settings, encoder: TextEncoder) -> ScopeRule:
    """The scope rule these settings serve: the decoder's threshold (set, or chosen on development data), the
    relation gate, the mention check. Benchmarks build theirs here too, so they measure what is served."""
    return ScopeRule(encoder, decoder_choice(settings).scope_threshold, relation_gate(settings, encoder),
                     settings.scope_requires_mention)


def relation_gate(settings: Settings, encoder: TextEncoder) -> RelationGate | None:
    """The relation gate these settings ask for (LARIMAR_RELATION_GATE, _RELATION_THRESHOLD), or None: off, or
    none trained for the encoder."""
    if not settings.relation_gate:
        return None
    directory = find_gate(settings.encoder)
    if directory is None:
        log.warning("no relation gate trained for encoder %s: facts are judged by cosine and mentions alone",
                    settings.encoder)
        return None
    gate = load_gate(directory, encoder, settings.relation_threshold)
    log.info("relation gate %s, threshold %.2f", directory.name, gate.threshold)
    return gate


class ErrorResponse(JSONResponse):
    """JSON that can always be sent: a message or a validation error may quote the client's input, and a lone
    surrogate in it (JSON's \\ud800 escape) cannot be encoded as UTF-8; such a body is sent \\u-escaped instead
    of failing with a 500."""

    def render(self, content: object) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, separators=(",", ":")).encode()


def _error(code: int) -> object:
    """The handler answering ``code`` with the exception's message, and ``Retry-After`` when the exception says
    when to retry (``Busy``: the LLM's slots and queue are full, service/admission.py)."""

    async def handler(_: Request, exc: Exception) -> JSONResponse:
        retry = getattr(exc, "retry_after", None)
        return ErrorResponse(status_code=code, content={"detail": str(exc)},
                             headers=None if retry is None else {"Retry-After": str(retry)})

    return handler


async def _invalid_request(_: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 for a request that fails its schema, in the same shape, sendable whatever it quotes."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    return ErrorResponse(status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
                         content={"detail": jsonable_encoder(errors)})


async def _http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's answer to an HTTPException, sendable whatever its detail quotes (a status that takes no body
    gets FastAPI's own)."""
    if not isinstance(exc, StarletteHTTPException) or not is_body_allowed_for_status_code(exc.status_code):
        return await http_exception_handler(request, exc)  # type: ignore[arg-type]
    return ErrorResponse(status_code=exc.status_code, content={"detail": exc.detail}, headers=exc.headers)


class BodyLimit:
    """Refuse oversized bodies with 413, naming the limit: from their Content-Length before any byte is read,
    and, for a body sent without one (chunked), as soon as what has arrived passes the limit. The limit is the
    matched route's (``deps.body_limit``: an import file or a document may be larger), else max_body_bytes.
    It is looked up when the body is first read, after routing: nothing is read before (the server stops
    reading a connection whose body nobody asks for)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings

    def limit(self, scope: Scope) -> tuple[int, str]:
        """The byte limit of the route matched, and the setting that holds it."""
        name = getattr(getattr(scope.get("route"), "endpoint", None), "body_limit", "max_body_bytes")
        return getattr(self.settings, name), name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = next((v.decode() for k, v in scope.get("headers", []) if k.lower() == b"content-length"), None)
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()  # at most one chunk of the server's buffer before the check below
            if message["type"] == "http.request":
                most, name = self.limit(scope)
                seen += len(message.get("body", b""))
                if seen > most or (length is not None and (not length.isdigit() or int(length) > most)):
                    # raised where the route reads its body: FastAPI answers it as it is
                    raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                                        f"request body over {most} bytes (LARIMAR_{name.upper()})")
            return message

        await self.app(scope, counted, send)


def create_app(settings: Settings | None = None, models: LoadedModels | None = None) -> FastAPI:
    """``models`` lets tests share one loaded set across apps; the server loads its own."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.editor = build_editor(settings, models or (lambda: load_models(settings)), background=True,
                                        replication_lag=app.state.metrics.replication_lag.observe)
        app.state.documents = Documents(app.state.editor)
        log.info("larimar ready")
        async with mcp.session_manager.run():  # the MCP endpoint's sessions live as long as the app
            yield
        app.state.documents.close()
        app.state.editor.close()

    # /docs and /redoc serve Swagger UI and ReDoc from fastapi-offline's bundled assets, not a CDN: they work
    # on a machine without internet
    app = FastAPIOffline(title="Larimar", version="0.1.0", lifespan=lifespan,
                         description="Knowledge editing for LLMs: write, forget and query facts in an episodic memory.")
    app.state.settings = settings
    app.state.api_keys = load_keys(settings.api_keys, settings.api_keys_file)  # a bad file stops the start
    app.state.rate_limiter = ratelimit.from_settings(settings)  # None: off; a test may set its own
    app.state.metrics = Metrics(app, settings.metrics_memory_names)
    app.add_middleware(BodyLimit, settings=settings)
    app.add_middleware(SameOrigin, hosts=served_hosts(settings, bool(app.state.api_keys)),
                       origins=settings.allowed_origins)  # DNS rebinding and cross-site writes
    app.add_middleware(SeqHeader, registry=lambda: getattr(getattr(app.state, "editor", None), "registry", None))
    app.add_middleware(app.state.metrics.middleware)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(InvalidInput, _error(status.HTTP_422_UNPROCESSABLE_CONTENT))
    app.add_exception_handler(NotFound, _error(status.HTTP_404_NOT_FOUND))
    app.add_exception_handler(Conflict, _error(status.HTTP_409_CONFLICT))
    app.add_exception_handler(StoreError, _error(status.HTTP_503_SERVICE_UNAVAILABLE))
    app.add_exception_handler(EngineError, _error(status.HTTP_503_SERVICE_UNAVAILABLE))
    app.add_exception_handler(Busy, _error(status.HTTP_503_SERVICE_UNAVAILABLE))
    app.add_exception_handler(ClientGone, _error(CLIENT_GONE))

    v1 = APIRouter(prefix="/v1", responses=ERRORS)  # each route names the role it needs (service/deps.py)
    for r in (facts.router, documents.router, query.router, memories.router, openai.router):
        v1.include_router(r)
    app.include_router(v1)
    app.include_router(health.router)
    # the web console: static files, no build step (service/console/)
    app.mount("/console", StaticFiles(directory=CONSOLE, html=True), name="console")
    mcp = mcp_tools.build(app)  # Streamable HTTP at /mcp, the same keys (service/mcp_tools.py)
    app.mount(mcp_tools.PATH, mcp_tools.require_key(app, mcp.streamable_http_app(streamable_http_path="/",
                                                                                 host=settings.host)))
    return app
