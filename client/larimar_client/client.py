"""``Larimar`` (sync) and ``AsyncLarimar`` (async): the same methods, each sending one ``calls`` Call."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any, TypeVar

import httpx

from larimar_client import calls
from larimar_client.calls import Call, check
from larimar_client.types import Answer, Document, Fact, FactPage, MemoryInfo, MemorySummary, Scores

T = TypeVar("T")
MemoryMode = str  # "auto" (the scope detector decides), "on", "off"


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class Larimar:
    """Blocking client; ``timeout`` in seconds. ``http``: an httpx.Client to send through instead (a FastAPI
    TestClient, say), its base URL and headers as they are."""

    def __init__(self, base_url: str = "", api_key: str | None = None, timeout: float = 120.0,
                 http: httpx.Client | None = None) -> None:
        self.http = http or httpx.Client(base_url=base_url.rstrip("/"), headers=_headers(api_key), timeout=timeout)

    def __enter__(self) -> Larimar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _send(self, call: Call[T]) -> T:
        r = check(self.http.send(call.request(self.http)))
        return call.read(r.json() if r.content else None)

    def ready(self) -> bool:
        """Whether the models are loaded and the store answers (GET /readyz is 200)."""
        return self.http.get("/readyz").status_code == 200

    def memories(self) -> list[MemorySummary]:
        return self._send(calls.memories())

    def memory(self, name: str) -> MemoryInfo:
        return self._send(calls.memory(name))

    def delete_memory(self, name: str) -> None:
        self._send(calls.delete_memory(name))

    def snapshot(self, name: str) -> MemoryInfo:
        return self._send(calls.snapshot(name))

    def purge(self, name: str) -> MemoryInfo:
        return self._send(calls.purge(name))

    def write(self, memory: str, text: str, metadata: dict[str, Any] | None = None,
              supersedes: list[str] | None = None) -> Fact:
        return self._send(calls.write(memory, text, metadata, supersedes))

    def write_batch(self, memory: str, facts: Iterable[str | dict[str, Any]]) -> list[Fact]:
        return self._send(calls.write_batch(memory, facts))

    def facts(self, memory: str, limit: int = 100, offset: int = 0) -> FactPage:
        return self._send(calls.facts(memory, limit, offset))

    def search(self, memory: str, q: str, limit: int = 10) -> list[Fact]:
        return self._send(calls.search(memory, q, limit))

    def fact(self, memory: str, fact_id: str) -> Fact:
        return self._send(calls.fact(memory, fact_id))

    def update(self, memory: str, fact_id: str, text: str | None = None,
               metadata: dict[str, Any] | None = None) -> Fact:
        return self._send(calls.update(memory, fact_id, text, metadata))

    def forget(self, memory: str, fact_id: str) -> None:
        self._send(calls.forget(memory, fact_id))

    def query(self, memory: str, prompt: str, max_new_tokens: int | None = None,
              memory_mode: MemoryMode = "auto") -> Answer:
        return self._send(calls.query(memory, prompt, max_new_tokens, memory_mode))

    def score(self, memory: str, prompt: str, candidates: list[str], memory_mode: MemoryMode = "auto") -> Scores:
        return self._send(calls.score(memory, prompt, candidates, memory_mode))

    def export(self, memory: str, latents: bool = False) -> Iterator[dict[str, Any]]:
        """The memory's facts as export records, read as they stream in."""
        r = self.http.send(calls.export(memory, latents).request(self.http), stream=True)
        try:
            if r.is_error:
                r.read()
                check(r)
            for line in r.iter_lines():
                if line.strip():
                    yield json.loads(line)
        finally:
            r.close()

    def import_(self, memory: str, records: bytes | Iterable[dict[str, Any]], keep_ids: bool = True) -> int:
        """Load export records (or an export file's bytes); returns how many facts were written."""
        return self._send(calls.import_(memory, records, keep_ids))

    def add_document(self, memory: str, text: str, title: str | None = None, metadata: dict[str, Any] | None = None,
                     wait: bool = False, poll_s: float = 0.5) -> Document:
        """Write a long text as pieces; ``wait``: return once it is no longer ingesting (ready or failed)."""
        doc = self._send(calls.add_document(memory, text, title, metadata))
        while wait and doc.status == "ingesting":
            time.sleep(poll_s)
            doc = self.document(memory, doc.id)
        return doc

    def documents(self, memory: str) -> list[Document]:
        return self._send(calls.documents(memory))

    def document(self, memory: str, doc_id: str) -> Document:
        return self._send(calls.document(memory, doc_id))

    def delete_document(self, memory: str, doc_id: str) -> None:
        """Forget every piece of the document, then the document."""
        self._send(calls.delete_document(memory, doc_id))


