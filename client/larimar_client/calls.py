"""Each route once, as a ``Call``: the request to send and how to read its answer. ``Larimar`` and
``AsyncLarimar`` only send them, so the two clients cannot drift apart."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from larimar_client.types import (
    Answer,
    CandidateScore,
    Document,
    Fact,
    FactPage,
    LarimarError,
    MemoryInfo,
    MemorySummary,
    RecalledFact,
    Scores,
    build,
)

T = TypeVar("T")
JSONL = "application/x-ndjson"


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    read: Callable[[Any], T]  # the decoded JSON body -> the value returned
    params: dict[str, Any] | None = None
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] | None = None

    def request(self, client: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        return client.build_request(self.method, self.path, params=self.params, json=self.json,
                                    content=self.content, headers=self.headers)


def check(r: httpx.Response) -> httpx.Response:
    """The response, or ``LarimarError`` with the service's message."""
    if r.is_error:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        raise LarimarError(r.status_code, detail if isinstance(detail, str) else json.dumps(detail))
    return r


def _m(memory: str) -> str:
    return f"/v1/memories/{quote(memory, safe='')}"


def _recalled(items: list[dict]) -> list[RecalledFact]:
    return [build(RecalledFact, f) for f in items]


def _page(d: dict) -> FactPage:
    return FactPage([Fact.of(f) for f in d["facts"]], d["total"], d["limit"], d["offset"])


def memories() -> Call[list[MemorySummary]]:
    return Call("GET", "/v1/memories", lambda d: [build(MemorySummary, m) for m in d["memories"]])


def memory(name: str) -> Call[MemoryInfo]:
    return Call("GET", _m(name), lambda d: build(MemoryInfo, d))


def delete_memory(name: str) -> Call[None]:
    return Call("DELETE", _m(name), lambda d: None)


def snapshot(name: str) -> Call[MemoryInfo]:
    return Call("POST", f"{_m(name)}/snapshot", lambda d: build(MemoryInfo, d))


def purge(name: str) -> Call[MemoryInfo]:
    return Call("POST", f"{_m(name)}/purge", lambda d: build(MemoryInfo, d))


def write(memory: str, text: str, metadata: dict[str, Any] | None, supersedes: list[str] | None) -> Call[Fact]:
    body: dict[str, Any] = {"text": text}
    if metadata is not None:
        body["metadata"] = metadata
    if supersedes:
        body["supersedes"] = supersedes
    return Call("POST", f"{_m(memory)}/facts", Fact.of, json=body)


def write_batch(memory: str, facts: Iterable[str | dict[str, Any]]) -> Call[list[Fact]]:
    body = {"facts": [{"text": f} if isinstance(f, str) else f for f in facts]}
    return Call("POST", f"{_m(memory)}/facts/batch", lambda d: [Fact.of(f) for f in d["facts"]], json=body)


def facts(memory: str, limit: int, offset: int) -> Call[FactPage]:
    return Call("GET", f"{_m(memory)}/facts", _page, params={"limit": limit, "offset": offset})


def search(memory: str, q: str, limit: int) -> Call[list[Fact]]:
    return Call("GET", f"{_m(memory)}/facts", lambda d: _page(d).facts, params={"q": q, "limit": limit})


def fact(memory: str, fact_id: str) -> Call[Fact]:
    return Call("GET", f"{_m(memory)}/facts/{quote(fact_id, safe='')}", Fact.of)


def update(memory: str, fact_id: str, text: str | None, metadata: dict[str, Any] | None) -> Call[Fact]:
    body = {k: v for k, v in (("text", text), ("metadata", metadata)) if v is not None}
    return Call("PUT", f"{_m(memory)}/facts/{quote(fact_id, safe='')}", Fact.of, json=body)


def forget(memory: str, fact_id: str) -> Call[None]:
    return Call("DELETE", f"{_m(memory)}/facts/{quote(fact_id, safe='')}", lambda d: None)


def query(memory: str, prompt: str, max_new_tokens: int | None, memory_mode: str) -> Call[Answer]:
    body: dict[str, Any] = {"prompt": prompt, "memory_mode": memory_mode}
    if max_new_tokens is not None:
        body["max_new_tokens"] = max_new_tokens
    return Call("POST", f"{_m(memory)}/query", lambda d: Answer(d["answer"], d["in_scope"], d["decoder"],
                                                                 _recalled(d["facts"]), d["timings_ms"]), json=body)


def score(memory: str, prompt: str, candidates: list[str], memory_mode: str) -> Call[Scores]:
    body = {"prompt": prompt, "candidates": candidates, "memory_mode": memory_mode}
    return Call("POST", f"{_m(memory)}/score", lambda d: Scores(
        d["in_scope"], d["decoder"], _recalled(d["facts"]), [build(CandidateScore, s) for s in d["scores"]]),
        json=body)


def export(memory: str, latents: bool) -> Call[None]:
    """Streamed: the clients read it line by line (``read`` is not used)."""
    return Call("GET", f"{_m(memory)}/export", lambda d: None, params={"latents": str(latents).lower()})


def import_(memory: str, records: bytes | Iterable[dict[str, Any]], keep_ids: bool) -> Call[int]:
    body = records if isinstance(records, bytes) else b"".join(json.dumps(r).encode() + b"\n" for r in records)
    return Call("POST", f"{_m(memory)}/import", lambda d: int(d["imported"]), content=body,
                params={"keep_ids": str(keep_ids).lower()}, headers={"Content-Type": JSONL})




def add_document(memory: str, text: str, title: str | None, metadata: dict[str, Any] | None) -> Call[Document]:
    body = {k: v for k, v in (("text", text), ("title", title), ("metadata", metadata)) if v is not None}
    return Call("POST", f"{_m(memory)}/documents", lambda d: build(Document, d), json=body)


def documents(memory: str) -> Call[list[Document]]:
    return Call("GET", f"{_m(memory)}/documents", lambda d: [build(Document, x) for x in d["documents"]])


def document(memory: str, doc_id: str) -> Call[Document]:
    return Call("GET", f"{_m(memory)}/documents/{quote(doc_id, safe='')}", lambda d: build(Document, d))


def delete_document(memory: str, doc_id: str) -> Call[None]:
    return Call("DELETE", f"{_m(memory)}/documents/{quote(doc_id, safe='')}", lambda d: None)
