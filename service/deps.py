"""Dependencies the routes receive: the editor and the API-key check."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, status

from service.auth import ApiKey, Role, from_header
from service.editor import Editor
from service.schemas import MEMORY_NAME


def get_editor(request: Request) -> Editor:
    return request.app.state.editor


def needed_role(request: Request) -> Role:
    """What a call needs: reading (GET, query, score), deleting a memory (admin), else writing."""
    path = request.scope["route"].path  # the matched route's template, "/v1/memories/{memory}/query"
    if request.method in ("GET", "HEAD") or path.endswith(("/query", "/score", "/chat/completions")):
        return "read"
    return "admin" if request.method == "DELETE" and path.endswith("/memories/{memory}") else "write"


def authorize(request: Request) -> ApiKey | None:
    """With keys configured, every /v1 call needs ``Authorization: Bearer <key>`` of a key whose role and
    memories cover the call (service/auth.py); the key found is the request's ``state.api_key``."""
    keys: list[ApiKey] = request.app.state.api_keys
    if not keys:
        return None
    key = from_header(request.headers.get("authorization"), keys)
    if key is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "missing or wrong API key", headers={"WWW-Authenticate": "Bearer"}
        )
    require(key, request.path_params.get("memory"), needed_role(request))
    request.state.api_key = key
    return key


def require(key: ApiKey | None, memory: str | None, need: Role) -> None:
    """403 with the reason when ``key`` may not do ``need`` to ``memory`` (None: no keys configured)."""
    if key is not None and (why := key.refusal(memory, need)):
        raise HTTPException(status.HTTP_403_FORBIDDEN, why)


def caller(request: Request) -> ApiKey | None:
    """The key of this call (None: no keys configured), once ``authorize`` has run."""
    return getattr(request.state, "api_key", None)


async def import_body(request: Request) -> bytes:
    """The request body, read whole (``BodyLimit`` in service/app.py stops it past LARIMAR_MAX_IMPORT_BYTES)."""
    return await request.body()


EditorDep = Annotated[Editor, Depends(get_editor)]
CallerDep = Annotated[ApiKey | None, Depends(caller)]
ImportBody = Annotated[bytes, Depends(import_body)]
MemoryName = Annotated[str, Path(pattern=MEMORY_NAME, description="[a-z0-9][a-z0-9_-]{0,63}")]
