"""What a request may ask, checked before anything changes: a bad request gets ``InvalidInput`` (422) naming
the field and the limit, and nothing is written. The editor and documents both check through this, so a
limit is stated once (its value is a setting, ``service.settings``)."""

from __future__ import annotations

import json
from typing import Any

from models.decoders import Chat
from models.llm import Sampling
from service.errors import InvalidInput
from service.settings import Settings

MAX_METADATA_CHARS = 4096
MAX_METADATA_DEPTH = 8  # nested objects and lists
RESERVED_METADATA = ("document",)  # marks a document's piece (service.pieces): only the service writes it
MAX_TITLE_CHARS = 256
MAX_STOP = 4  # stop strings per chat request, as OpenAI allows
ROLES = ("system", "user", "assistant")  # chat message roles


class Limits:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def text(self, text: str, what: str = "text", limit: int | None = None) -> str:
        """A fact's or a prompt's text (``limit``: another length limit than a fact's)."""
        limit = self.settings.max_text_chars if limit is None else limit
        if not text.strip():
            raise InvalidInput(f"{what} must not be empty")
        if len(text) > limit:
            raise InvalidInput(f"{what} has {len(text)} characters; the limit is {limit}")
        _unicode(text, what)
        return text

    def metadata(self, metadata: dict[str, Any] | None) -> dict[str, Any]:
        """A client's metadata: bounded in size and depth, valid Unicode, and none of the keys the service
        reserves (a client cannot make a fact pass for a document's piece and forge its citation)."""
        metadata = metadata or {}
        if reserved := next((k for k in RESERVED_METADATA if k in metadata), None):
            raise InvalidInput(f"metadata key {reserved!r} is reserved: the service sets it on document pieces "
                               "(POST .../documents)")
        if _depth(metadata, MAX_METADATA_DEPTH + 1) > MAX_METADATA_DEPTH:
            raise InvalidInput(f"metadata nests deeper than {MAX_METADATA_DEPTH} levels")
        encoded = json.dumps(metadata, ensure_ascii=False)
        if len(encoded) > MAX_METADATA_CHARS:
            raise InvalidInput(f"metadata is over {MAX_METADATA_CHARS} characters of JSON")
        _unicode(encoded, "metadata")
        return metadata

    def facts(self, items: list[tuple[str, dict[str, Any] | None]], what: str = "facts[{}].text"
              ) -> list[tuple[str, dict[str, Any]]]:
        """A batch of facts (text, metadata), at most ``max_batch_facts``."""
        if not items:
            raise InvalidInput("facts must hold at least one fact")
        if len(items) > self.settings.max_batch_facts:
            raise InvalidInput(f"{len(items)} facts in one batch; the limit is {self.settings.max_batch_facts}")
        label = what if len(items) > 1 else "text"
        return [(self.text(t, label.format(i)), self.metadata(m)) for i, (t, m) in enumerate(items)]

    def ids(self, ids: tuple[str, ...]) -> tuple[str, ...]:
        """Fact ids of one forget."""
        if not 1 <= len(ids) <= self.settings.max_batch_facts:
            raise InvalidInput(f"ids must hold 1 to {self.settings.max_batch_facts} fact ids")
        return self.fact_ids(ids, "ids")

    def fact_ids(self, ids: tuple[str, ...], what: str) -> tuple[str, ...]:
        """Fact ids a request names (a lone surrogate could not even be looked up in the store)."""
        for i, fact_id in enumerate(ids):
            _unicode(fact_id, f"{what}[{i}]")
        return ids

    def scored(self, pairs: list[int], window: int) -> None:
        """A score request's cost, from the tokens of the prompt with each candidate (each is read in full)."""
        if (longest := max(pairs, default=0)) > window:
            raise InvalidInput(f"the prompt with a candidate is {longest} tokens, past the LLM's window of {window}")
        if (tokens := sum(pairs)) > self.settings.max_score_tokens:
            raise InvalidInput(f"scoring these candidates reads {tokens} tokens (the prompt once per candidate); "
                               f"the limit is max_score_tokens={self.settings.max_score_tokens}: send fewer or "
                               "shorter candidates")

    def title(self, title: str | None) -> str | None:
        if title is not None and not 1 <= len(title) <= MAX_TITLE_CHARS:
            raise InvalidInput(f"title must have 1 to {MAX_TITLE_CHARS} characters")
        return title

    def max_new_tokens(self, n: int | None, what: str = "max_new_tokens") -> int:
        n = self.settings.default_max_new_tokens if n is None else n
        if not 1 <= n <= self.settings.max_new_tokens:
            raise InvalidInput(f"{what} must be between 1 and {self.settings.max_new_tokens}")
        return n

    def candidates(self, candidates: list[str]) -> list[str]:
        if not 1 <= len(candidates) <= self.settings.max_candidates:
            raise InvalidInput(f"candidates must hold 1 to {self.settings.max_candidates} strings")
        return [self.text(c, f"candidates[{i}]") for i, c in enumerate(candidates)]

    def sampling(self, sampling: Sampling) -> Sampling:
        if not (0.0 <= sampling.temperature <= 2.0 and 0.0 < sampling.top_p <= 1.0):
            raise InvalidInput("temperature must be within [0, 2] and top_p within (0, 1]")
        if len(sampling.stop) > MAX_STOP or any(not s for s in sampling.stop):
            raise InvalidInput(f"stop holds at most {MAX_STOP} non-empty strings")
        if any(len(s) > self.settings.max_stop_chars for s in sampling.stop):
            raise InvalidInput(f"a stop string has at most {self.settings.max_stop_chars} characters")
        for i, s in enumerate(sampling.stop):
            _unicode(s, f"stop[{i}]")
        return sampling

    def conversation(self, messages: list[dict[str, str]]) -> Chat:
        """The turns before the last and the last user turn, the prompt memory answers."""
        if not messages:
            raise InvalidInput("messages must hold at least one message")
        if len(messages) > self.settings.max_chat_messages:
            raise InvalidInput(f"messages holds {len(messages)} messages; the limit is "
                               f"{self.settings.max_chat_messages}")
        for i, m in enumerate(messages):
            if m.get("role") not in ROLES:
                raise InvalidInput(f"messages[{i}].role must be one of {', '.join(ROLES)}")
            self.text(m.get("content") or "", f"messages[{i}].content")
        if messages[-1]["role"] != "user":
            raise InvalidInput("the last message must be the user's")
        return Chat(tuple({"role": m["role"], "content": m["content"]} for m in messages[:-1]),
                    messages[-1]["content"])


def _unicode(text: str, what: str) -> None:
    """422 for a string that is no Unicode text (a lone surrogate, which JSON's \\ud800 escape can carry): it
    could not be stored, answered or exported."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidInput(f"{what} holds a character that is not valid Unicode (at {e.start})") from e


def _depth(value: object, stop: int) -> int:
    """How deeply objects and lists nest in a JSON value (a scalar is 0), counted without recursion (a value
    nested thousands deep would exhaust the stack) and no further than ``stop``."""
    deepest, level = 0, [value]
    while level and deepest < stop:
        nested = [v for x in level if isinstance(x, dict | list) for v in (x.values() if isinstance(x, dict) else x)]
        deepest += any(isinstance(x, dict | list) for x in level)
        level = nested
    return deepest
