"""OpenAI-compatible routes: /v1/chat/completions (streamed or not) and /v1/models (service/openai_compat.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from service import openai_compat as oa
from service.auth import listed
from service.deps import EditorDep, ReaderKey, require

router = APIRouter(tags=["openai"])


@router.post("/chat/completions")
async def chat_completions(body: oa.ChatRequest, editor: EditorDep, key: ReaderKey) -> Any:
    memory = body.target()
    require(key, memory, "read")
    if not body.stream:
        r = await run_in_threadpool(editor.chat, memory, body.turns(), body.max_new_tokens(), body.sampling(),
                                    body.memory_mode)
        return oa.completion(body, memory, r)
    events = oa.stream(editor, body, memory)
    first = await run_in_threadpool(next, events)  # errors (bad input, unknown memory) before any byte is sent
    return StreamingResponse(_prepend(first, events), media_type="text/event-stream")


def _prepend(first: str, rest: Any) -> Any:
    yield first
    yield from rest


@router.get("/models")
def list_models(editor: EditorDep, key: ReaderKey) -> dict[str, Any]:
    return oa.models(editor, lambda name: listed(key, name))
