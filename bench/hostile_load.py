"""Hostile load against a real ``larimar serve``: does the service stay responsive, bounded and correct when
many clients misbehave at once?

The guarantees README "Running it exposed" states are each tested by a unit test in isolation; this
benchmark checks them together, over HTTP, against one real server process:

1. **Baseline.** A memory is seeded with ~200 facts (bench/generation/items.py), then 2 well-behaved clients
   send queries back to back for ``--baseline-seconds``: answered queries/s of an LLM kept busy.
2. **Hostile load.** ``--clients`` asyncio clients (one ``httpx.AsyncClient`` and one API key each) pick
   actions at random by weight for ``--seconds``: queries, chats (whole, streamed to the end, streamed and cut
   after a chunk or two), single and batch writes, forgets of facts the same client saw acknowledged,
   document uploads of a few KB, bursts past the rate limit, and hostile requests (bodies over the limit,
   64 KB stop strings, 200-message chats, deeply nested metadata and JSON, lone surrogates as JSON escapes,
   invalid JSON, bad or foreign keys). Every request is recorded: kind, status, latency, time.
   Meanwhile a prober in a process of its own GETs /healthz every 50 ms on its own connection, and the
   server's RSS (and threads, CPU time) is sampled every 0.5 s.
3. **Verification** after the load has drained and settled: every acknowledged write (2xx) must be readable
   by id and every acknowledged forget (2xx) must be a 404; 5xx other than 503 must not occur.

Goals (exit status 1 when one fails): /healthz p99 < 100 ms, no 5xx other than 503, no lost write, no forgotten
fact still present, no transport error on a non-hostile request (a hang or a dropped connection), every hostile
request refused with a 4xx, the server alive and ready afterwards.

Why one API key per client (LARIMAR_API_KEYS_FILE; ``--keys``): every client runs on loopback, so without keys
they would all share the rate-limit bucket of the one address 127.0.0.1; a real deployment gives each client its
own key, hence its own bucket, which is the harder case for the server (64 x 100 requests/s allowed).
``--keys shared`` (one key for all) and ``--keys none`` (no keys: the one address's bucket) meet the rate limit
far more often. ``--checkout DIR`` serves another checkout (an older version, or a clean copy while this one is
being edited); the results name the commit.

Retry policy: after a 429 or 503 a client waits what ``Retry-After`` says, capped at ``--max-backoff`` (a
client waiting the full 30 s the queue may advertise would leave the server idle); ``--impolite`` of the
clients ignore it and come back after 0.1 s.

Caveat: the load generator and the prober run on the same machine as the server, so on a small machine they
take CPU from it; the results record how much (``cpu``).

    python -m bench.hostile_load --clients 64 --seconds 60 [--baseline-seconds 30] \
        [--out bench/results/hostile_load.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import datetime as dt
import gzip
import json
import logging
import multiprocessing as mp
import os
import platform
import random
import re
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.generation.items import build, unrelated
from bench.processes import REPO, ServiceProcess

log = logging.getLogger("hostile_load")

MEMORY = "hostile"
OTHER_MEMORY = "elsewhere"  # a memory the client keys do not reach: 403
RESULTS = REPO / "bench" / "results" / "hostile_load.json"
JSON_HEADERS = {"content-type": "application/json"}
TIMEOUT = httpx.Timeout(120.0, connect=10.0)  # a queued generation may wait LARIMAR_LLM_WAIT_S (30 s), then run
HEALTHZ_INTERVAL_S = 0.05
HEALTHZ_GOAL_S = 0.100
RSS_BOUND_MIB = 4096  # the bound the README states for the default settings: models, batches and buffers
RSS_INTERVAL_S = 0.5
CHAT_MAX_TOKENS = 32
FLOOD_PARALLEL = 32  # connections one client's burst uses at once (its requests are cheap GETs)

# Action weights: how often a client picks each (relative). Generation actions are slow (they queue for the one
# LLM slot a 2-core machine gets), so they dominate time even at these weights.
WEIGHTS: dict[str, float] = {
    "query": 20,
    "chat": 8,
    "chat_stream": 5,  # read to [DONE]
    "chat_stream_cut": 5,  # disconnect after the first chunk or two
    "write": 15,
    "write_batch": 6,
    "forget": 8,
    "purge": 1,  # erase forgotten facts from the store's files now (coalesced: a burst shares one store purge)
    "document": 3,
    "hostile": 12,
    "flood": 0.3,  # a burst of cheap GETs past the key's bucket: 429s
}
KEY_MODES = {
    "per-client": f"one API key per client (LARIMAR_API_KEYS_FILE, role write, memory {MEMORY!r}): each has its own "
                  "rate-limit bucket, as distinct clients of a deployment would; the baseline clients have keys of "
                  "their own",
    "shared": "one API key shared by every load client (one rate-limit bucket for all, as one tenant's many "
              "workers); the baseline clients have keys of their own",
    "none": "no keys configured: every client shares the rate-limit bucket of the one address 127.0.0.1",
}
ANSWERED_KINDS = ("query", "chat", "chat_stream")  # the throughput that counts: answers read whole
GENERATION_KINDS = ("query", "chat", "chat_stream", "chat_stream_cut")

# Statuses outside HTTP's range that the records use.
TRANSPORT_ERROR = 0  # no response: connect/read error, timeout, connection dropped
BROKEN_STREAM = -1  # a 200 stream that ended without [DONE]
CANCELLED = -2  # still in flight when the drain timed out (outcome unknown)


# ---------------------------------------------------------------------------------------------------------
# records


@dataclass(slots=True)
class Record:
    """One request as a client saw it. ``t`` is its start in seconds since the load began."""

    t: float
    kind: str
    status: int
    latency: float
    client: int
    retry_after: str | None = None
    error: str = ""

    @property
    def end(self) -> float:
        return self.t + self.latency


@dataclass
class Ledger:
    """What the server acknowledged, to check afterwards: ids written (2xx), ids forgotten (2xx), and ids whose
    forget has an unknown outcome (no response), which are checked by nobody."""

    written: dict[str, str] = field(default_factory=dict)  # id -> text, acknowledged and not forgotten
    forgotten: dict[str, str] = field(default_factory=dict)  # id -> text, forget acknowledged
    ambiguous: set[str] = field(default_factory=set)
    documents: dict[str, int] = field(default_factory=dict)  # id -> pieces, acknowledged ready (201)
    forget_404: list[str] = field(default_factory=list)  # an acknowledged fact the server said it did not hold
    acknowledged_writes: int = 0
    unknown_writes: int = 0  # writes with no response: nothing to check


def pct(values: Iterable[float], q: float) -> float | None:
    """The ``q``-quantile (0..1) with linear interpolation; None for no values."""
    xs = sorted(values)
    if not xs:
        return None
    pos = (len(xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 2)


# ---------------------------------------------------------------------------------------------------------
# content: facts, questions, documents


SYLLABLES = ["ka", "ro", "vel", "tan", "mi", "dor", "sa", "len", "qu", "ir", "bo", "nex", "tha", "ul", "pre", "zo"]
THINGS = ["lighthouse", "orchard", "violin", "observatory", "ferry", "library", "glacier", "bakery", "tram", "mill"]
COLOURS = ["amber", "teal", "crimson", "ochre", "silver", "indigo", "olive", "scarlet"]


def name(rng: random.Random, parts: int = 3) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(parts)).capitalize()


def fact_text(rng: random.Random, client: int, n: int) -> str:
    """A fact no other write states (the client and its counter are in it), in the shape users write."""
    return (f"The {rng.choice(THINGS)} of {name(rng)} number {client}-{n} was painted {rng.choice(COLOURS)} by "
            f"{name(rng, 2)} {name(rng)} in {rng.randint(1800, 2020)}.")


def document_text(rng: random.Random, chars: int = 3000) -> str:
    """A few KB of prose, one fact a sentence, as a user's notes would be."""
    out: list[str] = []
    while sum(len(s) + 1 for s in out) < chars:
        out.append(f"The {rng.choice(THINGS)} in {name(rng)} was built by {name(rng, 2)} {name(rng)} in "
                   f"{rng.randint(1700, 2020)} and painted {rng.choice(COLOURS)}.")
    return " ".join(out)


