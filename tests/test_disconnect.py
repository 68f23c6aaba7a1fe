"""A client that goes stops its generation: the LLM's slot is free for the next request at once, not after the
abandoned answer's last token (service/cancel.py). Only a real connection shows this, hence uvicorn."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx

STORY = [{"role": "user", "content": "Write a very long story about a dragon, with many chapters."}]


def _gone(base: str, path: str, body: dict, stream: bool) -> None:
    """Send a request that asks for a long answer, then go: after 0.7 s, or after the first streamed events."""
    try:
        if stream:
            with httpx.stream("POST", base + path, json=body | {"stream": True}, timeout=60) as r:
                assert r.status_code == 200
                for i, _ in enumerate(r.iter_lines()):
                    if i == 3:
                        break
        else:
            httpx.post(base + path, json=body, timeout=0.7)
            raise AssertionError("the long answer came within 0.7 s: nothing to cut")
    except httpx.TimeoutException:
        pass


def _stopped(base: str, route: str) -> int:
    """Requests of ``route`` answered 499 (stopped because the client went), from /metrics."""
    key = f'larimar_http_requests_total{{method="POST",route="{route}",status="499"}}'
    lines = [ln for ln in httpx.get(base + "/metrics").text.splitlines() if ln.startswith(key)]
    return int(float(lines[0].split()[-1])) if lines else 0


def test_a_client_that_goes_frees_the_llm_for_the_next_request(make_server: Callable, tmp_path: Path) -> None:
    with make_server(f"file://{tmp_path / 'store'}", llm_concurrency=1, llm_queue=4) as base:
        model = httpx.get(base + "/v1/models").json()["data"][0]["id"]
        assert httpx.post(base + "/v1/memories/d/facts", json={"text": "Ada Quill flies."}).status_code == 201
        chat = {"model": model, "messages": STORY, "max_tokens": 256}
        query = {"prompt": STORY[0]["content"], "max_new_tokens": 256, "memory_mode": "off"}
        cases = [("/v1/chat/completions", chat, False), ("/v1/chat/completions", chat, True),
                 ("/v1/memories/d/query", query, False)]
        for path, body, stream in cases:
            _gone(base, path, body, stream)
            # one slot: without the cut this request waits for the 256-token answer nobody reads (~10 s here)
            r = httpx.post(base + "/v1/chat/completions", json=chat | {"max_tokens": 1}, timeout=120)
            assert r.status_code == 200
            assert r.json()["larimar"]["timings_ms"]["admission"] < 1500, (path, stream)
        # a streamed answer has already sent its 200: only the other two count as 499
        assert _stopped(base, "/v1/chat/completions") == 1
        assert _stopped(base, "/v1/memories/{memory}/query") == 1