class AsyncLarimar:
    """The same client for asyncio: every method is awaited (``export`` is an async iterator)."""

    def __init__(self, base_url: str = "", api_key: str | None = None, timeout: float = 120.0,
                 http: httpx.AsyncClient | None = None) -> None:
        self.http = http or httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=_headers(api_key),
                                              timeout=timeout)

    async def __aenter__(self) -> AsyncLarimar:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.http.aclose()

    async def _send(self, call: Call[T]) -> T:
        r = check(await self.http.send(call.request(self.http)))
        return call.read(r.json() if r.content else None)

    async def ready(self) -> bool:
        return (await self.http.get("/readyz")).status_code == 200

    async def memories(self) -> list[MemorySummary]:
        return await self._send(calls.memories())

    async def memory(self, name: str) -> MemoryInfo:
        return await self._send(calls.memory(name))

    async def delete_memory(self, name: str) -> None:
        await self._send(calls.delete_memory(name))

    async def snapshot(self, name: str) -> MemoryInfo:
        return await self._send(calls.snapshot(name))

    async def purge(self, name: str) -> MemoryInfo:
        return await self._send(calls.purge(name))

    async def write(self, memory: str, text: str, metadata: dict[str, Any] | None = None,
                    supersedes: list[str] | None = None) -> Fact:
        return await self._send(calls.write(memory, text, metadata, supersedes))

    async def write_batch(self, memory: str, facts: Iterable[str | dict[str, Any]]) -> list[Fact]:
        return await self._send(calls.write_batch(memory, facts))

    async def facts(self, memory: str, limit: int = 100, offset: int = 0) -> FactPage:
        return await self._send(calls.facts(memory, limit, offset))

    async def search(self, memory: str, q: str, limit: int = 10) -> list[Fact]:
        return await self._send(calls.search(memory, q, limit))

    async def fact(self, memory: str, fact_id: str) -> Fact:
        return await self._send(calls.fact(memory, fact_id))

    async def update(self, memory: str, fact_id: str, text: str | None = None,
                     metadata: dict[str, Any] | None = None) -> Fact:
        return await self._send(calls.update(memory, fact_id, text, metadata))

    async def forget(self, memory: str, fact_id: str) -> None:
        await self._send(calls.forget(memory, fact_id))

    async def query(self, memory: str, prompt: str, max_new_tokens: int | None = None,
                    memory_mode: MemoryMode = "auto") -> Answer:
        return await self._send(calls.query(memory, prompt, max_new_tokens, memory_mode))

    async def score(self, memory: str, prompt: str, candidates: list[str],
                    memory_mode: MemoryMode = "auto") -> Scores:
        return await self._send(calls.score(memory, prompt, candidates, memory_mode))

    async def export(self, memory: str, latents: bool = False) -> AsyncIterator[dict[str, Any]]:
        r = await self.http.send(calls.export(memory, latents).request(self.http), stream=True)
        try:
            if r.is_error:
                await r.aread()
                check(r)
            async for line in r.aiter_lines():
                if line.strip():
                    yield json.loads(line)
        finally:
            await r.aclose()

    async def import_(self, memory: str, records: bytes | Iterable[dict[str, Any]], keep_ids: bool = True) -> int:
        return await self._send(calls.import_(memory, records, keep_ids))

    async def add_document(self, memory: str, text: str, title: str | None = None,
                           metadata: dict[str, Any] | None = None, wait: bool = False, poll_s: float = 0.5
                           ) -> Document:
        doc = await self._send(calls.add_document(memory, text, title, metadata))
        while wait and doc.status == "ingesting":
            await asyncio.sleep(poll_s)
            doc = await self.document(memory, doc.id)
        return doc

    async def documents(self, memory: str) -> list[Document]:
        return await self._send(calls.documents(memory))

    async def document(self, memory: str, doc_id: str) -> Document:
        return await self._send(calls.document(memory, doc_id))

    async def delete_document(self, memory: str, doc_id: str) -> None:
        await self._send(calls.delete_document(memory, doc_id))