@dataclass(frozen=True)
class Content:
    """Seed facts and the prompts that ask about them (plus prompts no fact answers)."""

    facts: list[str]
    questions: list[str]

    @classmethod
    def build(cls, n_facts: int = 200) -> Content:
        items = [*build("heldout"), *build("dev"), *build("reworded")][:n_facts]
        questions = [it.prompt("question") for it in items] + unrelated("heldout")
        return cls([it.fact for it in items], questions)


# ---------------------------------------------------------------------------------------------------------
# hostile requests


@dataclass(frozen=True)
class Hostile:
    """A request built to be refused, and the statuses that count as a refusal."""

    sub: str
    method: str
    path: str
    content: bytes | Callable[[], AsyncIterator[bytes]]
    expect: tuple[int, ...]
    headers: dict[str, str] | None = None  # None: the client's own (its key)


def auth(key: str) -> dict[str, str]:
    """The header that names ``key`` (none with ``--keys none``: no keys configured)."""
    return {"authorization": f"Bearer {key}"} if key else {}


def _raw(obj: Any) -> bytes:
    """JSON as ASCII, so a lone surrogate travels as the escape ``\\ud800`` (httpx's json= cannot encode it)."""
    return json.dumps(obj, ensure_ascii=True).encode()


def hostile_request(rng: random.Random, max_body: int, own_key: str) -> Hostile:
    """One of the hostile shapes, at random (those about keys only when keys are configured)."""
    facts = f"/v1/memories/{MEMORY}/facts"
    chat = "/v1/chat/completions"
    model = f"larimar/{MEMORY}"
    user = {"role": "user", "content": "What is the capital of France?"}
    sub = rng.choice(["oversized", "oversized_chunked", "long_stop", "many_messages", "deep_metadata",
                      "deep_json", "surrogate_text", "surrogate_metadata", "surrogate_chat", "surrogate_mistyped",
                      "invalid_json", "too_many_tokens", *(("bad_key", "foreign_memory") if own_key else ())])
    if sub == "oversized":  # Content-Length over LARIMAR_MAX_BODY_BYTES: 413 before the body is read
        return Hostile(sub, "POST", facts, b'{"text": "' + b"a" * (max_body + 1024) + b'"}', (413,))
    if sub == "oversized_chunked":  # no Content-Length: refused once what arrived passes the limit

        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"text": "'
            for _ in range(max_body // 65536 + 2):
                yield b"a" * 65536
            yield b'"}'

        return Hostile(sub, "POST", facts, chunks, (413,))
    if sub == "long_stop":
        return Hostile(sub, "POST", chat, _raw({"model": model, "messages": [user], "stop": ["x" * 65536]}), (422,))
    if sub == "many_messages":
        turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}"} for i in range(199)]
        return Hostile(sub, "POST", chat, _raw({"model": model, "messages": [*turns, user]}), (422,))
    if sub == "deep_metadata":  # past the 8 levels metadata may nest
        meta: Any = "leaf"
        for _ in range(rng.choice([9, 40, 400])):
            meta = {"k": meta}
        return Hostile(sub, "POST", facts, _raw({"text": "Deep metadata is refused.", "metadata": meta}), (422,))
    if sub == "deep_json":  # nesting past any parser's recursion limit
        depth = 100_000
        return Hostile(sub, "POST", facts, b'{"text": "x", "metadata": {"a": ' + b"[" * depth + b"]" * depth + b"}}",
                       (400, 422))
    if sub == "surrogate_text":
        return Hostile(sub, "POST", facts, _raw({"text": "Lone \ud800 surrogates are not text."}), (422,))
    if sub == "surrogate_metadata":
        return Hostile(sub, "POST", facts, _raw({"text": "Metadata with a lone surrogate.",
                                                 "metadata": {"note": "\udfff"}}), (422,))
    if sub == "surrogate_chat":
        return Hostile(sub, "POST", chat, _raw({"model": model, "messages": [{"role": "user", "content": "hi \ud800"}],
                                                "stop": ["\ud800"]}), (422,))
    if sub == "surrogate_mistyped":  # a wrong type: the 422 echoes the input, surrogate and all
        return Hostile(sub, "POST", f"/v1/memories/{MEMORY}/query", _raw({"prompt": ["\ud800"]}), (422,))
    if sub == "invalid_json":
        return Hostile(sub, "POST", facts, b'{"text": "unterminated', (422, 400))
    if sub == "too_many_tokens":
        return Hostile(sub, "POST", chat, _raw({"model": model, "messages": [user], "max_tokens": 10**9}), (422,))
    if sub == "bad_key":  # counted against the client address's bucket: 401, or 429 past it
        return Hostile(sub, "GET", facts, b"", (401,), {"authorization": "Bearer " + secrets.token_hex(16)})
    return Hostile(sub, "GET", f"/v1/memories/{OTHER_MEMORY}/facts", b"", (403,),  # a memory its key does not reach
                   {"authorization": f"Bearer {own_key}"})


# ---------------------------------------------------------------------------------------------------------
# clients


