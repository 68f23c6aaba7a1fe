"""Generation on a real LLM engine (``LARIMAR_LLM_URL``): llama.cpp's OpenAI-compatible server (PyPI
``llama-cpp-python[server]``, built from source by scripts/bootstrap.sh) serving the default GGUF file. Memory,
scope and lookup stay in the service; the engine gets the prompt with the recalled facts."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from bench.processes import free_port
from models.decoders import facts_block
from models.paths import DEFAULT_LLM, resolve

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed (scripts/bootstrap.sh)")
    port = free_port()
    log = tmp_path_factory.mktemp("engine") / "llama.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(resolve(DEFAULT_LLM)),
                                 "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096"],
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(600):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/models").status_code == 200:
                    break
            assert proc.poll() is None, log.read_text()[-2000:]
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def ask_engine(url: str, content: str) -> str:
    r = httpx.post(url + "/chat/completions", timeout=120, json={
        "messages": [{"role": "user", "content": content}], "max_tokens": 16, "temperature": 0.0})
    return r.json()["choices"][0]["message"]["content"].strip()


def test_answers_are_the_engines_for_the_prompt_with_the_recalled_facts(make_server: Callable, engine: str,
                                                                        tmp_path: Path) -> None:
    with make_server(f"file://{tmp_path / 'store'}", llm_url=engine) as base:
        m = base + "/v1/memories/e"
        assert httpx.post(m + "/facts", json={"text": "The capital of France is Lyon."}).status_code == 201
        r = httpx.post(m + "/query", json={"prompt": QUESTION, "max_new_tokens": 16}, timeout=120).json()
        assert r["in_scope"] and r["facts"][0]["text"] == "The capital of France is Lyon."
        assert "Lyon" in r["answer"], "the engine read the recalled fact"
        off = httpx.post(m + "/query", json={"prompt": QUESTION, "max_new_tokens": 16, "memory_mode": "off"},
                         timeout=120).json()
        assert "Lyon" not in off["answer"] and not off["facts"], "memory off: the engine's own answer"
        # the prompt is the context decoder's: the engine asked it directly agrees (llama.cpp reuses a cached
        # prefix, which can move a borderline greedy step: this fact's answer is not borderline)
        fact = facts_block(("The capital of France is Lyon.",))
        assert "Lyon" in ask_engine(engine, f"{fact}\nUsing the new fact, answer: {QUESTION}")

        streamed = ""
        body = {"model": "larimar/e", "stream": True, "max_tokens": 16,
                "messages": [{"role": "user", "content": QUESTION}]}
        with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=120) as s:
            for line in s.iter_lines():
                if line.startswith("data: {"):
                    streamed += "".join(c["delta"].get("content") or "" for c in json.loads(line[6:])["choices"])
        assert "Lyon" in streamed, "streamed through, the fact read"
        listed = httpx.get(base + "/v1/models").json()["data"]
        assert {m["id"]: m["larimar"] for m in listed}["larimar/e"] == {
            "generation": "engine", "answer_bias": False}


def test_an_engine_out_of_reach_gets_503(make_server: Callable, tmp_path: Path) -> None:
    with make_server(f"file://{tmp_path / 'store'}", llm_url=f"http://127.0.0.1:{free_port()}/v1") as base:
        r = httpx.post(base + "/v1/chat/completions", timeout=60,
                       json={"model": "larimar", "messages": [{"role": "user", "content": QUESTION}]})
        assert r.status_code == 503 and "LLM engine" in r.json()["detail"]
