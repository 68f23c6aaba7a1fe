"""The real server process: write, SIGKILL, start again, find every acknowledged fact and the same answers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from bench.processes import ServiceProcess

PROMPTS = ["What is the capital of France?", "What colour are bananas?", "Who wrote Hamlet?"]


@contextmanager
def server(store_url: str, log_path: Path) -> Iterator[str]:
    """``larimar serve`` as a child process; yields its base URL once /readyz says ready, then kills it."""
    proc = ServiceProcess(log_path, LARIMAR_STORE_URL=store_url, LARIMAR_SNAPSHOT_EVERY="4")
    try:
        proc.start(timeout=120)
        yield proc.base
    finally:
        proc.kill()  # no shutdown hook runs: a crash


@pytest.mark.parametrize("backend", ["redis", "file"])
def test_sigkill_loses_no_acknowledged_write(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    store_url = request.getfixturevalue("redis_url") if backend == "redis" else f"file://{tmp_path / 'store'}"
    log = tmp_path / "server.log"
    facts = ["The capital of France is Lyon.", "Bananas are blue.", "Hamlet was written by Ada Lovelace.",
             "Ice is hot.", "Snow is green.", "Rust is a metal."]
    with server(store_url, log) as base, httpx.Client(base_url=base, timeout=60) as c:
        ids = [c.post("/v1/memories/crash/facts", json={"text": t}).json()["id"] for t in facts]
        batch = c.post("/v1/memories/crash/facts/batch", json={"facts": [{"text": "Water boils at 20 C."}]}).json()
        assert c.delete(f"/v1/memories/crash/facts/{ids[3]}").status_code == 200
        before = [c.post("/v1/memories/crash/query", json={"prompt": p, "max_new_tokens": 16}).json()
                  for p in PROMPTS]
        listed = c.get("/v1/memories/crash/facts").json()
    # killed here, with log entries not yet compacted (snapshot every 4)
    assert listed["total"] == 6
    assert {f["id"] for f in listed["facts"]} == (set(ids) - {ids[3]}) | {batch["facts"][0]["id"]}

    with server(store_url, log) as base, httpx.Client(base_url=base, timeout=60) as c:
        assert c.get("/v1/memories/crash/facts").json() == listed
        after = [c.post("/v1/memories/crash/query", json={"prompt": p, "max_new_tokens": 16}).json()
                 for p in PROMPTS]
        for a, b in zip(before, after, strict=True):
            assert (a["answer"], a["in_scope"], a["facts"]) == (b["answer"], b["in_scope"], b["facts"])
        assert before[0]["in_scope"] and "Lyon" in before[0]["answer"]
