"""Real clients against a real ``larimar serve`` process: this project's Python client (client/, ``pip install
./client``), the OpenAI Python client on the OpenAI-compatible routes, and the MCP SDK's client on /mcp."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import httpx2
import openai
import pytest
from larimar_client import AsyncLarimar, Larimar, LarimarError
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from bench.processes import serving

KEY = "client-test-key-0123"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    keys = [{"key": KEY, "role": "admin", "memories": ["*"]},
            {"key": "reader-key-0123", "role": "read", "memories": ["cl-*"]}]
    with serving(tmp_path_factory.mktemp("client"), keys) as url:
        yield url


def test_sync_client_covers_every_route(base: str) -> None:
    with Larimar(base, api_key=KEY) as lm:
        assert lm.ready()
        lyon = lm.write("cl-a", "The capital of France is Lyon.", metadata={"source": "client"})
        assert lyon.memory == "cl-a" and lyon.metadata == {"source": "client"} and lyon.conflicts == []
        batch = lm.write_batch("cl-a", ["Ada Quill works as a pilot.", {"text": "Bananas are blue."}])
        assert [f.text for f in batch] == ["Ada Quill works as a pilot.", "Bananas are blue."]
        marseille = lm.write("cl-a", "The capital of France is Marseille.")
        assert [c.id for c in marseille.conflicts] == [lyon.id]
        page = lm.facts("cl-a", limit=2)
        assert page.total == 4 and len(page.facts) == 2 and page.facts[0].id == lyon.id
        assert lm.search("cl-a", "Who flies planes?", limit=1)[0].text == "Ada Quill works as a pilot."
        lm.forget("cl-a", marseille.id)
        answer = lm.query("cl-a", "What is the capital of France?", max_new_tokens=12)
        assert answer.in_scope and "Lyon" in answer.answer and answer.facts[0].id == lyon.id
        off = lm.query("cl-a", "What is the capital of France?", max_new_tokens=12, memory_mode="off")
        assert not off.in_scope and "Lyon" not in off.answer
        scores = lm.score("cl-a", "The capital of France is", ["Lyon", "Paris"])
        assert scores.in_scope and scores.scores[0].logprob > scores.scores[1].logprob
        assert lm.update("cl-a", lyon.id, metadata={"checked": True}).metadata == {"checked": True}
        assert lm.fact("cl-a", lyon.id).metadata == {"checked": True}
        records = list(lm.export("cl-a"))
        assert [r["id"] for r in records] == [lyon.id, *(f.id for f in batch)]
        assert lm.import_("cl-b", records) == 3 and lm.memory("cl-b").facts == 3
        assert {m.name for m in lm.memories()} >= {"cl-a", "cl-b"}
        assert lm.snapshot("cl-b").log_entries == 0 and lm.purge("cl-a").erasure == "complete"
        lm.delete_memory("cl-b")
        with pytest.raises(LarimarError) as e:
            lm.memory("cl-b")
        assert e.value.status == 404 and "does not exist" in e.value.detail
        with pytest.raises(LarimarError) as e:
            lm.write("cl-a", "   ")
        assert e.value.status == 422 and "must not be empty" in e.value.detail
        with pytest.raises(LarimarError) as e:
            list(lm.export("nope"))
        assert e.value.status == 404
    with Larimar(base, api_key="reader-key-0123") as reader, pytest.raises(LarimarError) as e:
        reader.write("cl-a", "Ice is hot.")
    assert e.value.status == 403 and "role read" in e.value.detail
    with Larimar(base, api_key="wrong-key-0123") as stranger, pytest.raises(LarimarError) as e:
        stranger.memories()
    assert e.value.status == 401


def test_async_client_does_the_same(base: str) -> None:
    async def run() -> None:
        async with AsyncLarimar(base, api_key=KEY) as lm:
            assert await lm.ready()
            f = await lm.write("cl-async", "Bo Rind plays the oboe.")
            await lm.write_batch("cl-async", ["Ice is hot."])
            answer = await lm.query("cl-async", "Which instrument does Bo Rind play?", max_new_tokens=8)
            assert answer.in_scope and "oboe" in answer.answer
            assert [r["id"] async for r in lm.export("cl-async")][0] == f.id
            assert (await lm.update("cl-async", f.id, text="Bo Rind plays the harp.")).text.endswith("harp.")
            assert (await lm.facts("cl-async")).total == 2 and (await lm.search("cl-async", "harp", 1))[0].id == f.id
            await lm.forget("cl-async", f.id)
            with pytest.raises(LarimarError) as e:
                await lm.fact("cl-async", f.id)
            assert e.value.status == 404
            await lm.delete_memory("cl-async")

    asyncio.run(run())


def test_clients_write_follow_query_and_delete_documents(base: str) -> None:
    lines = [f"Room {i} of the east wing was repainted in shade number {i * 7} last spring." for i in range(300)]
    lines.insert(150, "The Velstrand Bridge was painted bright orange by Ottilie Brask in 1931.")
    text = " ".join(lines)
    with Larimar(base, api_key=KEY) as lm:
        doc = lm.add_document("cl-docs", text, title="Wing notes", wait=True)
        assert doc.status == "ready" and doc.written == doc.pieces == 301 and doc.title == "Wing notes"
        assert [d.id for d in lm.documents("cl-docs")] == [doc.id] and lm.document("cl-docs", doc.id).chars == len(text)
        answer = lm.query("cl-docs", "Who painted the Velstrand Bridge?", max_new_tokens=12)
        src = answer.facts[0].source
        assert "Brask" in answer.answer and src is not None and src["document"] == doc.id
        assert text[src["start"] : src["end"]] == answer.facts[0].text
        lm.delete_document("cl-docs", doc.id)
        assert lm.documents("cl-docs") == [] and lm.memory("cl-docs").facts == 0
        with pytest.raises(LarimarError) as e:
            lm.add_document("cl-docs", " ")
        assert e.value.status == 422

    async def run() -> None:
        async with AsyncLarimar(base, api_key=KEY) as lm:
            doc = await lm.add_document("cl-docs", text, wait=True)
            assert doc.status == "ready" and (await lm.document("cl-docs", doc.id)).written == 301
            await lm.delete_document("cl-docs", doc.id)
            assert await lm.documents("cl-docs") == []

    asyncio.run(run())


# What the client must never bring along: the service's own packages and its heavy runtimes.
SERVER_PACKAGES = ("service", "models", "memory_core", "training", "bench", "torch", "transformers")
# Run isolated (-I: no cwd, PYTHONPATH or user site on sys.path); argv[4:] go first on sys.path.
CLIENT_CHECK = """
import importlib.util, json, sys
sys.path[:0] = sys.argv[4:]
import larimar_client
from larimar_client import Larimar
with Larimar(sys.argv[1], api_key=sys.argv[2]) as lm:
    ready, memories = lm.ready(), [m.name for m in lm.memories()]
