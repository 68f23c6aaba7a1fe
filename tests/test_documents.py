"""Documents over HTTP, real models, both stores: a generated text of several thousand tokens in, recalled with
citations, deleted piece by piece with nothing left in the store's files, resumed after a restart."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from memory_core import hierarchical_read, read, write_episode
from models.chunking import split_document
from models.sentences import sentence_spans

BASE = "/v1/memories/docs"
NEEDLE = "The secret ingredient in Marlowe Quint's lemonade is smoked paprika."
QUESTION = "What is the secret ingredient in Marlowe Quint's lemonade?"

PEOPLE = ["the harbour master", "a young botanist", "the night porter", "an old clockmaker", "the village baker",
          "a travelling cellist", "the school librarian", "a retired sailor", "the mayor's cousin", "a quiet engineer"]
VERBS = ["repaired", "painted", "sold", "described", "measured", "photographed", "borrowed", "inspected"]
THINGS = ["the wooden pier", "a copper kettle", "the north window", "an unusual map", "the station clock",
          "a box of seeds", "the chapel bell", "a broken violin", "the garden gate", "a pile of letters"]
WHEN = ["before dawn", "after the storm", "on a quiet Sunday", "during the autumn fair", "late one evening",
        "in the first week of spring", "while the tide was out", "as the market closed"]


def document(sentences: int, seed: int = 0, needle_at: float = 0.6) -> str:
    """Made-up prose, one event per sentence (about 12 tokens each), with NEEDLE among them."""
    rng = random.Random(seed)
    out = [f"{rng.choice(PEOPLE).capitalize()} {rng.choice(VERBS)} {rng.choice(THINGS)} {rng.choice(WHEN)}."
           for _ in range(sentences)]
    out.insert(int(needle_at * sentences), NEEDLE)
    paragraphs = [" ".join(out[i : i + 7]) for i in range(0, len(out), 7)]
    return "\n\n".join(paragraphs)


def ready(c: TestClient, doc: dict, memory: str = "docs", timeout_s: float = 300) -> dict:
    deadline = time.monotonic() + timeout_s
    while doc["status"] == "ingesting" and time.monotonic() < deadline:
        time.sleep(0.1)
        doc = c.get(f"/v1/memories/{memory}/documents/{doc['id']}").json()
    return doc


# --- chunking and the hierarchical read (no models) -------------------------------------------


def words(texts: list[str]) -> list[int]:
    return [len(t.split()) for t in texts]


def test_pieces_cite_exact_spans_and_respect_the_token_limit() -> None:
    text = ("Dr. Smith met Mr. Jones at noon. Short one.\nThen they left for the harbour together!"
            "It rained.We stayed inside for the whole long afternoon. " + "word " * 40 + "end.\n\nA heading\n\n"
            "The last sentence of the text is here.")
    pieces = split_document(text, "sentences", 16, words)
    assert all(text[p.start : p.end] == p.text for p in pieces)
    assert pieces[0].text == "Dr. Smith met Mr. Jones at noon.", "a title's full stop ends no sentence"
    assert pieces[1].text.startswith("Short one.\nThen they"), "a sentence under four words joins the next"
    assert pieces[2].text.startswith("It rained.We"), "run-together sentences are split (then joined: short)"
    assert pieces[-1].text == "A heading\n\nThe last sentence of the text is here."
    assert max(words([p.text for p in pieces])) <= 16, "a sentence past the limit is cut at word boundaries"
    assert pieces[-1].text.endswith("is here."), "nothing is dropped at the end"
    covered = "".join(p.text for p in pieces).replace(" ", "").replace("\n", "")
    assert covered == text.replace(" ", "").replace("\n", ""), "every character is in one piece"
    chunks = split_document(text, "chunks", 16, words)
    assert len(chunks) < len(pieces) and all(text[p.start : p.end] == p.text for p in chunks)
    assert max(words([p.text for p in chunks])) <= 16
    assert sentence_spans("Hello.") == [(0, 6)]


def test_hierarchical_read_is_the_papers_memory_hierarchy() -> None:
    """The projection shortcut equals writing each segment into a memory and reading it (Algorithm 1), level by
    level, to round-off."""
    g = torch.Generator().manual_seed(0)
    Z = torch.nn.functional.normalize(torch.randn(45, 16, generator=g, dtype=torch.float64), dim=-1)  # (N, C)
    zq = torch.randn(2, 16, generator=g, dtype=torch.float64)  # (q, C)
    M0 = torch.randn(24, 16, generator=g, dtype=torch.float64)  # (K, C), K > segment

    def literal(level: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        while True:
            level = torch.stack([read(q[None], write_episode(level[i : i + 4], M0))[0][0]
                                 for i in range(0, len(level), 4)])
            if len(level) == 1:
                return level[0]

    got = hierarchical_read(zq, Z, 4)  # (q, C)
    for i in range(2):
        assert torch.allclose(got[i], literal(Z, zq[i]), atol=1e-8)
    with pytest.raises(ValueError):
        hierarchical_read(zq, Z, 17)


# --- the routes --------------------------------------------------------------------------------


def test_document_in_recalled_with_its_source_then_deleted_leaving_nothing(
        make_client, store_url: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:  # noqa: ANN001
    text = document(420)  # about 5,500 tokens: more pieces than one call ingests, so a background job
    root = (request.getfixturevalue("redis_server").workdir if store_url.startswith("redis")
            else tmp_path / "store")
    with make_client(store_url, purge_delay_s=3600) as c:
        kept = c.post(f"{BASE}/facts", json={"text": "The capital of France is Lyon."}).json()
        r = c.post(f"{BASE}/documents", json={"text": text, "title": "Harbour notes", "metadata": {"lang": "en"}})
        assert r.status_code == 202, r.text
        doc = r.json()
        assert r.headers["location"] == f"{BASE}/documents/{doc['id']}"
        assert doc["status"] == "ingesting" and doc["pieces"] > 256 and "text" not in doc
        doc = ready(c, doc)
        assert doc["status"] == "ready" and doc["written"] == doc["pieces"] and doc["metadata"] == {"lang": "en"}
        assert c.get(BASE).json()["facts"] == doc["pieces"] + 1
        assert [d["id"] for d in c.get(f"{BASE}/documents").json()["documents"]] == [doc["id"]]

        ans = c.post(f"{BASE}/query", json={"prompt": QUESTION, "max_new_tokens": 16}).json()
        assert ans["in_scope"] and "paprika" in ans["answer"].lower()
        src = ans["facts"][0]["source"]
        assert src["document"] == doc["id"] and src["title"] == "Harbour notes"
        assert text[src["start"] : src["end"]] == NEEDLE == ans["facts"][0]["text"]
        assert ans["facts"][0]["id"] == f"{doc['id']}-{src['piece']}"
        plain = c.post(f"{BASE}/query", json={"prompt": "What is the capital of France?"}).json()
        assert plain["facts"][0]["source"] is None and "Lyon" in plain["answer"]

        r = c.delete(f"{BASE}/documents/{doc['id']}")
        assert r.status_code == 200 and r.json() == {"id": doc["id"], "deleted": True}
        assert c.get(f"{BASE}/documents/{doc['id']}").status_code == 404
        assert c.get(f"{BASE}/documents").json()["documents"] == []
        assert [f["id"] for f in c.get(f"{BASE}/facts").json()["facts"]] == [kept["id"]], "every piece forgotten"
        gone = c.post(f"{BASE}/query", json={"prompt": QUESTION, "max_new_tokens": 16}).json()
        assert "paprika" not in gone["answer"].lower() and all(f["source"] is None for f in gone["facts"])
        assert c.post(f"{BASE}/purge").json()["erasure"] == "complete"
        marks = [b"Marlowe Quint", b"travelling cellist", b"Harbour notes"]
        held = [str(p) for p in root.rglob("*") if p.is_file() and any(m in p.read_bytes() for m in marks)]
        assert held == [], f"the deleted document is still in {held}"


def test_small_documents_are_ready_on_return_and_bad_input_changes_nothing(make_client, tmp_path: Path
                                                                           ) -> None:  # noqa: ANN001
    with make_client(f"file://{tmp_path / 'store'}", max_document_chars=5000, max_document_bytes=8192) as c:
        r = c.post(f"{BASE}/documents", json={"text": document(20)})
        assert r.status_code == 201 and r.json()["status"] == "ready" and r.json()["title"] is None
        n = c.get(BASE).json()["facts"]
        for body, code, says in [({"text": "  "}, 422, "empty"), ({"text": "x. " * 2000}, 422, "limit is 5000"),
                                 ({"text": "A b c d.", "title": ""}, 422, "title"), ({"text": 5}, 422, "text"),
                                 ({"text": "A b c d.", "extra": 1}, 422, "extra"),
                                 ({"text": "A b c d.", "metadata": {"k": "v" * 5000}}, 422, "metadata")]:
            r = c.post(f"{BASE}/documents", json=body)
            assert r.status_code == code and says in r.text, (body, r.text)
        big = b"{" + b" " * 9000 + b"}"
        assert c.post(f"{BASE}/documents", content=big, headers={"content-type": "application/json"}).status_code == 413
        chunked = c.post(f"{BASE}/documents", content=iter([big[:5000], big[5000:]]),  # no Content-Length
                         headers={"content-type": "application/json"})
        assert chunked.status_code == 413 and "over 8192 bytes" in chunked.json()["detail"]
        assert c.get(BASE).json()["facts"] == n and len(c.get(f"{BASE}/documents").json()["documents"]) == 1
        assert c.post("/v1/memories/Bad!/documents", json={"text": "A b c d."}).status_code == 422
        assert c.get(f"{BASE}/documents/nope").status_code == 404
        assert c.delete(f"{BASE}/documents/nope").status_code == 404
        assert c.get("/v1/memories/fresh/documents").json() == {"documents": []}


def test_an_ingest_cut_by_a_restart_is_resumed_without_duplicates(make_client, store_url: str
                                                                  ) -> None:  # noqa: ANN001
    url = store_url
    text = document(1500, seed=1)
    with make_client(url, max_batch_facts=32) as c:
        doc = c.post(f"{BASE}/documents", json={"text": text}).json()
        while c.get(f"{BASE}/documents/{doc['id']}").json()["written"] == 0:
            time.sleep(0.01)
    with make_client(url, max_batch_facts=32) as c:  # the shutdown stopped it between batches
        stored = c.app.state.editor.registry.document("docs", doc["id"])
        assert stored["status"] == "ingesting" and stored["text"] == text, "resumable from its record"
        doc = ready(c, c.get(f"{BASE}/documents/{doc['id']}").json())
        assert doc["status"] == "ready" and doc["written"] == doc["pieces"]
        facts = c.get(f"{BASE}/facts", params={"limit": 1000}).json()
        ids = [f["id"] for f in facts["facts"]]
        while len(ids) < facts["total"]:
            ids += [f["id"] for f in c.get(f"{BASE}/facts", params={"limit": 1000, "offset": len(ids)}).json()["facts"]]
        assert sorted(ids) == sorted(f"{doc['id']}-{i}" for i in range(doc["pieces"])), "each piece once"
        assert "text" not in c.app.state.editor.registry.document("docs", doc["id"]), "text dropped when done"
        ans = c.post(f"{BASE}/query", json={"prompt": QUESTION, "max_new_tokens": 16}).json()
        assert "paprika" in ans["answer"].lower()


def test_a_document_deleted_while_ingesting_stops_and_leaves_no_piece(make_client, tmp_path: Path
                                                                      ) -> None:  # noqa: ANN001
    with make_client(f"file://{tmp_path / 'store'}", max_batch_facts=32) as c:
        doc = c.post(f"{BASE}/documents", json={"text": document(1500, seed=2)}).json()
        while c.get(f"{BASE}/documents/{doc['id']}").json()["written"] == 0:
            time.sleep(0.01)
        assert c.delete(f"{BASE}/documents/{doc['id']}").status_code == 200
        assert c.get(f"{BASE}/documents").json()["documents"] == []
        assert c.get(BASE).json()["facts"] == 0


def test_deleting_the_memory_stops_its_ingest_for_good(make_client, tmp_path: Path) -> None:  # noqa: ANN001
    with make_client(f"file://{tmp_path / 'store'}", max_batch_facts=32) as c:
        doc = c.post(f"{BASE}/documents", json={"text": document(1500, seed=3)}).json()
        while c.get(f"{BASE}/documents/{doc['id']}").json()["written"] == 0:
            time.sleep(0.01)
        assert c.delete(BASE).status_code == 200
        time.sleep(1.0)  # the worker meets the deleted memory at its next batch, and stops
        assert c.get(BASE).status_code == 404, "the ingest did not make the memory anew"
        assert c.get(f"{BASE}/documents").json() == {"documents": []}


def test_the_hierarchical_read_serves_queries_too(make_client, tmp_path: Path) -> None:  # noqa: ANN001
    with make_client(f"file://{tmp_path / 'store'}", memory_read="hierarchical", read_segment=16) as c:
        doc = c.post(f"{BASE}/documents", json={"text": document(200, seed=4)}).json()
        assert doc["status"] == "ready"
        ans = c.post(f"{BASE}/query", json={"prompt": QUESTION, "max_new_tokens": 16}).json()
        assert ans["in_scope"] and "paprika" in ans["answer"].lower() and ans["facts"][0]["text"] == NEEDLE


def test_keys_need_write_to_add_or_delete_documents_and_read_to_see_them(make_client, tmp_path: Path
                                                                        ) -> None:  # noqa: ANN001
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps([{"name": "writer", "key": "writer-key-0123", "role": "write", "memories": ["docs"]},
                                {"name": "reader", "key": "reader-key-0123", "role": "read", "memories": ["docs"]}]))
    with make_client(f"file://{tmp_path / 'store'}", api_keys_file=keys) as c:
        writer, reader = ({"Authorization": f"Bearer {k}-key-0123"} for k in ("writer", "reader"))
        body = {"text": document(20)}
        assert c.post(f"{BASE}/documents", json=body).status_code == 401
        refused = c.post(f"{BASE}/documents", json=body, headers=reader)
        assert refused.status_code == 403 and "reader" in refused.text
        assert c.post("/v1/memories/other/documents", json=body, headers=writer).status_code == 403
        doc = c.post(f"{BASE}/documents", json=body, headers=writer).json()
        assert [d["id"] for d in c.get(f"{BASE}/documents", headers=reader).json()["documents"]] == [doc["id"]]
        assert c.get(f"{BASE}/documents/{doc['id']}", headers=reader).json()["status"] == "ready"
        assert c.delete(f"{BASE}/documents/{doc['id']}", headers=reader).status_code == 403
        assert c.delete(f"{BASE}/documents/{doc['id']}", headers=writer).status_code == 200


def test_a_queued_document_deleted_before_its_turn_is_never_ingested(make_client, tmp_path: Path
                                                                     ) -> None:  # noqa: ANN001
    with make_client(f"file://{tmp_path / 'store'}", max_batch_facts=32) as c:
        first = c.post(f"{BASE}/documents", json={"text": document(1500, seed=5)}).json()
        queued = c.post(f"{BASE}/documents", json={"text": document(1500, seed=6)}).json()
        assert queued["status"] == "ingesting"
        assert c.delete(f"{BASE}/documents/{queued['id']}").status_code == 200  # without waiting for the first
        assert ready(c, first)["status"] == "ready"
        assert [d["id"] for d in c.get(f"{BASE}/documents").json()["documents"]] == [first["id"]]
        assert c.get(BASE).json()["facts"] == first["pieces"], "nothing of the deleted one was written"


def test_a_piece_opening_with_a_pronoun_is_read_with_the_piece_it_continues(make_client, tmp_path: Path
                                                                           ) -> None:  # noqa: ANN001
    text = document(60, seed=7).replace(NEEDLE, "Orla Fennimore grew up in Oslo. She learned to play the bassoon "
                                                 "in Reykjavik.") + "\n\nShe never came back to the harbour."
    with make_client(f"file://{tmp_path / 'store'}") as c:
        doc = c.post(f"{BASE}/documents", json={"text": text}).json()
        assert doc["status"] == "ready"
        pieces = c.get(f"{BASE}/facts", params={"limit": 1000}).json()["facts"]
        she = next(p for p in pieces if p["text"].startswith("She learned"))
        assert pieces[she["metadata"]["continues"]]["text"] == "Orla Fennimore grew up in Oslo."
        assert "continues" not in pieces[-1]["metadata"], "a new paragraph continues nothing"
        ans = c.post(f"{BASE}/query", json={"prompt": "Where did Orla Fennimore learn to play the bassoon?",
                                            "max_new_tokens": 16}).json()
        assert ans["in_scope"] and she["id"] in [f["id"] for f in ans["facts"]], ans
        assert "Reykjavik" in ans["answer"]
        recall = c.app.state.editor.recall("docs", "Where did Orla Fennimore learn to play the bassoon?", "auto")
        shown = dict(zip([f.id for f in recall.facts], recall.readout.shown, strict=True))
        assert shown[she["id"]] == "Orla Fennimore grew up in Oslo. She learned to play the bassoon in Reykjavik."
