"""Dependencies the routes receive: the editor and the API-key check."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, status

from service.editor import Editor
from service.schemas import MEMORY_NAME
from service.settings import Settings


def get_editor(request: Request) -> Editor:
    return request.app.state.editor


def app_settings(request: Request) -> Settings:
    return request.app.state.settings


def require_api_key(request: Request, settings: Annotated[Settings, Depends(app_settings)]) -> None:
    """With LARIMAR_API_KEYS set, every /v1 call needs ``Authorization: Bearer <key>``."""
    if not settings.api_keys:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not any(hmac.compare_digest(token, k) for k in settings.api_keys):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "missing or wrong API key", headers={"WWW-Authenticate": "Bearer"}
        )


class BodyTooLarge(ValueError):
    """A body sent without Content-Length ran past its limit while read: 413."""


async def import_body(request: Request, settings: Annotated[Settings, Depends(app_settings)]) -> bytes:
    """The request body, read up to LARIMAR_MAX_IMPORT_BYTES (the middleware saw only a Content-Length)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > settings.max_import_bytes:
            raise BodyTooLarge(f"import file over {settings.max_import_bytes} bytes")
    return bytes(body)


EditorDep = Annotated[Editor, Depends(get_editor)]
ImportBody = Annotated[bytes, Depends(import_body)]
MemoryName = Annotated[str, Path(pattern=MEMORY_NAME, description="[a-z0-9][a-z0-9_-]{0,63}")]