server = sys.argv[3].split(",")
print(json.dumps({"file": larimar_client.__file__, "ready": ready, "memories": memories,
                  "imported": sorted(m for m in sys.modules if m.split(".")[0] in server),
                  "importable": sorted(m for m in server if importlib.util.find_spec(m) is not None)}))
"""


def _pip(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=timeout)


def test_the_client_installs_on_its_own(base: str, tmp_path: Path) -> None:
    """``pip install ./client`` into a fresh venv that holds none of this repo's packages: pip brings what the
    client declares, and the installed client talks to the service without importing any of it."""
    src = tmp_path / "client"  # a copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(Path(__file__).resolve().parents[1] / "client", src,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"

    built = _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src))
    assert built.returncode == 0, built.stdout + built.stderr
    wheels = list((tmp_path / "dist").glob("larimar_client-*.whl"))
    assert len(wheels) == 1, wheels
    installed = _pip("--python", str(python), "install", str(wheels[0]))  # with its dependencies, from the index
    if installed.returncode != 0:
        probe = _pip("download", "--no-deps", "-d", str(tmp_path / "probe"), "pip", timeout=120)
        if probe.returncode != 0:
            pytest.skip(f"pip cannot reach a package index: {probe.stderr.strip()[-400:]}")
    assert installed.returncode == 0, installed.stdout + installed.stderr

    def check(interpreter: Path | str, *first_on_path: str) -> dict:
        argv = [str(interpreter), "-I", "-c", CLIENT_CHECK, base, KEY, ",".join(SERVER_PACKAGES), *first_on_path]
        run = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        return json.loads(run.stdout)

    alone = check(python)
    installed_at = Path(alone["file"]).resolve().parents[1]
    assert installed_at.is_relative_to(venv.resolve()), alone["file"]  # not the repo's editable copy
    assert alone["importable"] == [], alone  # so the client above ran without any of them
    assert alone["imported"] == [] and alone["ready"] is True and isinstance(alone["memories"], list), alone
    # the same installed client beside the service (this venv: all of them importable) still imports none of them
    beside = check(sys.executable, str(installed_at))
    assert Path(beside["file"]).resolve().parents[1] == installed_at, beside["file"]
    assert set(beside["importable"]) >= {"service", "torch"}, beside
    assert beside["imported"] == [] and beside["ready"] is True, beside


def test_openai_client_chats_with_memory_streams_and_lists_models(base: str) -> None:
    with Larimar(base, api_key=KEY) as lm:
        lm.write("cl-chat", "The capital of France is Lyon.")
    oa = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY)
    assert {"larimar", "larimar/cl-chat"} <= {m.id for m in oa.models.list()}
    ask = [{"role": "user", "content": "What is the capital of France?"}]
    r = oa.chat.completions.create(model="larimar/cl-chat", messages=ask, max_tokens=16, temperature=0)
    extra = r.model_extra["larimar"]
    assert "Lyon" in r.choices[0].message.content and r.choices[0].finish_reason == "stop"
    assert extra["in_scope"] and extra["facts"][0]["text"] == "The capital of France is Lyon."
    assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 16
    # the memory as a body field; a conversation whose last turn asks; the plain model without memory
    via_body = oa.chat.completions.create(model="larimar", messages=ask, max_tokens=16,
                                          extra_body={"memory": "cl-chat"})
    assert via_body.choices[0].message.content == r.choices[0].message.content
    turns = [{"role": "system", "content": "You are a geography tutor."},
             {"role": "user", "content": "I have a question about Europe."},
             {"role": "assistant", "content": "Sure, go ahead."}, *ask]
    assert "Lyon" in oa.chat.completions.create(model="larimar/cl-chat", messages=turns, max_tokens=16
                                                ).choices[0].message.content
    plain = oa.chat.completions.create(model="larimar", messages=ask, max_tokens=16)
    assert "Lyon" not in plain.choices[0].message.content and not plain.model_extra["larimar"]["in_scope"]
    # anything else gets the memory-off answer
    other = [{"role": "user", "content": "How many legs does a spider have?"}]
    on, off = (oa.chat.completions.create(model=m, messages=other, max_tokens=24)
               for m in ("larimar/cl-chat", "larimar"))
    assert on.choices[0].message.content == off.choices[0].message.content and not on.model_extra["larimar"]["in_scope"]
    # streamed: pieces as they come, the same answer, then the finish reason and usage
    chunks = list(oa.chat.completions.create(model="larimar/cl-chat", messages=ask, max_tokens=16, stream=True,
                                             stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert text == r.choices[0].message.content and len(pieces) >= 2
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    # stop strings end the answer, left out of it, streamed or not
    cut = oa.chat.completions.create(model="larimar/cl-chat", messages=ask, max_tokens=16, stop=["y"])
    assert cut.choices[0].message.content == "L" and cut.choices[0].finish_reason == "stop"
    streamed_cut = oa.chat.completions.create(model="larimar/cl-chat", messages=ask, max_tokens=16, stop=["y"],
                                              stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed_cut if c.choices) == "L"
    # sampling: repeatable with a seed
    a, b = (oa.chat.completions.create(model="larimar", messages=other, max_tokens=12, temperature=0.9, seed=7)
            for _ in range(2))
    assert a.choices[0].message.content == b.choices[0].message.content
    # errors the client raises as its own exceptions
    with pytest.raises(openai.NotFoundError):
        oa.chat.completions.create(model="larimar/nope", messages=ask)
    with pytest.raises(openai.NotFoundError):
        oa.chat.completions.create(model="gpt-4o", messages=ask)
    with pytest.raises(openai.UnprocessableEntityError):
        oa.chat.completions.create(model="larimar/cl-chat", messages=[{"role": "assistant", "content": "Hi"}])
    with pytest.raises(openai.NotFoundError):
        list(oa.chat.completions.create(model="larimar/nope", messages=ask, stream=True))
    reader = openai.OpenAI(base_url=f"{base}/v1", api_key="reader-key-0123")  # reaches cl-* only
    assert reader.chat.completions.create(model="larimar/cl-chat", messages=ask, max_tokens=4).choices
    with Larimar(base, api_key=KEY) as lm:
        lm.write("other-team", "Ada Quill works as a pilot.")
    with pytest.raises(openai.PermissionDeniedError):
        reader.chat.completions.create(model="larimar/other-team", messages=ask)
    assert "larimar/other-team" not in {m.id for m in reader.models.list()}


def test_mcp_client_lists_tools_writes_queries_searches_and_forgets(base: str) -> None:
    async def session(key: str, calls: list[tuple[str, dict]]) -> list:
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as http, \
                Client(streamable_http_client(f"{base}/mcp", http_client=http)) as mcp:
            out: list = [sorted(t.name for t in (await mcp.list_tools()).tools)]
            for name, args in calls:
                out.append(await mcp.call_tool(name, args))
            return out

    fact = {"memory": "cl-mcp", "text": "Bo Rind plays the oboe."}
    tools, wrote, asked, found, listed = asyncio.run(session(KEY, [
        ("write_fact", fact), ("query", {"memory": "cl-mcp", "prompt": "Which instrument does Bo Rind play?",
                                         "max_new_tokens": 8}),
        ("search_facts", {"memory": "cl-mcp", "q": "oboe player"}), ("list_memories", {})]))
    assert tools == ["add_document", "document_status", "forget_document", "forget_fact", "list_memories", "query",
                     "search_facts", "write_fact"]
    assert not wrote.is_error and wrote.structured_content["text"] == fact["text"]
    fid = wrote.structured_content["id"]
    assert asked.structured_content["in_scope"] and "oboe" in asked.structured_content["answer"]
    assert found.structured_content["facts"][0]["id"] == fid
    assert "cl-mcp" in {m["name"] for m in listed.structured_content["memories"]}
    with Larimar(base, api_key=KEY) as lm:
        assert lm.fact("cl-mcp", fid).text == fact["text"]  # the same store the REST routes read
    # the reader key: reads its memories, may not write, does not reach others; refusals carry their reason
    _, denied, other, read = asyncio.run(session("reader-key-0123", [
        ("write_fact", fact), ("search_facts", {"memory": "other-team"}), ("search_facts", {"memory": "cl-mcp"})]))
    assert denied.is_error and "role read" in denied.content[0].text
    assert other.is_error and "does not reach memory 'other-team'" in other.content[0].text
    assert not read.is_error and read.structured_content["total"] == 1
    _, gone, again, missing = asyncio.run(session(KEY, [
        ("forget_fact", {"memory": "cl-mcp", "fact_id": fid}), ("forget_fact", {"memory": "cl-mcp", "fact_id": fid}),
        ("query", {"memory": "nope", "prompt": "Hi"})]))
    assert gone.structured_content == {"id": fid, "forgotten": True}
    assert again.is_error and "is not in memory" in again.content[0].text
    assert missing.is_error and "does not exist" in missing.content[0].text
    # documents: written, cited by an answer, forgotten
    note = "Minutes of the spring meeting. The Quarrington Rowing Club chose a blue heron named Percival as its mascot."
    _, doc = asyncio.run(session(KEY, [("add_document", {"memory": "cl-mcp-doc", "text": note, "title": "Minutes"})]))
    doc_id = doc.structured_content["id"]
    assert doc.structured_content["status"] == "ready" and doc.structured_content["pieces"] == 2
    _, status, cited, dropped, denied_doc = asyncio.run(session(KEY, [
        ("document_status", {"memory": "cl-mcp-doc", "document_id": doc_id}),
        ("query", {"memory": "cl-mcp-doc", "prompt": "What is the mascot of the Quarrington Rowing Club?"}),
        ("forget_document", {"memory": "cl-mcp-doc", "document_id": doc_id}),
        ("document_status", {"memory": "cl-mcp-doc", "document_id": doc_id})]))
    assert status.structured_content["written"] == 2
    assert cited.structured_content["facts"][0]["source"]["document"] == doc_id
    assert dropped.structured_content == {"id": doc_id, "deleted": True}
    assert denied_doc.is_error and "is not in memory" in denied_doc.content[0].text
    _, refused = asyncio.run(session("reader-key-0123", [("add_document", {"memory": "cl-x", "text": note})]))
    assert refused.is_error and "role read" in refused.content[0].text
    # no key, or a wrong one: refused before MCP
    for headers in ({}, {"Authorization": "Bearer wrong-key-0123"}):
        r = httpx.post(f"{base}/mcp/", headers=headers | {"Accept": "application/json, text/event-stream"},
                       json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert r.status_code == 401