class LoadClient:
    """One client: its own connection(s) and API key, picking actions at random until the deadline."""

    def __init__(self, idx: int, base: str, key: str, origin: float, deadline: float, records: list[Record],
                 ledger: Ledger, content: Content, seeded: list[str], weights: dict[str, float], polite: bool,
                 max_backoff: float, max_body: int, flood_size: int, seed: int) -> None:
        self.idx, self.base, self.key = idx, base, key
        self.origin, self.deadline = origin, deadline
        self.records, self.ledger, self.content, self.seeded = records, ledger, content, seeded
        self.kinds, self.weights = list(weights), list(weights.values())
        self.polite, self.max_backoff, self.max_body, self.flood_size = polite, max_backoff, max_body, flood_size
        self.rng = random.Random(seed)
        self.own: list[str] = []  # ids this client wrote, saw acknowledged and has not forgotten
        self.n = 0  # facts written so far (for unique texts)
        self.http: httpx.AsyncClient | None = None
        self.last: Record | None = None  # this client's latest record

    # -- plumbing

    def now(self) -> float:
        return time.monotonic() - self.origin

    def record(self, kind: str, status: int, t0: float, retry_after: str | None = None, error: str = "") -> None:
        if status == TRANSPORT_ERROR and self.last is not None and self.last.status >= 500 and self.last.status != 503:
            error += f" after a {self.last.status} to this client"  # uvicorn drops the connection after a 500
        self.last = Record(t0, kind, status, self.now() - t0, self.idx, retry_after, error)
        self.records.append(self.last)

    async def send(self, kind: str, method: str, path: str, content: Any = None, headers: dict[str, str] | None = None
                   ) -> httpx.Response | None:
        """One request, recorded; None when no response came (the record says why)."""
        assert self.http is not None
        t0 = self.now()
        try:
            r = await self.http.request(method, path, content=content() if callable(content) else content,
                                        headers=headers)
        except httpx.HTTPError as e:
            self.record(kind, TRANSPORT_ERROR, t0, error=type(e).__name__)
            return None
        except asyncio.CancelledError:
            self.record(kind, CANCELLED, t0, error="cancelled")
            raise
        self.record(kind, r.status_code, t0, r.headers.get("retry-after"))
        return r

    async def post(self, kind: str, path: str, body: Any) -> httpx.Response | None:
        return await self.send(kind, "POST", path, json.dumps(body).encode(), JSON_HEADERS)

    async def backoff(self, r: httpx.Response | None) -> None:
        """After a refusal (429, 503): wait what Retry-After says, capped; an impolite client barely waits."""
        if r is None or r.status_code not in (429, 503):
            return
        if not self.polite:
            await asyncio.sleep(0.1)
            return
        try:
            wait = float(r.headers.get("retry-after", "1"))
        except ValueError:
            wait = 1.0
        await asyncio.sleep(min(wait, self.max_backoff) * self.rng.uniform(0.5, 1.0))

    # -- actions

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=FLOOD_PARALLEL, max_keepalive_connections=FLOOD_PARALLEL)
        async with httpx.AsyncClient(base_url=self.base, headers=auth(self.key), timeout=TIMEOUT,
                                     limits=limits) as http:
            self.http = http
            await asyncio.sleep(self.rng.uniform(0, 0.5))  # not all at the same millisecond
            while self.now() < self.deadline:
                kind = self.rng.choices(self.kinds, self.weights)[0]
                if kind == "forget" and not self.own:
                    kind = "write"
                r = await getattr(self, "do_" + kind)()
                await self.backoff(r)

    async def do_query(self) -> httpx.Response | None:
        return await self.post("query", f"/v1/memories/{MEMORY}/query",
                               {"prompt": self.rng.choice(self.content.questions)})

    def chat_body(self, stream: bool) -> dict[str, Any]:
        messages = [{"role": "user", "content": self.rng.choice(self.content.questions)}]
        if self.rng.random() < 0.3:
            messages.insert(0, {"role": "system", "content": "Answer in one short sentence."})
        body: dict[str, Any] = {"messages": messages, "max_tokens": CHAT_MAX_TOKENS, "stream": stream}
        if self.rng.random() < 0.5:
            body["model"] = f"larimar/{MEMORY}"
        else:
            body |= {"model": "larimar", "memory": MEMORY}
        if self.rng.random() < 0.3:
            body |= {"temperature": 0.7, "seed": self.rng.randint(0, 10**6)}
        return body

    async def do_chat(self) -> httpx.Response | None:
        return await self.post("chat", "/v1/chat/completions", self.chat_body(stream=False))

    async def do_chat_stream(self) -> httpx.Response | None:
        return await self.stream(None)

    async def do_chat_stream_cut(self) -> httpx.Response | None:
        return await self.stream(self.rng.choice([1, 2]))

    async def stream(self, cut_after: int | None) -> httpx.Response | None:
        """A streamed chat read to ``[DONE]``, or dropped after ``cut_after`` events (closing the connection)."""
        assert self.http is not None
        kind = "chat_stream" if cut_after is None else "chat_stream_cut"
        body = json.dumps(self.chat_body(stream=True)).encode()
        t0 = self.now()
        try:
            async with self.http.stream("POST", "/v1/chat/completions", content=body, headers=JSON_HEADERS) as r:
                if r.status_code != 200:
                    await r.aread()
                    self.record(kind, r.status_code, t0, r.headers.get("retry-after"))
                    return r
                events, done = 0, False
                async for line in r.aiter_lines():
                    if line == "data: [DONE]":
                        done = True
                        break
                    if line.startswith("data: "):
                        events += 1
                        if cut_after is not None and events >= cut_after:
                            break
                ok = done or (cut_after is not None and events >= cut_after)
                self.record(kind, 200 if ok else BROKEN_STREAM, t0, error="" if ok else f"ended after {events}")
                return r
        except httpx.HTTPError as e:
            self.record(kind, TRANSPORT_ERROR, t0, error=type(e).__name__)
        except asyncio.CancelledError:
            self.record(kind, CANCELLED, t0, error="cancelled")
            raise
        return None

    def new_fact(self) -> dict[str, Any]:
        self.n += 1
        meta = {"client": self.idx, "n": self.n, "tags": self.rng.sample(COLOURS, 2)}
        return {"text": fact_text(self.rng, self.idx, self.n), "metadata": meta}

    def acknowledged(self, facts: list[dict[str, Any]]) -> None:
        for f in facts:
            self.ledger.acknowledged_writes += 1
            self.ledger.written[f["id"]] = f["text"]
            self.own.append(f["id"])

    async def do_write(self) -> httpx.Response | None:
        r = await self.post("write", f"/v1/memories/{MEMORY}/facts", self.new_fact())
        if r is None:
            self.ledger.unknown_writes += 1
        elif r.is_success:
            self.acknowledged([r.json()])
        return r

    async def do_write_batch(self) -> httpx.Response | None:
        facts = [self.new_fact() for _ in range(self.rng.randint(2, 8))]
        r = await self.post("write_batch", f"/v1/memories/{MEMORY}/facts/batch", {"facts": facts})
        if r is None:
            self.ledger.unknown_writes += len(facts)
        elif r.is_success:
            self.acknowledged(r.json()["facts"])
        return r

    async def do_purge(self) -> httpx.Response | None:
        return await self.send("purge", "POST", f"/v1/memories/{MEMORY}/purge")

    async def do_forget(self) -> httpx.Response | None:
        """Forget one (DELETE) or a few (POST .../forget) of this client's own acknowledged facts."""
        k = 1 if self.rng.random() < 0.7 or len(self.own) < 2 else min(len(self.own), self.rng.randint(2, 4))
        ids = [self.own.pop(self.rng.randrange(len(self.own))) for _ in range(k)]
        r: httpx.Response | None = None
        try:
            if k == 1:
                r = await self.send("forget", "DELETE", f"/v1/memories/{MEMORY}/facts/{ids[0]}")
            else:
                r = await self.post("forget", f"/v1/memories/{MEMORY}/facts/forget", {"ids": ids})
        finally:
            if r is None:  # no response (or cancelled): the outcome is unknown, so nobody checks these ids
                for i in ids:
                    self.ledger.ambiguous.add(i)
                    self.ledger.written.pop(i, None)
            elif r.is_success:
                for i in ids:
                    self.ledger.forgotten[i] = self.ledger.written.pop(i)
            elif r.status_code == 404:  # a fact the server acknowledged and never was asked to forget: the
                self.ledger.forget_404.extend(ids)  # ids stay in ``written``, so the verification reports them
            else:  # refused (429, 503...): still held
                self.own.extend(ids)
        return r

    async def do_document(self) -> httpx.Response | None:
        body = {"text": document_text(self.rng, self.rng.randint(2000, 5000)), "title": f"notes of {self.idx}"}
        r = await self.post("document", f"/v1/memories/{MEMORY}/documents", body)
        if r is not None and r.status_code == 201:
            doc = r.json()
            self.ledger.documents[doc["id"]] = doc["pieces"]
        return r

    async def do_hostile(self) -> httpx.Response | None:
        h = hostile_request(self.rng, self.max_body, self.key)
        headers = (h.headers or {}) | ({} if h.method == "GET" else JSON_HEADERS)
        r = await self.send("hostile:" + h.sub, h.method, h.path, h.content or None, headers)
        if r is not None and r.status_code not in (*h.expect, 429, 503) and self.last is not None:
            self.last.error = f"expected {'/'.join(map(str, h.expect))}: {r.text[:200]}"
        return r

    async def do_flood(self) -> httpx.Response | None:
        """A burst past this key's bucket (LARIMAR_RATE_BURST): cheap reads, FLOOD_PARALLEL at a time."""
        gate = asyncio.Semaphore(FLOOD_PARALLEL)
        ids = self.own or self.seeded

        async def one() -> httpx.Response | None:
            async with gate:
                return await self.send("flood", "GET", f"/v1/memories/{MEMORY}/facts/{self.rng.choice(ids)}")

        rs = await asyncio.gather(*(one() for _ in range(self.flood_size)))
        return next((r for r in rs if r is not None and r.status_code == 429), None)


