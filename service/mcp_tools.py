"""The MCP server: the editor's facts and answers as tools for agents, on Streamable HTTP at ``/mcp``.

Built with the official SDK (``mcp``), mounted in the same app, honouring the same API keys: with keys
configured, a call without a valid ``Authorization: Bearer`` key gets 401 before MCP sees it, and each tool
checks that the key reaches the memory it names and has the role the tool needs (service/auth.py). Tools
return the REST routes' JSON shapes; no memory logic lives here.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from service import auth, ratelimit
from service.auth import ApiKey, Role, listed
from service.editor import Editor
from service.errors import Conflict, InvalidInput, NotFound
from service.recall import MemoryMode

PATH = "/mcp"


def _authorization(ctx: Context) -> str | None:
    """The Authorization header of the HTTP request carrying this tool call."""
    request = ctx.request_context.request
    return request.headers.get("authorization") if request is not None else None


def build(app: FastAPI) -> MCPServer:
    """The tools, over ``app``'s editor and keys (read when a tool runs: the editor is built at start-up)."""
    mcp = MCPServer("larimar", instructions="Knowledge editing for an LLM: write facts into a named memory, "
                    "forget them, search them, and ask the edited LLM.")

    def tool(fn: Callable[..., Any]) -> Callable[..., Any]:
        """A tool whose refusals (bad input, unknown memory or fact, a key's limits) reach the agent as their
        message; the SDK would hide any other exception's."""

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except (InvalidInput, NotFound, Conflict, PermissionError) as e:
                raise ToolError(f"{type(e).__name__}: {e}") from e

        return mcp.tool()(run)

    def caller(ctx: Context, memory: str | None, need: Role) -> ApiKey | None:
        """The caller's key (None: no keys configured), once it may do ``need`` to ``memory``."""
        return auth.check(app.state.api_keys, _authorization(ctx), memory, need)

    def editor_for(ctx: Context, memory: str | None, need: Role) -> Editor:
        """The editor, once the caller's key (when keys are configured) may do ``need`` to ``memory``."""
        caller(ctx, memory, need)
        return app.state.editor

    @tool
    def write_fact(memory: str, text: str, ctx: Context, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        """Teach the LLM a fact: write it into a memory (created by its first write). Returns the fact with its
        id, and facts already held that state the same thing otherwise (conflicts)."""
        w = editor_for(ctx, memory, "write").add_facts(memory, [(text, metadata)])
        return w.facts[0].as_dict() | {"conflicts": [asdict(c) for c in w.conflicts[0]]}

    @tool
    def forget_fact(memory: str, fact_id: str, ctx: Context) -> dict[str, Any]:
        """Forget a fact by id: the memory unlearns it and its record is deleted."""
        editor_for(ctx, memory, "write").forget(memory, fact_id)
        return {"id": fact_id, "forgotten": True}

    @tool
    def query(memory: str, prompt: str, ctx: Context, max_new_tokens: int | None = None,
              memory_mode: MemoryMode = "auto") -> dict[str, Any]:
        """Ask the edited LLM. in_scope says whether memory was read; facts are the ones it used."""
        r = editor_for(ctx, memory, "read").query(memory, prompt, max_new_tokens, memory_mode)
        return {"answer": r.answer, "in_scope": r.in_scope, "decoder": r.decoder,
                "facts": [asdict(f) for f in r.facts]}

    @tool
    def search_facts(memory: str, ctx: Context, q: str | None = None, limit: int = 20,
                     offset: int = 0) -> dict[str, Any]:
        """The facts of a memory nearest a text (q), or a page of them in the order written."""
        editor = editor_for(ctx, memory, "read")
        if q is not None:
            hits = editor.search(memory, q, limit)
            return {"facts": [f.as_dict() | {"similarity": s} for f, s in hits], "total": len(hits)}
        facts, total = editor.list_facts(memory, limit, offset)
        return {"facts": [f.as_dict() for f in facts], "total": total}

    @tool
    def add_document(memory: str, text: str, ctx: Context, title: str | None = None) -> dict[str, Any]:
        """Write a long text (notes, a report, a book) into a memory as pieces, one per sentence, that answers
        cite. Returns the document: status ready, or ingesting for a large one (document_status follows it)."""
        caller(ctx, memory, "write")
        return app.state.documents.add(memory, text, title, None)

    @tool
    def document_status(memory: str, document_id: str, ctx: Context) -> dict[str, Any]:
        """A document's status (ingesting, ready, failed) and how many of its pieces are written."""
        caller(ctx, memory, "read")
        return app.state.documents.get(memory, document_id)

    @tool
    def forget_document(memory: str, document_id: str, ctx: Context) -> dict[str, Any]:
        """Forget every piece of a document, then the document."""
        caller(ctx, memory, "write")
        app.state.documents.delete(memory, document_id)
        return {"id": document_id, "deleted": True}

    @tool
    def list_memories(ctx: Context) -> dict[str, Any]:
        """The memories this caller may read, with their fact counts."""
        key = caller(ctx, None, "read")
        return {"memories": [{"name": m.name, "facts": m.facts} for m in app.state.editor.memories()
                             if listed(key, m.name)]}

    return mcp


def require_key(app: FastAPI, inner: ASGIApp) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """Before MCP sees a request: its token of the caller's rate limit (429 with Retry-After past it, as for
    /v1: every tool call is a request, so it counts against its key's bucket), then 401 for a call without a
    valid key, when keys are configured (as for /v1)."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            authorization = next((v.decode() for k, v in scope.get("headers", []) if k.lower() == b"authorization"),
                                 None)
            client = scope.get("client")
            try:  # any key passes here: each tool checks its own role
                ratelimit.admit(app.state, authorization, client[0] if client else None, None, "read")
            except ratelimit.RateLimited as e:
                await JSONResponse({"detail": str(e)}, status_code=429,
                                   headers={"Retry-After": str(e.retry_after)})(scope, receive, send)
                return
            except auth.Unauthenticated as e:
                await JSONResponse({"detail": str(e)}, status_code=401,
                                   headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        await inner(scope, receive, send)

    return guarded
