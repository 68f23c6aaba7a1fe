"""Generation on an LLM engine the user already runs (llama.cpp's server, vLLM, TGI, Ollama): any server with
OpenAI's ``/chat/completions``. Memory, the scope rule, the relation gate and fact lookup stay in this service;
the conversation with the recalled facts in its last turn (the context decoder's prompt) goes to the engine,
which applies its own model's chat template.

Every call streams, whether or not the client asked for a stream: the text reaches a streamed client as it
comes, and a client that goes stops the call at the next piece (the engine frees its slot when the connection
closes). Not sent: the answer bias (no engine's ``logit_bias`` can name the spans without the engine's own
tokenizer), so answers on this path are the plain model's reading of the facts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from models.llm import Generation, Sampling


class EngineError(RuntimeError):
    """The engine answered with an error, or not at all (the service answers 503)."""


@dataclass(frozen=True)
class RemoteEngine:
    url: str  # the OpenAI-compatible base, e.g. http://127.0.0.1:8080/v1
    model: str = ""
    api_key: str | None = None
    timeout_s: float = 120.0

    def generate(self, messages: list[dict[str, str]], max_new_tokens: int, sampling: Sampling,
                 on_text: Callable[[str], None] | None = None, gone: Callable[[], bool] = lambda: False
                 ) -> Generation | None:
        """One answer, its text handed to ``on_text`` piece by piece; None when ``gone`` turned true first."""
        body: dict[str, object] = {"model": self.model or "default", "messages": messages, "stream": True,
                                   "max_tokens": max_new_tokens, "temperature": sampling.temperature,
                                   "top_p": sampling.top_p, "stream_options": {"include_usage": True}}
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        text, tokens, finish = [], 0, None
        try:
            with httpx.stream("POST", self.url.rstrip("/") + "/chat/completions", json=body, headers=headers,
                              timeout=self.timeout_s) as r:
                if r.status_code != 200:
                    raise EngineError(f"the LLM engine at {self.url} answered {r.status_code}: "
                                      f"{r.read().decode(errors='replace')[:300]}")
                for line in r.iter_lines():
                    if gone():
                        return None
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if chunk.get("usage"):
                        tokens = int(chunk["usage"].get("completion_tokens") or tokens)
                    for choice in chunk.get("choices", []):
                        piece = (choice.get("delta") or {}).get("content") or ""
                        if piece:
                            text.append(piece)
                            tokens = max(tokens, len(text))  # until the engine reports its count
                            if on_text is not None:
                                on_text(piece)
                        finish = choice.get("finish_reason") or finish
        except httpx.HTTPError as e:
            raise EngineError(f"the LLM engine at {self.url} is out of reach: {e}") from e
        return Generation("".join(text).strip(), tokens, finish != "length")