# ---------------------------------------------------------------------------------------------------------
# observers: the /healthz prober (its own process) and the RSS sampler (a thread)


def probe_healthz(base: str, interval: float, stop: Any, ready: Any, out: Any) -> None:
    """GET /healthz every ``interval`` s on one kept-alive connection until ``stop``; puts [(start, latency,
    status)], starts on the (system-wide) monotonic clock.

    A process of its own, so the load generator's event loop and GIL never delay a probe: what it measures is
    the server (and the machine's scheduler), not the client."""
    samples: list[tuple[float, float, int]] = []
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    with httpx.Client(base_url=base, timeout=5.0, limits=limits) as c:
        nxt = time.monotonic()
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                status = c.get("/healthz").status_code
            except httpx.HTTPError:
                status = TRANSPORT_ERROR
            samples.append((t0, time.monotonic() - t0, status))
            ready.set()
            nxt += interval
            delay = nxt - time.monotonic()
            if delay > 0:
                stop.wait(delay)
            else:
                nxt = time.monotonic()  # fell behind: go on from now rather than burst to catch up
    out.put(samples)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo.extend(int(c) for c in (task / "children").read_text().split())
    return out


def proc_stats(pid: int) -> tuple[int, int, float]:
    """(RSS bytes, threads, CPU seconds) of ``pid`` and its descendants."""
    rss = threads = 0
    cpu = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for p in process_tree(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) * 1024
                elif line.startswith("Threads:"):
                    threads += int(line.split()[1])
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return rss, threads, cpu


