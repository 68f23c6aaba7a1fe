"""The Python client (client/, ``pip install ./client``) against a real ``larimar serve`` process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from larimar_client import AsyncLarimar, Larimar, LarimarError

from bench.processes import ServiceProcess

KEY = "client-test-key-0123"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("client")
    keys = root / "keys.json"
    keys.write_text(json.dumps([{"key": KEY, "role": "admin", "memories": ["*"]},
                                {"key": "reader-key-0123", "role": "read", "memories": ["cl-*"]}]))
    proc = ServiceProcess(root / "server.log", LARIMAR_STORE_URL=f"file://{root / 'store'}",
                          LARIMAR_API_KEYS_FILE=str(keys))
    try:
        proc.start(timeout=180)
        yield proc.base
    finally:
        proc.stop()


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


def test_the_client_installs_on_its_own() -> None:
    """``pip install ./client`` needs httpx alone: the client imports nothing of the service."""
    root = Path(__file__).resolve().parents[1] / "client"
    pyproject = (root / "pyproject.toml").read_text()
    assert 'dependencies = ["httpx>=0.27"]' in pyproject
    imported = {line.split()[1].split(".")[0] for p in (root / "larimar_client").glob("*.py")
                for line in p.read_text().splitlines() if line.startswith(("import ", "from "))}
    assert imported <= {"__future__", "json", "collections", "dataclasses", "typing", "urllib", "httpx",
                        "larimar_client"}, imported
