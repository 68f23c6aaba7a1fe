"""The OpenAI chat-completions surface over the editor: request and response bodies, model names, and the
server-sent events of a streamed answer. No memory logic lives here; ``Editor.chat`` answers.

Which memory a request reads, in a form a stock client can send: the model name ``larimar/<memory>``, or a
``memory`` field in the body (the openai client's ``extra_body``); the model ``larimar`` alone is the plain
LLM. What the service adds to a response (scope, facts used, decoder, timings) is a ``larimar`` field, which
OpenAI clients ignore. Sampling: greedy when ``temperature`` is 0 or absent (the benchmarks' decoding; OpenAI's
own default is 1), else drawn at that temperature within ``top_p``.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from transformers import TextIteratorStreamer

from models.llm import Sampling
from service.editor import Answer, Editor
from service.errors import InvalidInput, NotFound
from service.recall import MemoryMode

BASE_MODEL = "larimar"  # the plain LLM; "larimar/<memory>" reads that memory


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """OpenAI's fields this service honours; others a client may send (user, logprobs: false...) are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(examples=["larimar/demo"])
    messages: list[ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # what torch's generator takes
    n: int = 1
    memory: str | None = Field(None, description="the memory to read (else the model name's)")
    memory_mode: MemoryMode = "auto"

    def target(self) -> str | None:
        """The memory this request reads (None: the plain LLM)."""
        if self.n != 1:
            raise InvalidInput("n must be 1: one answer per request")
        if self.memory:
            return self.memory
        if self.model == BASE_MODEL:
            return None
        if self.model.startswith(BASE_MODEL + "/") and self.model != BASE_MODEL + "/":
            return self.model.removeprefix(BASE_MODEL + "/")
        raise NotFound(f"model {self.model!r}: use {BASE_MODEL!r} (the plain LLM) or '{BASE_MODEL}/<memory>'")

    def sampling(self) -> Sampling:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return Sampling(self.temperature or 0.0, 1.0 if self.top_p is None else self.top_p, stop, self.seed)

    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def turns(self) -> list[dict[str, str]]:
        return [m.model_dump() for m in self.messages]


def completion(req: ChatRequest, memory: str | None, r: Answer) -> dict[str, Any]:
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": req.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": r.answer},
                         "finish_reason": r.finish_reason, "logprobs": None}],
            "usage": _usage(r), "larimar": _extra(memory, r)}


def _usage(r: Answer) -> dict[str, int]:
    return {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
            "total_tokens": r.prompt_tokens + r.completion_tokens}


def _extra(memory: str | None, r: Answer) -> dict[str, Any]:
    return {"memory": memory, "in_scope": r.in_scope, "decoder": r.decoder,
            "facts": [asdict(f) for f in r.facts], "timings_ms": r.timings_ms}


def until_stop(pieces: Iterable[str], stop: tuple[str, ...]) -> Iterator[str]:
    """The text of ``pieces`` up to the first stop string, holding back what could be the start of one."""
    cut = Sampling(stop=stop).cut
    hold = max((len(s) for s in stop), default=1) - 1
    text, sent = "", 0
    for piece in pieces:
        text += piece
        head, found = cut(text)
        if found:
            if len(head) > sent:
                yield head[sent:]
            return
        if len(text) - hold > sent:
            yield text[sent : len(text) - hold]
            sent = len(text) - hold
    if len(text) > sent:
        yield text[sent:]


def stream(editor: Editor, req: ChatRequest, memory: str | None, gone: threading.Event) -> Iterator[str]:
    """Server-sent events of one streamed answer: a chunk per piece of text as the LLM makes it, a last
    chunk with the finish reason (and usage, when asked), then ``[DONE]``. Bad input or an unknown memory
    fails before the first event (the route reads one event first).

    Generation runs in a thread of its own, which lives only while it holds or waits for one of the LLM's
    admission slots (``Editor.chat``): past them it is refused at once, so at most concurrency + queue such
    threads exist. ``gone``, set when the client goes, stops the generation (service/cancel.py)."""
    streamer = TextIteratorStreamer(editor.llm.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
    done: dict[str, Any] = {}

    def run() -> None:
        try:
            done["result"] = editor.chat(memory, req.turns(), req.max_new_tokens(), req.sampling(), req.memory_mode,
                                         streamer, gone)
        except BaseException as e:  # noqa: BLE001 - handed to the reader, which re-raises it
            done["error"] = e
            streamer.end()

    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": req.model}
    worker = threading.Thread(target=run, name="chat-stream", daemon=True)
    worker.start()
    pieces = _pieces(streamer)
    first = next(pieces, None)  # the readout and the prompt come first: errors surface here
    if "error" in done:
        worker.join()
        raise done["error"]
    yield _event(head | {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                      "finish_reason": None}]})
    for piece in until_stop(itertools.chain([] if first is None else [first.lstrip()], pieces), req.sampling().stop):
        if piece:
            yield _event(head | {"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
    for _ in pieces:  # whatever came after a stop string: drain, so the worker can finish
        pass
    worker.join()
    if "error" in done:
        raise done["error"]
    r: Answer = done["result"]
    yield _event(head | {"choices": [{"index": 0, "delta": {}, "finish_reason": r.finish_reason}],
                         "larimar": _extra(memory, r)})
    if req.stream_options and req.stream_options.include_usage:
        yield _event(head | {"choices": [], "usage": _usage(r)})
    yield "data: [DONE]\n\n"


def _pieces(streamer: TextIteratorStreamer) -> Iterator[str]:
    """The streamer's text as a generator: once it has ended, it stays ended (the streamer would wait again)."""
    yield from streamer


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def models(editor: Editor, reaches: Any) -> dict[str, Any]:
    """GET /v1/models: the plain LLM and one model per memory the caller reaches, each saying where its answers
    are generated and whether the answer bias steers them (an engine gets no bias: models/remote.py)."""
    names = [BASE_MODEL] + [f"{BASE_MODEL}/{m.name}" for m in editor.memories() if reaches(m.name)]
    engine = editor.engine
    how = {"generation": "engine" if engine else "in-process",  # not the engine's address: clients need not know it
           "answer_bias": engine is None and editor.settings.answer_bias > 0}
    return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "larimar",
                                        "larimar": how} for n in names]}