class RssSampler(threading.Thread):
    """Samples the server's RSS, threads and CPU time every ``interval`` s: (t, rss, threads, cpu)."""

    def __init__(self, pid: int, origin: float, interval: float = RSS_INTERVAL_S) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid, self.origin, self.interval = pid, origin, interval
        self.samples: list[tuple[float, int, int, float]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            if not Path(f"/proc/{self.pid}").exists():
                return
            self.samples.append((time.monotonic() - self.origin, *proc_stats(self.pid)))
            self.halt.wait(self.interval)


# ---------------------------------------------------------------------------------------------------------
# phases


async def seed_memory(base: str, key: str, content: Content) -> list[str]:
    """Write the seed facts in one batch; returns their ids."""
    async with httpx.AsyncClient(base_url=base, headers=auth(key), timeout=TIMEOUT) as c:
        r = await c.post(f"/v1/memories/{MEMORY}/facts/batch", json={"facts": [{"text": t} for t in content.facts]})
        r.raise_for_status()
        # a memory the client keys may not reach (their 403), and a warm-up of each generation path
        (await c.post(f"/v1/memories/{OTHER_MEMORY}/facts", json={"text": "This memory is out of reach."})
         ).raise_for_status()
        (await c.post(f"/v1/memories/{MEMORY}/query", json={"prompt": content.questions[0]})).raise_for_status()
        (await c.post("/v1/chat/completions", json={"model": f"larimar/{MEMORY}", "max_tokens": 8,
                                                    "messages": [{"role": "user", "content": "Hello"}]})
         ).raise_for_status()
        return [f["id"] for f in r.json()["facts"]]


async def baseline(base: str, keys: list[str], content: Content, seconds: float) -> dict[str, Any]:
    """Well-behaved clients, queries back to back: the LLM kept busy, nothing else."""
    origin = time.monotonic()
    records: list[Record] = []

    async def client(i: int, key: str) -> None:
        rng = random.Random(1000 + i)
        async with httpx.AsyncClient(base_url=base, headers=auth(key), timeout=TIMEOUT) as c:
            while (t0 := time.monotonic() - origin) < seconds:
                try:
                    r = await c.post(f"/v1/memories/{MEMORY}/query", json={"prompt": rng.choice(content.questions)})
                    status = r.status_code
                except httpx.HTTPError:
                    status = TRANSPORT_ERROR
                records.append(Record(t0, "query", status, time.monotonic() - origin - t0, i))

    await asyncio.gather(*(client(i, k) for i, k in enumerate(keys)))
    answered = [r for r in records if r.status == 200 and r.end <= seconds]
    lat = [r.latency for r in records if r.status == 200]
    return {"clients": len(keys), "seconds": seconds, "requests": len(records), "answered": len(answered),
            "answered_per_s": round(len(answered) / seconds, 4),
            "statuses": dict(Counter(str(r.status) for r in records)),
            "latency_s": {"p50": round(pct(lat, 0.5) or 0, 3), "p99": round(pct(lat, 0.99) or 0, 3)}}


async def progress(records: list[Record], origin: float, seconds: float, rss: RssSampler) -> None:
    """A log line every 5 s: so a long run shows it is alive and how it is going."""
    while True:
        await asyncio.sleep(5)
        now = time.monotonic() - origin
        c = Counter(r.status for r in records)
        answered = sum(1 for r in records if r.status == 200 and r.kind in ANSWERED_KINDS)
        acked = sum(1 for r in records if r.kind.startswith("write") and 200 <= r.status < 300)
        mem = rss.samples[-1][1] / 2**20 if rss.samples else 0
        log.info("t=%5.1f/%gs requests=%d answered=%d writes=%d 429=%d 503=%d 5xx=%d errors=%d rss=%.0f MiB",
                 now, seconds, len(records), answered, acked, c[429], c[503],
                 sum(v for k, v in c.items() if k >= 500 and k != 503), c[TRANSPORT_ERROR], mem)


async def hostile_phase(base: str, keys: list[str], content: Content, seeded: list[str], args: argparse.Namespace,
                        max_body: int, pid: int) -> tuple[list[Record], Ledger, list, list, float]:
    """Run the clients against the server with the prober and the sampler watching. Returns the records, the
    ledger, the /healthz samples, the RSS samples and how long the drain took."""
    ctx = mp.get_context("spawn")
    stop, ready, out = ctx.Event(), ctx.Event(), ctx.Queue()
    prober = ctx.Process(target=probe_healthz, args=(base, HEALTHZ_INTERVAL_S, stop, ready, out),
                         name="healthz-prober", daemon=True)
    prober.start()
    if not ready.wait(60):
        raise RuntimeError("the /healthz prober did not start")
    origin = time.monotonic() + 1.0  # a second of probes and samples before the load
    rss = RssSampler(pid, origin)
    rss.start()
    await asyncio.sleep(1.0)

    records: list[Record] = []
    ledger = Ledger()
    weights = dict(WEIGHTS) | args.weights
    impolite = round(args.impolite * args.clients)
    clients = [LoadClient(i, base, keys[i], origin, args.seconds, records, ledger, content, seeded, weights,
                          polite=i >= impolite, max_backoff=args.max_backoff, max_body=max_body,
                          flood_size=args.flood_size, seed=args.seed * 10_000 + i) for i in range(args.clients)]
    log.info("hostile load: %d clients (%d impolite) for %g s", args.clients, impolite, args.seconds)
    ticker = asyncio.create_task(progress(records, origin, args.seconds, rss))
    tasks = [asyncio.create_task(c.run()) for c in clients]
    await asyncio.sleep(args.seconds)
    log.info("load stopped; draining requests in flight (at most %g s)", args.drain)
    t_stop = time.monotonic()
    done, pending = await asyncio.wait(tasks, timeout=args.drain)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for t in done:
        if t.exception() is not None:
            raise t.exception()  # a bug in this script, not in the server
    drain = time.monotonic() - t_stop
    ticker.cancel()
    if pending:
        log.warning("%d clients still in flight after %g s: cancelled", len(pending), args.drain)

    stop.set()
    healthz = out.get(timeout=30)
    prober.join(10)
    rss.halt.set()
    rss.join(5)
    return records, ledger, [(t - origin, lat, st) for t, lat, st in healthz if t >= origin], rss.samples, drain


async def verify(base: str, keys: list[str], ledger: Ledger) -> dict[str, Any]:
    """Every acknowledged write readable by id (same text), every acknowledged forget a 404; the requests go
    round the client keys so that no one key's rate limit slows the check."""
    todo = [(i, t, True) for i, t in ledger.written.items()] + [(i, t, False) for i, t in ledger.forgotten.items()]
    results: dict[str, Any] = {"present": 0, "lost": [], "wrong_text": [], "absent": 0, "still_present": [],
                               "unverified": []}
    gate = asyncio.Semaphore(8)
    clients = [httpx.AsyncClient(base_url=base, headers=auth(k), timeout=30.0) for k in dict.fromkeys(keys[:8])]

    async def check(n: int, fact_id: str, text: str, held: bool) -> None:
        c = clients[n % len(clients)]
        async with gate:
            for attempt in range(8):
                try:
                    r = await c.get(f"/v1/memories/{MEMORY}/facts/{fact_id}")
                except httpx.HTTPError:
                    r = None
                if r is not None and r.status_code not in (429, 503):
                    break
                await asyncio.sleep(0.2 * 2**attempt)
            else:
                results["unverified"].append(fact_id)
                return
        if held and r.status_code == 200:
            results["present"] += 1
            if r.json()["text"] != text:
                results["wrong_text"].append(fact_id)
        elif held:
            results["lost"].append({"id": fact_id, "status": r.status_code, "body": r.text[:200]})
        elif r.status_code == 404:
            results["absent"] += 1
        else:
            results["still_present"].append({"id": fact_id, "status": r.status_code, "body": r.text[:200]})

    try:
        await asyncio.gather(*(check(n, i, t, h) for n, (i, t, h) in enumerate(todo)))
        docs: dict[str, Any] = {"acknowledged": len(ledger.documents), "ready": 0, "bad": []}
        for doc_id, pieces in ledger.documents.items():
            r = await clients[0].get(f"/v1/memories/{MEMORY}/documents/{doc_id}")
            d = r.json() if r.status_code == 200 else {}
            if d.get("status") == "ready" and d.get("written") == pieces == d.get("pieces"):
                docs["ready"] += 1
            else:
                docs["bad"].append({"id": doc_id, "status": r.status_code, "body": r.text[:200]})
        results["documents"] = docs
        results["memory"] = (await clients[0].get(f"/v1/memories/{MEMORY}")).json()
    finally:
        for c in clients:
            await c.aclose()
    return results


# ---------------------------------------------------------------------------------------------------------
# summaries


def machine(checkout: Path) -> dict[str, Any]:
    """Where the numbers come from: enough to tell two runs' machines (and their load) apart, and the code the
    server ran (``checkout``'s commit, and whether its service code differs from it)."""
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.exists() else []
    mem = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal:")), "0") if Path("/proc/meminfo").exists() else "0"

    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=checkout, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_model": names[0] if names else platform.processor(), "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)), "mem_total_gib": round(int(mem) / 2**20, 1),
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain", "--", "service",
                                                                            "models", "memory_core", "bench")),
            "checkout": str(checkout), "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def server_settings(env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """The settings the server resolves from ``env`` (read in a subprocess with that environment, so this
    process never imports torch), and the LLM concurrency admission takes from them; keys left out."""
    code = ("import json, os; from service.settings import Settings; from service.admission import "
            "default_concurrency; s = Settings(); d = json.loads(s.model_dump_json(exclude={'api_keys'})); "
            "d['llm_concurrency_resolved'] = s.llm_concurrency or default_concurrency(s.resolved_device(), "
            "os.cpu_count() or 1); d['device_resolved'] = s.resolved_device(); print(json.dumps(d))")
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=os.environ | env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def tracebacks(log_path: Path, keep: int = 5) -> dict[str, Any]:
    """The server log's tracebacks, grouped by their last line (the exception), each with an excerpt: the request
    line logged before it, the frames in the project's own code, and the exception. A 500 leaves one whatever
    the client saw, and a recursion leaves thousands of frames, so the whole text would bury the cause."""
    lines = log_path.read_text(errors="replace").splitlines()
    groups: dict[str, dict[str, Any]] = {}
    i = 0
    while i < len(lines):
        if not lines[i].startswith("Traceback"):
            i += 1
            continue
        request = next((ln for ln in reversed(lines[max(0, i - 5) : i]) if '" 5' in ln or "HTTP/1.1" in ln), "")
        j = i + 1
        while j < len(lines) and not re.match(r"^(INFO|WARNING|ERROR|CRITICAL|DEBUG)[: ]|^\d{4}-\d\d-\d\d ", lines[j]):
            j += 1
        block = lines[i:j]
        exc = next((ln for ln in reversed(block) if ln and not ln.startswith((" ", "\t"))), block[-1])
        ours = [f"{ln.strip()}: {block[k + 1].strip() if k + 1 < len(block) else ''}" for k, ln in enumerate(block)
                if ln.startswith("  File") and any(f"/{d}/" in ln for d in ("service", "models", "memory_core"))]
        g = groups.setdefault(exc, {"exception": exc, "count": 0, "request": request.strip(),
                                    "project_frames": list(dict.fromkeys(ours))[:12]})
        g["count"] += 1
        i = j
    errors = [ln for ln in lines if ln.startswith(("ERROR", "CRITICAL")) or " ERROR " in ln or " CRITICAL " in ln]
    distinct = sorted(groups.values(), key=lambda g: -g["count"])
    return {"tracebacks": sum(g["count"] for g in distinct), "distinct": distinct[:keep],
            "error_lines": len(errors), "first_error_lines": errors[:keep]}


def per_kind(records: list[Record]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    by: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by[r.kind].append(r)
    for kind in sorted(by):
        rs = by[kind]
        ok = [r.latency for r in rs if 200 <= r.status < 300]
        out[kind] = {"n": len(rs), "statuses": dict(sorted(Counter(str(r.status) for r in rs).items())),
                     "latency_2xx_s": {"p50": _r3(pct(ok, 0.5)), "p99": _r3(pct(ok, 0.99)),
                                       "max": _r3(max(ok, default=None))},
                     "latency_all_s": {"p50": _r3(pct([r.latency for r in rs], 0.5)),
                                       "p99": _r3(pct([r.latency for r in rs], 0.99))}}
    return out


def _r3(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def timeseries(records: list[Record], seconds: float) -> dict[str, list]:
    """Per-second counts by what happened (by the second a request ended), for the plot."""
    n = int(max(seconds, max((r.end for r in records), default=seconds))) + 1
    series = {k: [0] * n for k in ("answered", "writes", "forgets", "refused_503", "refused_429", "other")}
    for r in records:
        s = min(n - 1, max(0, int(r.end)))
        if r.status == 200 and r.kind in ANSWERED_KINDS:
            series["answered"][s] += 1
        elif 200 <= r.status < 300 and (r.kind.startswith("write") or r.kind == "document"):
            series["writes"][s] += 1
        elif 200 <= r.status < 300 and r.kind == "forget":
            series["forgets"][s] += 1
        elif r.status == 503:
            series["refused_503"][s] += 1
        elif r.status == 429:
            series["refused_429"][s] += 1
        else:
            series["other"][s] += 1
    return {"second": list(range(n)), **series}


def summarize(args: argparse.Namespace, mach: dict, settings: dict, startup_s: float, base: dict,
              records: list[Record], ledger: Ledger, healthz: list, rss: list, drain: float, checked: dict,
              server_log: dict, alive: bool, ready_after: bool, cpu_client_s: float) -> dict[str, Any]:
    """Everything the JSON holds, the goals judged."""
    hz = [s[1] for s in healthz]
    hz_fail = sum(1 for s in healthz if s[2] != 200)
    all_answered = [r for r in records if r.status == 200 and r.kind in ANSWERED_KINDS]
    answered = [r for r in all_answered if r.end <= args.seconds]
    per_s = len(answered) / args.seconds
    other_5xx = [r for r in records if r.status >= 500 and r.status != 503]
    r503 = [r for r in records if r.status == 503]
    r429 = [r for r in records if r.status == 429]
    transport = [r for r in records if r.status in (TRANSPORT_ERROR, BROKEN_STREAM)]
    # a dropped connection right after a 500 is that 500's doing (uvicorn closes it), counted by its own goal
    transport_normal = [r for r in transport if not r.kind.startswith("hostile:") and "after a" not in r.error]
    accepted_hostile = [r for r in records if r.kind.startswith("hostile:") and 200 <= r.status < 300]
    unexpected_hostile = [r for r in records if r.kind.startswith("hostile:") and r.error.startswith("expected")]
    rss_mib = [s[1] / 2**20 for s in rss]
    goals = {
        "healthz_p99_under_100ms": bool(hz) and (pct(hz, 0.99) or 0) < HEALTHZ_GOAL_S and hz_fail == 0,
        "no_5xx_other_than_503": not other_5xx,
        "no_lost_write": not checked["lost"] and not checked["wrong_text"] and not ledger.forget_404
                         and not checked["documents"]["bad"],
        "no_forgotten_fact_present": not checked["still_present"],
        "no_transport_error_on_normal_requests": not transport_normal,
        "hostile_requests_refused": not accepted_hostile,
        "server_alive_and_ready_after": alive and ready_after,
        "peak_rss_under_bound": bool(rss_mib) and max(rss_mib) < RSS_BOUND_MIB,
        "answered_at_least_baseline": bool(base["answered_per_s"]) and per_s >= base["answered_per_s"],
    }
    return {
        "benchmark": "hostile_load",
        "machine": mach,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "server": {"settings": settings, "startup_s": round(startup_s, 2),
                   "env": {k: v for k, v in args.server_env.items() if "KEY" not in k}},
        "client_policy": {
            "keys": KEY_MODES[args.keys],
            "retry": f"after 429/503 wait Retry-After capped at {args.max_backoff} s (x U(0.5, 1)); "
                     f"{round(args.impolite * args.clients)} impolite clients wait 0.1 s instead",
            "weights": dict(WEIGHTS) | args.weights,
            "chat_max_tokens": CHAT_MAX_TOKENS, "query_max_new_tokens": settings.get("default_max_new_tokens"),
            "flood_size": args.flood_size, "timeout_s": TIMEOUT.read,
        },
        "baseline": base,
        "load": {
            "clients": args.clients, "seconds": args.seconds, "drain_s": round(drain, 2),
            "requests": len(records), "answered": len(answered), "answered_per_s": round(per_s, 4),
            # the queue the load left is answered during the drain: the LLM's rate over load and drain together
            "answered_with_drain_per_s": round(len(all_answered) / (args.seconds + drain), 4),
            "answered_vs_baseline": round(per_s / base["answered_per_s"], 3) if base["answered_per_s"] else None,
            "by_kind": per_kind(records),
            "status_503": {"n": len(r503), "with_retry_after": sum(1 for r in r503 if r.retry_after),
                           "after_waiting_over_1s": sum(1 for r in r503 if r.latency > 1.0),
                           "without_retry_after": sum(1 for r in r503 if not r.retry_after)},
            "status_429": {"n": len(r429), "with_retry_after": sum(1 for r in r429 if r.retry_after),
                           "without_retry_after": sum(1 for r in r429 if not r.retry_after)},
            "status_5xx_other": {"n": len(other_5xx),
                                 "kinds": dict(Counter(f"{r.kind} {r.status}" for r in other_5xx))},
            "transport_errors": {"n": len(transport), "on_normal_requests": len(transport_normal),
                                 "after_a_500": sum(1 for r in transport if "after a" in r.error),
                                 "kinds": dict(Counter(f"{r.kind} {r.status} {r.error}" for r in transport))},
            "cancelled_at_drain": sum(1 for r in records if r.status == CANCELLED),
            "hostile_accepted": dict(Counter(r.kind for r in accepted_hostile)),
            "hostile_unexpected_status": [{"kind": r.kind, "status": r.status, "detail": r.error}
                                          for r in unexpected_hostile[:20]],
        },
        "healthz": {"n": len(hz), "interval_ms": HEALTHZ_INTERVAL_S * 1000, "p50_ms": ms(pct(hz, 0.5)),
                    "p99_ms": ms(pct(hz, 0.99)), "max_ms": ms(max(hz, default=None)),
                    "over_100ms": sum(1 for x in hz if x >= HEALTHZ_GOAL_S), "failed": hz_fail},
        "rss": {"start_mib": round(rss_mib[0], 1) if rss_mib else None,
                "peak_mib": round(max(rss_mib), 1) if rss_mib else None,
                "end_mib": round(rss_mib[-1], 1) if rss_mib else None,
                "threads_start": rss[0][2] if rss else None, "threads_peak": max((s[2] for s in rss), default=None),
                "threads_end": rss[-1][2] if rss else None},
        "cpu": {"server_s": round(rss[-1][3] - rss[0][3], 1) if rss else None,
                "load_generator_s": round(cpu_client_s, 1),
                "wall_s": round(rss[-1][0] - rss[0][0], 1) if rss else None,
                "cores": mach["cpus_usable"]},
        "verification": {
            "writes_acknowledged": ledger.acknowledged_writes,
            "writes_checked": len(ledger.written), "writes_present": checked["present"],
            "writes_lost": checked["lost"][:20], "writes_wrong_text": checked["wrong_text"][:20],
            "forget_404_of_acknowledged": ledger.forget_404[:20],
            "forgets_acknowledged": len(ledger.forgotten), "forgets_absent": checked["absent"],
            "forgets_still_present": checked["still_present"][:20], "ambiguous_forgets": len(ledger.ambiguous),
            "writes_without_response": ledger.unknown_writes, "unverified": len(checked["unverified"]),
            "documents": checked["documents"], "memory": checked["memory"],
        },
        "server_log": server_log,
        "goals": goals,
        "passed": all(goals.values()),
        "timeseries": timeseries(records, args.seconds),
        "healthz_samples": [[round(t, 3), round(lat * 1000, 2), st] for t, lat, st in healthz],
        "rss_samples": [[round(t, 2), round(b / 2**20, 1), th, round(c, 2)] for t, b, th, c in rss],
    }


def markdown(res: dict[str, Any], png: Path, requests_csv: Path) -> str:
    m, load, hz, v = res["machine"], res["load"], res["healthz"], res["verification"]
    s = res["server"]["settings"]
    lines = [
        "# Hostile load",
        "",
        f"`python -m bench.hostile_load {' '.join(res['args']['argv'])}` on {m['date']}; verdict: "
        f"**{'PASSED' if res['passed'] else 'FAILED'}**. Raw: `{Path(res['args']['out']).name}`, every request: "
        f"`{requests_csv.name}`, plot: `{png.name}`.",
        "",
        f"- Machine: {m['cpu_model']}, {m['cpus_usable']} of {m['cpu_count']} CPUs usable, {m['mem_total_gib']} GiB, "
        f"{m['platform']}, Python {m['python']}; load average at start {m['load_average_at_start']}",
        f"- Code: {m['git_commit'][:12] or 'not a git checkout'}{' (working tree differs)' if m['git_dirty'] else ''}"
        + ("" if Path(m["checkout"]) == REPO else f", served from {m['checkout']}"),
        f"- Server: `larimar serve`, file store, device {s.get('device_resolved')}, LLM {s.get('llm')}, "
        f"LLM concurrency {s.get('llm_concurrency_resolved')} + queue {s.get('llm_queue')} (wait "
        f"{s.get('llm_wait_s')} s), rate {s.get('rate_per_s')}/s burst {s.get('rate_burst')} per key, body limit "
        f"{s.get('max_body_bytes')} B, torch threads {s.get('torch_threads') or 'default'}"
        + (f", env {res['server']['env']}" if res["server"]["env"] else ""),
        f"- Clients: {res['client_policy']['keys']}; {res['client_policy']['retry']}",
        f"- CPU over the load: server {res['cpu']['server_s']} s, load generator {res['cpu']['load_generator_s']} s, "
        f"in {res['cpu']['wall_s']} s wall on {res['cpu']['cores']} cores (the clients and prober share the "
        "machine)",
        "",
        "## Goals",
        "",
        "| goal | verdict |",
        "| --- | --- |",
        *[f"| {k.replace('_', ' ')} | {'pass' if ok else '**FAIL**'} |" for k, ok in res["goals"].items()],
        "",
        "## Numbers",
        "",
        f"- /healthz every {hz['interval_ms']:g} ms on its own connection (own process): {hz['n']} probes, p50 "
        f"{hz['p50_ms']} ms, p99 {hz['p99_ms']} ms, max {hz['max_ms']} ms, {hz['over_100ms']} at or over 100 ms, "
        f"{hz['failed']} failed",
        f"- Answered queries+chats: baseline ({res['baseline']['clients']} clients, queries only) "
        f"{res['baseline']['answered_per_s']:.3f}/s (p50 {res['baseline']['latency_s']['p50']} s); under hostile "
        f"load {load['answered_per_s']:.3f}/s = {load['answered_vs_baseline']} x baseline (over load and drain "
        f"together: {load['answered_with_drain_per_s']:.3f}/s)",
        f"- Requests: {load['requests']} in {load['seconds']:g} s (+ {load['drain_s']} s drain); 503: "
        f"{load['status_503']['n']} ({load['status_503']['without_retry_after']} without Retry-After, "
        f"{load['status_503']['after_waiting_over_1s']} after waiting in the queue over 1 s); 429: "
        f"{load['status_429']['n']} ({load['status_429']['without_retry_after']} without Retry-After); other 5xx: "
        f"{load['status_5xx_other']['n']}; transport errors: {load['transport_errors']['n']} "
        f"({load['transport_errors']['on_normal_requests']} on normal requests, "
        f"{load['transport_errors']['after_a_500']} on a connection the server dropped after a 500)",
        f"- Server RSS: {res['rss']['start_mib']} MiB at the start, peak {res['rss']['peak_mib']} MiB, "
        f"{res['rss']['end_mib']} MiB at the end; threads {res['rss']['threads_start']} -> peak "
        f"{res['rss']['threads_peak']} -> {res['rss']['threads_end']}",
        f"- Writes acknowledged {v['writes_acknowledged']}: checked {v['writes_checked']}, present "
        f"{v['writes_present']}, lost {len(v['writes_lost'])}; forgets acknowledged {v['forgets_acknowledged']}: "
        f"absent {v['forgets_absent']}, still present {len(v['forgets_still_present'])}; documents "
        f"{v['documents']['ready']}/{v['documents']['acknowledged']} ready; {v['ambiguous_forgets']} forgets "
        f"and {v['writes_without_response']} written facts without a response were not checked; memory now holds "
        f"{v['memory'].get('facts')} facts",
        f"- Server log: {res['server_log']['tracebacks']} tracebacks, {res['server_log']['error_lines']} ERROR lines",
        "",
        "## By kind",
        "",
        "| kind | n | statuses | 2xx p50 s | 2xx p99 s | all p50 s | all p99 s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *[f"| {k} | {d['n']} | {', '.join(f'{s}: {n}' for s, n in d['statuses'].items())} | "
          f"{_dash(d['latency_2xx_s']['p50'])} | {_dash(d['latency_2xx_s']['p99'])} | "
          f"{_dash(d['latency_all_s']['p50'])} | {_dash(d['latency_all_s']['p99'])} |"
          for k, d in load["by_kind"].items()],
        "",
        "Statuses 0: no response (transport error); -1: a stream that ended without [DONE]; -2: cancelled after "
        "the drain.",
    ]
    if load["hostile_unexpected_status"]:
        lines += ["", "## Hostile requests answered otherwise than expected", ""]
        lines += [f"- {h['kind']} -> {h['status']}: {h['detail']}" for h in load["hostile_unexpected_status"]]
    if res["server_log"]["distinct"]:
        lines += ["", "## Tracebacks in the server log (by exception)", ""]
        for g in res["server_log"]["distinct"]:
            lines += [f"- {g['count']} x `{g['exception']}` after `{g['request']}`, in:", "", "  ```",
                      *[f"  {f}" for f in g["project_frames"]], "  ```"]
    return "\n".join(lines) + "\n"


def _dash(x: float | None) -> str:
    return "-" if x is None else f"{x:g}"


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(10, 9), sharex=True,
                                        gridspec_kw={"height_ratios": [3, 3, 2]})
    hz = res["healthz_samples"]
    ax1.plot([s[0] for s in hz], [s[1] for s in hz], ".", ms=2, color="tab:blue", label="GET /healthz latency")
    ax1.axhline(100, color="tab:red", ls="--", lw=1, label="100 ms goal")
    ax1.set_yscale("log")
    ax1.set_ylabel("ms")
    ax1.set_title(f"/healthz every 50 ms: p50 {res['healthz']['p50_ms']} ms, p99 {res['healthz']['p99_ms']} ms, "
                  f"max {res['healthz']['max_ms']} ms")
    ax1.legend(loc="upper right", fontsize=8)

    ts = res["timeseries"]
    x = ts["second"]
    for key, colour, label in [("answered", "tab:green", "answered queries+chats"),
                               ("writes", "tab:blue", "acknowledged writes (+documents)"),
                               ("forgets", "tab:purple", "acknowledged forgets"),
                               ("refused_503", "tab:orange", "503 (LLM full)"),
                               ("refused_429", "tab:red", "429 (rate limit)")]:
        ax2.plot(x, ts[key], color=colour, label=label, lw=1.2, drawstyle="steps-post")
    ax2.axhline(res["baseline"]["answered_per_s"], color="tab:green", ls=":", lw=1,
                label=f"baseline answered/s ({res['baseline']['answered_per_s']:.2f})")
    ax2.axvline(res["load"]["seconds"], color="grey", ls="--", lw=1)
    ax2.set_yscale("symlog", linthresh=1)
    ax2.set_ylim(bottom=0)
    ax2.set_ylabel("per second")
    ax2.legend(loc="upper right", fontsize=7, ncol=2)

    rss = res["rss_samples"]
    ax3.plot([s[0] for s in rss], [s[1] for s in rss], color="tab:brown", label="server RSS")
    ax3.set_ylabel("RSS MiB")
    ax3b = ax3.twinx()
    ax3b.plot([s[0] for s in rss], [s[2] for s in rss], color="tab:gray", lw=1, ls="--", label="server threads")
    ax3b.set_ylabel("threads")
    ax3.axvline(res["load"]["seconds"], color="grey", ls="--", lw=1)
    ax3.set_xlabel("seconds since the hostile load began (dashed: load stops, drain follows)")
    h1, l1 = ax3.get_legend_handles_labels()
    h2, l2 = ax3b.get_legend_handles_labels()
    ax3.legend(h1 + h2, l1 + l2, loc="lower right", fontsize=8)
    fig.suptitle(f"Hostile load: {res['load']['clients']} clients, {res['load']['seconds']:g} s, "
                 f"{res['machine']['cpus_usable']} CPUs ({'passed' if res['passed'] else 'FAILED'})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_requests(records: list[Record], path: Path) -> None:
    """Every request, one CSV row each, gzipped (too many for the JSON)."""
    with gzip.open(path, "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_s", "kind", "status", "latency_s", "client", "retry_after", "error"])
        for r in sorted(records, key=lambda r: r.t):
            w.writerow([f"{r.t:.4f}", r.kind, r.status, f"{r.latency:.4f}", r.client, r.retry_after or "", r.error])


# ---------------------------------------------------------------------------------------------------------
# main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=60.0, help="hostile load duration")
    ap.add_argument("--baseline-seconds", type=float, default=30.0)
    ap.add_argument("--out", type=Path, default=RESULTS, help="JSON results; the .md, .png and "
                    ".requests.csv.gz go next to it")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--impolite", type=float, default=0.25, help="share of clients that ignore Retry-After")
    ap.add_argument("--max-backoff", type=float, default=2.0, help="longest Retry-After a polite client honours")
    ap.add_argument("--flood-size", type=int, default=350, help="requests in one burst (rate burst is 300)")
    ap.add_argument("--drain", type=float, default=90.0, help="longest wait for requests in flight at the end")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds between the drain and the verification")
    ap.add_argument("--weight", action="append", default=[], metavar="KIND=W",
                    help=f"override an action's weight ({', '.join(WEIGHTS)}); 0 turns it off")
    ap.add_argument("--env", action="append", default=[], metavar="LARIMAR_X=V", help="extra server setting")
    ap.add_argument("--keys", choices=list(KEY_MODES), default="per-client",
                    help="API keys, hence rate-limit buckets: " + "; ".join(f"{k}: {v}" for k, v in KEY_MODES.items()))
    ap.add_argument("--checkout", type=Path, default=REPO, help="serve from this checkout of the repository (an "
                    "older version, or a clean copy while this one is being edited); default: this one")
    ap.add_argument("--keep", action="store_true", help="keep the store and server log (kept anyway on failure)")
    args = ap.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    args.weights = {}
    for w in args.weight:
        k, _, v = w.partition("=")
        if k not in WEIGHTS:
            ap.error(f"--weight {w}: unknown kind {k!r}")
        args.weights[k] = float(v)
    args.server_env = dict(e.split("=", 1) for e in args.env)
    if args.clients < 1 or args.seconds <= 0 or args.baseline_seconds <= 0:
        ap.error("--clients, --seconds and --baseline-seconds must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    args = parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    mach = machine(args.checkout)
    tmp = Path(tempfile.mkdtemp(prefix="larimar-hostile-"))
    env = {"LARIMAR_STORE_URL": f"file://{tmp / 'store'}"}
    admin, base_keys, client_keys = "", ["", ""], [""] * args.clients  # --keys none
    if args.keys != "none":
        admin, base_keys = secrets.token_hex(16), [secrets.token_hex(16) for _ in range(2)]
        client_keys = ([secrets.token_hex(16) for _ in range(args.clients)] if args.keys == "per-client"
                       else [secrets.token_hex(16)] * args.clients)
        (tmp / "keys.json").write_text(json.dumps(
            [{"key": admin, "role": "admin", "memories": ["*"], "name": "bench-admin"}]
            + [{"key": k, "role": "read", "memories": [MEMORY], "name": f"baseline-{i}"}
               for i, k in enumerate(base_keys)]
            + [{"key": k, "role": "write", "memories": [MEMORY], "name": f"client-{i}"}
               for i, k in enumerate(dict.fromkeys(client_keys))]))
        env["LARIMAR_API_KEYS_FILE"] = str(tmp / "keys.json")
    env |= args.server_env
    settings = server_settings(env, args.checkout)
    server = ServiceProcess(tmp / "server.log", cwd=args.checkout, **env)
    log.info("starting larimar serve (log %s)", server.log_path)
    passed = False
    try:
        startup = server.start(timeout=300)
        assert server.proc is not None
        log.info("ready in %.1f s on %s (pid %d)", startup, server.base, server.proc.pid)
        content = Content.build()
        seeded = asyncio.run(seed_memory(server.base, admin, content))
        log.info("seeded %d facts; baseline: %d clients, queries back to back for %g s", len(seeded),
                 len(base_keys), args.baseline_seconds)
        base = asyncio.run(baseline(server.base, base_keys, content, args.baseline_seconds))
        log.info("baseline: %.3f answered queries/s (p50 %.2f s)", base["answered_per_s"], base["latency_s"]["p50"])
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        child0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        records, ledger, healthz, rss, drain = asyncio.run(hostile_phase(
            server.base, client_keys, content, seeded, args, settings["max_body_bytes"], server.proc.pid))
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        child1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the prober, once joined (the server is not reaped)
        cpu_client = (cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
                      + child1.ru_utime + child1.ru_stime - child0.ru_utime - child0.ru_stime)
        time.sleep(args.settle)
        alive = server.proc.poll() is None
        log.info("verifying %d acknowledged writes and %d forgets", len(ledger.written), len(ledger.forgotten))
        checked = asyncio.run(verify(server.base, client_keys, ledger)) if alive else {
            "present": 0, "lost": [{"id": "*", "status": "server died"}], "wrong_text": [], "absent": 0,
            "still_present": [], "unverified": [], "documents": {"acknowledged": 0, "ready": 0, "bad": []},
            "memory": {}}
        ready_after = False
        with contextlib.suppress(httpx.HTTPError):
            ready_after = httpx.get(server.base + "/readyz", timeout=10).status_code == 200
        server.stop()
        res = summarize(args, mach, settings, startup, base, records, ledger, healthz, rss, drain, checked,
                        tracebacks(server.log_path), alive, ready_after, cpu_client)
        passed = res["passed"]
        res["server_log"]["path"] = str(server.log_path) if (args.keep or not passed) else None
        md_path, png_path = args.out.with_suffix(".md"), args.out.with_suffix(".png")
        csv_path = args.out.with_name(args.out.stem + ".requests.csv.gz")
        args.out.write_text(json.dumps(res, indent=1))
        write_requests(records, csv_path)
        plot(res, png_path)
        md = markdown(res, png_path, csv_path)
        md_path.write_text(md)
        print(md)
        log.info("wrote %s, %s, %s, %s", args.out, md_path, png_path, csv_path)
    finally:
        server.stop()
        if passed and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log.warning("store and server log kept in %s", tmp)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
