"""OpenAI-compatible routes: /v1/chat/completions (streamed or not) and /v1/models (service/openai_compat.py)."""

from __future__ import annotations

import threading
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from service import openai_compat as oa
from service.auth import listed
from service.cancel import relayed_while_connected, while_connected
from service.deps import EditorDep, ReaderKey, require

router = APIRouter(tags=["openai"])


@router.post("/chat/completions")
async def chat_completions(body: oa.ChatRequest, request: Request, editor: EditorDep, key: ReaderKey) -> Any:
    """A client that disconnects stops its generation (service/cancel.py)."""
    memory = body.target()
    require(key, memory, "read")
    gone = threading.Event()
    if not body.stream:
        r = await while_connected(request, gone, lambda: editor.chat(
            memory, body.turns(), body.max_new_tokens(), body.sampling(), body.memory_mode, gone=gone))
        return oa.completion(body, memory, r)
    events = oa.stream(editor, body, memory, gone)
    first = await while_connected(request, gone, lambda: next(events))  # errors before any byte is sent
    return StreamingResponse(relayed_while_connected(request, _prepend(first, events), gone),
                             media_type="text/event-stream")


def _prepend(first: str, rest: Any) -> Any:
    yield first
    yield from rest


@router.get("/models")
def list_models(editor: EditorDep, key: ReaderKey) -> dict[str, Any]:
    return oa.models(editor, lambda name: listed(key, name))
