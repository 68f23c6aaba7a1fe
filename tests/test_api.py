"""The HTTP API against the real models and a real store (a directory and our own redis-server)."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from service.settings import Settings
from service.store import open_store

BASE = "/v1/memories/demo"
LYON = "The capital of France is Lyon."


def write(client: TestClient, text: str, memory: str = "demo", **extra: object) -> dict:
    r = client.post(f"/v1/memories/{memory}/facts", json={"text": text, **extra})
    assert r.status_code == 201, r.text
    return r.json()


def editor(client: TestClient):  # noqa: ANN201 - the app's core, for state assertions
    return client.app.state.editor


# --- facts ---------------------------------------------------------------------


def test_writes_report_their_timings_in_server_timing(client: TestClient) -> None:
    r = client.post(f"{BASE}/facts", json={"text": LYON})
    steps = {part.split(";")[0]: float(part.split("dur=")[1]) for part in r.headers["server-timing"].split(", ")}
    assert {"encode", "store_append", "apply", "total"} <= set(steps)
    assert steps["total"] >= steps["encode"] + steps["store_append"] + steps["apply"] > 0


def test_write_get_list_and_batch(client: TestClient) -> None:
    fact = write(client, LYON, metadata={"source": "test"})
    assert fact["memory"] == "demo" and fact["text"] == LYON and fact["metadata"] == {"source": "test"}
    assert fact["id"] and fact["created_at"].endswith("Z")

    r = client.post(f"{BASE}/facts/batch", json={"facts": [{"text": "Bananas are blue."}, {"text": "Ice is hot."}]})
    assert r.status_code == 201
    batch = r.json()["facts"]
    assert [f["text"] for f in batch] == ["Bananas are blue.", "Ice is hot."]
    h = editor(client).registry.get("demo")
    assert h.seq == 2, "a batch is one memory update (one log entry)"

    assert fact["conflicts"] == [] and fact["superseded"] == []  # what only a write reports
    assert client.get(f"{BASE}/facts/{fact['id']}").json() == {k: v for k, v in fact.items()
                                                               if k not in ("conflicts", "superseded")}
    page = client.get(f"{BASE}/facts", params={"limit": 2, "offset": 1}).json()
    assert page["total"] == 3 and [f["text"] for f in page["facts"]] == ["Bananas are blue.", "Ice is hot."]
    assert client.get("/v1/memories").json() == {"memories": [{"name": "demo", "facts": 3}]}
    info = client.get(BASE).json()
    assert info["facts"] == 3 and info["slots"] == 512 and info["dim"] == 384
    # the device the settings resolve to (cpu, or cuda where torch sees a GPU), spelt as torch reports a tensor's
    expected_device = str(torch.empty(0, device=Settings().resolved_device()).device)
    assert info["device"] == expected_device, (info["device"], expected_device)


def test_query_in_scope_uses_the_fact_and_out_of_scope_is_the_plain_llm(client: TestClient) -> None:
    fact = write(client, LYON)
    write(client, "Danielle Darrieux's mother tongue is English.")

    r = client.post(f"{BASE}/query", json={"prompt": "What is the capital of France?", "max_new_tokens": 24}).json()
    assert r["in_scope"] is True
    assert r["facts"][0]["id"] == fact["id"] and r["facts"][0]["similarity"] > 0.7
    assert "Lyon" in r["answer"]
    assert {"scope", "read", "generate", "total"} <= set(r["timings_ms"])

    plain = client.post(f"{BASE}/query", json={"prompt": "What is the capital of France?", "max_new_tokens": 24,
                                              "memory_mode": "off"}).json()
    assert plain["in_scope"] is False and "Paris" in plain["answer"]

    prompt = {"prompt": "How many legs does a spider have?", "max_new_tokens": 24}
    auto = client.post(f"{BASE}/query", json=prompt).json()
    off = client.post(f"{BASE}/query", json=prompt | {"memory_mode": "off"}).json()
    assert auto["in_scope"] is False and auto["facts"] == []
    assert auto["answer"] == off["answer"], "out of scope must be exactly the LLM without memory"

    forced = client.post(f"{BASE}/query", json=prompt | {"memory_mode": "on"}).json()
    assert forced["in_scope"] is True and forced["facts"]
    old_name = client.post(f"{BASE}/query", json=prompt | {"memory": "on"}).json()  # the field's old name
    assert old_name["in_scope"] is True and old_name["answer"] == forced["answer"]


def test_score_with_and_without_memory(client: TestClient, models) -> None:  # noqa: ANN001
    write(client, "The Eiffel Tower is located in the city of Rome.")
    body = {"prompt": "The Eiffel Tower is located in the city of", "candidates": ["Rome", "Paris"]}
    with_mem = client.post(f"{BASE}/score", json=body).json()
    without = client.post(f"{BASE}/score", json=body | {"memory_mode": "off"}).json()
    assert with_mem["in_scope"] is True and without["in_scope"] is False
    s_on = {s["candidate"]: s["logprob"] for s in with_mem["scores"]}
    s_off = {s["candidate"]: s["logprob"] for s in without["scores"]}
    assert s_off["Paris"] > s_off["Rome"], "the unedited model knows Paris"
    assert s_on["Rome"] - s_on["Paris"] > s_off["Rome"] - s_off["Paris"], "the edit moves belief toward Rome"
    direct = models.llm.score(body["prompt"], body["candidates"])
    assert [s["logprob"] for s in without["scores"]] == pytest.approx([d.logprob for d in direct], abs=1e-4)
    for s in with_mem["scores"]:
        assert s["n_tokens"] >= 1 and s["mean_logprob"] == pytest.approx(s["logprob"] / s["n_tokens"])


def test_forget_removes_the_fact_everywhere(client: TestClient) -> None:
    keep = write(client, "Bananas are blue.")
    gone = write(client, LYON)
    r = client.delete(f"{BASE}/facts/{gone['id']}")
    assert r.status_code == 200 and r.json() == {"id": gone["id"], "forgotten": True}
    assert client.get(f"{BASE}/facts/{gone['id']}").status_code == 404
    assert [f["id"] for f in client.get(f"{BASE}/facts").json()["facts"]] == [keep["id"]]
    q = client.post(f"{BASE}/query", json={"prompt": "What is the capital of France?", "max_new_tokens": 16}).json()
    assert q["in_scope"] is False and "Lyon" not in q["answer"]
    # the memory is the least-squares memory of what remains
    reading = editor(client).registry.reading("demo")
    assert torch.allclose(reading.state.M, reading.rebuilt().M, atol=1e-5)
    assert client.delete(f"{BASE}/facts/{gone['id']}").status_code == 404


def test_forget_leaves_no_copy_in_the_store(client: TestClient, store_url: str) -> None:
    write(client, "Bananas are blue.")
    secret = "The launch code of project Zebra is 7741."
    gone = write(client, secret)
    latent = editor(client).encoder.encode([secret])[0].numpy().tobytes()
    client.post(f"{BASE}/snapshot")  # the fact is now in a snapshot, not only in the log
    write(client, "Ice is hot.")  # and something in the log after it

    assert secret.encode() in b"".join(stored_blobs(client))
    assert client.delete(f"{BASE}/facts/{gone['id']}").status_code == 200
    blobs = b"".join(stored_blobs(client))
    assert secret.encode() not in blobs and b"Zebra" not in blobs
    assert latent not in blobs
    assert b"Ice is hot." in blobs and b"Bananas are blue." in blobs


def stored_blobs(client: TestClient) -> list[bytes]:
    """Everything the store holds, as bytes: checkpoints, log entries, fact texts, metadata and latents (read
    through a connection of the test's own)."""
    store = open_store(client.app.state.settings.store_url)
    out = []
    for name in store.names():
        stored = store.load(name)
        out += [stored.checkpoint.state] if stored.checkpoint else []
        out += [repr(stored.log).encode()]
        out += [repr(f.as_dict()).encode() for f in store.page(name, 10**6, 0)]
        out += [Z.numpy().tobytes() for _, Z in store.latents(name)]
    store.close()
    return out


# --- memories --------------------------------------------------------------------


def test_snapshot_delete_and_unknown_memory(client: TestClient) -> None:
    write(client, LYON)
    assert client.get(BASE).json()["log_entries"] == 1
    snap = client.post(f"{BASE}/snapshot").json()
    assert snap["log_entries"] == 0 and snap["last_snapshot"]
    assert client.delete(BASE).json() == {"name": "demo", "deleted": True}
    assert client.get(BASE).status_code == 404
    assert client.get("/v1/memories").json() == {"memories": []}
    assert stored_blobs(client) == []
    for method, path, body in [
        ("get", f"{BASE}/facts", None),
        ("post", f"{BASE}/query", {"prompt": "hi"}),
        ("post", f"{BASE}/score", {"prompt": "hi", "candidates": ["a"]}),
        ("post", f"{BASE}/snapshot", None),
        ("delete", BASE, None),
        ("delete", f"{BASE}/facts/abc", None),
    ]:
        r = client.request(method.upper(), path, json=body)
        assert r.status_code == 404, (path, r.text)
        assert "demo" in r.json()["detail"]


# --- bad input changes nothing ---------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/facts", {"text": ""}),
        ("post", "/facts", {"text": "   \n"}),
        ("post", "/facts", {"text": "x" * 2001}),
        ("post", "/facts", {"text": 123}),
        ("post", "/facts", {"text": "ok", "colour": "red"}),
        ("post", "/facts", {"text": "ok", "metadata": "not an object"}),
        ("post", "/facts", {"text": "ok", "metadata": {"big": "y" * 5000}}),
        ("post", "/facts", {}),
        ("post", "/facts/batch", {"facts": []}),
        ("post", "/facts/batch", {"facts": [{"text": "ok"}, {"text": ""}]}),
        ("post", "/facts/batch", {"facts": [{"text": "ok"}] * 257}),
        ("post", "/query", {"prompt": ""}),
        ("post", "/query", {"prompt": "hi", "max_new_tokens": 100000}),
        ("post", "/query", {"prompt": "hi", "max_new_tokens": 0}),
        ("post", "/query", {"prompt": "hi", "max_new_tokens": "5"}),
        ("post", "/query", {"prompt": "hi", "memory_mode": "maybe"}),
        ("post", "/score", {"prompt": "hi", "candidates": []}),
        ("post", "/score", {"prompt": "hi", "candidates": ["a"] * 33}),
        ("post", "/score", {"prompt": "hi", "candidates": ["a", ""]}),
        ("post", "/score", {"prompt": "hi", "candidates": "a"}),
    ],
)
def test_bad_input_gets_4xx_and_changes_nothing(client: TestClient, method: str, path: str, body: dict) -> None:
    write(client, LYON)
    before = (client.get(f"{BASE}/facts").json(), stored_blobs(client))
    M = editor(client).registry.reading("demo").state.M.clone()
    r = client.request(method.upper(), BASE + path, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"], "a message says what is wrong"
    assert (client.get(f"{BASE}/facts").json(), stored_blobs(client)) == before
    assert torch.equal(editor(client).registry.reading("demo").state.M, M)


@pytest.mark.parametrize("name", ["Demo", "-x", "a" * 65, "a.b", "a b"])
def test_bad_memory_name(client: TestClient, name: str) -> None:
    r = client.post(f"/v1/memories/{name}/facts", json={"text": LYON})
    assert r.status_code in (404, 422), r.text
    assert client.get("/v1/memories").json() == {"memories": []}


def test_oversized_body_is_refused_before_parsing(client: TestClient) -> None:
    r = client.post(f"{BASE}/facts/batch", json={"facts": [{"text": "x" * 1000}] * 1100})
    assert r.status_code == 413 and "bytes" in r.json()["detail"]
    body = r.request.content
    parts = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    chunked = client.post(f"{BASE}/facts/batch", content=iter(parts),  # no Content-Length: counted as it comes
                          headers={"content-type": "application/json"})
    assert chunked.status_code == 413 and "over 1048576 bytes" in chunked.json()["detail"]
    assert client.get("/v1/memories").json() == {"memories": []}


def test_malformed_json(client: TestClient) -> None:
    r = client.post(f"{BASE}/facts", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert client.get("/v1/memories").json() == {"memories": []}


def test_a_write_reports_facts_that_state_the_same_thing_otherwise_and_may_supersede_them(client: TestClient) -> None:
    lyon = write(client, LYON)
    write(client, "Ada Quill works as a pilot.")
    r = write(client, "The capital of France is Marseille.")
    assert [c["id"] for c in r["conflicts"]] == [lyon["id"]] and r["superseded"] == []
    # same subject, another relation; another subject, same relation: no conflict
    assert write(client, "The currency of France is the yen.")["conflicts"] == []
    assert write(client, "The capital of Spain is Toledo.")["conflicts"] == []
    assert write(client, "Ada Quill works as a surgeon.")["conflicts"][0]["text"] == "Ada Quill works as a pilot."
    # supersedes: the new fact is written and the old one forgotten; an unknown id is a 404 and writes nothing
    total = client.get(f"{BASE}/facts").json()["total"]
    gone = client.post(f"{BASE}/facts", json={"text": "Ada Quill works as a baker.", "supersedes": ["nope"]})
    assert gone.status_code == 404 and client.get(f"{BASE}/facts").json()["total"] == total
    pilot = next(f for f in client.get(f"{BASE}/facts").json()["facts"] if f["text"] == "Ada Quill works as a pilot.")
    r = write(client, "Ada Quill works as a baker.", supersedes=[pilot["id"]])
    assert r["superseded"] == [pilot["id"]] and pilot["id"] not in [c["id"] for c in r["conflicts"]]
    assert client.get(f"{BASE}/facts/{pilot['id']}").status_code == 404
    assert client.get(f"{BASE}/facts").json()["total"] == total  # one in, one out


def test_facts_can_be_searched_by_text(client: TestClient) -> None:
    for t in (LYON, "Ada Quill works as a pilot.", "Bananas are blue.", "Ice is hot."):
        write(client, t, metadata={"t": t[:3]})
    page = client.get(f"{BASE}/facts", params={"q": "Which city is the capital of France?", "limit": 2}).json()
    assert [f["text"] for f in page["facts"]][:1] == [LYON] and len(page["facts"]) == 2
    assert page["facts"][0]["similarity"] >= page["facts"][1]["similarity"] and page["facts"][0]["metadata"]
    assert "similarity" not in client.get(f"{BASE}/facts").json()["facts"][0]  # a plain page has none
    assert client.get(f"{BASE}/facts", params={"q": " "}).status_code == 422
    assert client.get("/v1/memories/nope/facts", params={"q": "x"}).status_code == 404


# --- export / import ---------------------------------------------------------------


def export_lines(client: TestClient, memory: str, **params: object) -> list[dict]:
    r = client.get(f"/v1/memories/{memory}/export", params=params)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson"), r.text
    return [json.loads(line) for line in r.text.splitlines()]


def test_export_then_import_elsewhere_gives_the_same_facts_and_answers(client: TestClient) -> None:
    written = [write(client, t, memory="src", metadata={"n": i}) for i, t in
               enumerate([LYON, "Ada Quill works as a pilot.", "Nokia was founded by Ada Lovelace."])]
    gone = write(client, "Bo Rind plays the oboe.", memory="src")
    assert client.delete(f"/v1/memories/src/facts/{gone['id']}").status_code == 200
    lines = export_lines(client, "src")
    keys = ("id", "text", "metadata", "created_at")
    assert [{k: line[k] for k in keys} for line in lines] == [{k: f[k] for k in keys} for f in written]
    body = "\n".join(json.dumps(line) for line in lines).encode()
    r = client.post("/v1/memories/dst/import", content=body, headers={"Content-Type": "application/x-ndjson"})
    assert r.status_code == 200 and r.json() == {"memory": "dst", "imported": 3}, r.text
    assert export_lines(client, "dst") == lines  # ids, texts, metadata and created times kept, in order
    for prompt in ("What does Ada Quill do for a living?", "What is the capital of France?", "Who plays the oboe?"):
        a, b = (client.post(f"/v1/memories/{m}/query", json={"prompt": prompt, "max_new_tokens": 12}).json()
                for m in ("src", "dst"))
        assert (a["answer"], a["in_scope"], [f["id"] for f in a["facts"]]) == \
            (b["answer"], b["in_scope"], [f["id"] for f in b["facts"]]), prompt
    # the same file again: its ids are taken, nothing is written; with new ids it is a second copy
    again = client.post("/v1/memories/dst/import", content=body)
    assert again.status_code == 409 and lines[0]["id"] in again.json()["detail"]
    assert client.get("/v1/memories/dst").json()["facts"] == 3
    copy = client.post("/v1/memories/dst/import", params={"keep_ids": "false"}, content=body)
    assert copy.status_code == 200 and client.get("/v1/memories/dst").json()["facts"] == 6


def test_export_with_latents_names_the_encoder_and_import_ignores_them(client: TestClient) -> None:
    write(client, LYON, memory="src")
    (line,) = export_lines(client, "src", latents="true")
    assert len(line["latent"]) == editor(client).encoder.dim and line["encoder"] == editor(client).settings.encoder
    line["latent"] = [0.0] * 7  # another encoder's width: re-encoded from the text all the same
    r = client.post("/v1/memories/dst/import", content=json.dumps(line) + "\n")
    assert r.status_code == 200
    a, b = (editor(client).registry.reading(m) for m in ("src", "dst"))
    assert torch.equal(a.live_latents(), b.live_latents())


@pytest.mark.parametrize(("body", "message"), [
    (b"", "no facts"),
    (b'{"text": "The capital of France is Lyon."}\n{"text": "x",', "line 2: not JSON"),
    (b'{"text": "ok"}\n{"metadata": {}}', "line 2: text"),
    (b'{"text": "ok", "colour": "red"}', "line 1: colour"),
    (b'{"text": "ok", "created_at": "yesterday"}', "line 1: created_at"),
    (b'{"text": "   "}', "line 1: text must not be empty"),
    (b'{"text": "a", "id": "x"}\n{"text": "b", "id": "x"}', "fact id twice"),
    (b"\xff\xfe", "not UTF-8"),
])
def test_a_bad_import_file_is_refused_whole_and_creates_nothing(client: TestClient, body: bytes,
                                                                message: str) -> None:
    r = client.post("/v1/memories/dst/import", content=body)
    assert r.status_code == 422 and message in r.json()["detail"], r.text
    assert client.get("/v1/memories/dst").status_code == 404


def test_export_of_a_missing_memory_is_404_and_a_too_large_import_413(make_client, tmp_path) -> None:  # noqa: ANN001
    with make_client(f"file://{tmp_path / 's'}", max_import_bytes=2048) as c:
        assert c.get("/v1/memories/nope/export").status_code == 404
        big = b'{"text": "The capital of France is Lyon."}\n' * 100
        assert c.post("/v1/memories/dst/import", content=big).status_code == 413
        chunked = c.post("/v1/memories/dst/import", content=iter([big[:1500], big[1500:]]))  # no Content-Length
        assert chunked.status_code == 413 and c.get("/v1/memories/dst").status_code == 404


# --- auth, health, metrics ---------------------------------------------------------------


def scoped_keys(tmp_path: Path) -> Path:
    import hashlib

    path = tmp_path / "keys.json"
    path.write_text(json.dumps([
        {"name": "team-a-reader", "key": "read-a-0123", "role": "read", "memories": ["team-a-*"]},
        {"name": "team-a-writer", "key_sha256": hashlib.sha256(b"write-a-0123").hexdigest(), "role": "write",
         "memories": ["team-a-*", "shared"]},
        {"name": "team-b-writer", "key": "write-b-0123", "role": "write", "memories": ["team-b-*"]},
        {"name": "ops", "key": "admin-0123", "role": "admin", "memories": ["ops-*"]},
    ]))
    return path


def test_scoped_keys_reach_only_their_memories_with_only_their_roles_rights(make_client, tmp_path,  # noqa: ANN001
                                                                            caplog) -> None:  # noqa: ANN001
    def as_(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    a_read, a_write, b_write, admin = as_("read-a-0123"), as_("write-a-0123"), as_("write-b-0123"), as_("admin-0123")
    with make_client(f"file://{tmp_path / 's'}", api_keys_file=scoped_keys(tmp_path)) as c:
        fact = c.post("/v1/memories/team-a-docs/facts", json={"text": LYON}, headers=a_write)
        assert fact.status_code == 201
        fid = fact.json()["id"]
        assert c.post("/v1/memories/team-b-docs/facts", json={"text": "Ada Quill works as a pilot."},
                      headers=b_write).status_code == 201
        # read: everything that reads, in its own memories only; nothing that writes
        assert c.get("/v1/memories/team-a-docs/facts", headers=a_read).json()["total"] == 1
        assert c.post("/v1/memories/team-a-docs/query", json={"prompt": "What is the capital of France?",
                                                               "max_new_tokens": 4}, headers=a_read).status_code == 200
        assert c.get("/v1/memories/team-a-docs/export", headers=a_read).status_code == 200
        denied = c.post("/v1/memories/team-a-docs/facts", json={"text": "x y z"}, headers=a_read)
        assert denied.status_code == 403 and "team-a-reader has role read" in denied.json()["detail"]
        assert c.delete(f"/v1/memories/team-a-docs/facts/{fid}", headers=a_read).status_code == 403
        # another tenant's memory: not its facts, one fact, queries, scores, exports, imports or existence
        other = "/v1/memories/team-b-docs"
        for method, path, body in [("GET", f"{other}/facts", None), ("GET", f"{other}/facts/{fid}", None),
                                   ("POST", f"{other}/query", {"prompt": "Who is Ada Quill?"}),
                                   ("POST", f"{other}/score", {"prompt": "Ada Quill is a", "candidates": ["pilot"]}),
                                   ("GET", f"{other}/export", None), ("GET", other, None),
                                   ("POST", f"{other}/facts", {"text": "Bo Rind plays the oboe."})]:
            for key in (a_read, a_write):
                r = c.request(method, path, json=body, headers=key)
                assert r.status_code == 403 and "does not reach memory 'team-b-docs'" in r.json()["detail"], path
        assert c.post(f"{other}/import", content=b'{"text": "x y"}', headers=a_write).status_code == 403
        assert c.get(f"{other}/facts", headers=b_write).json()["total"] == 1  # untouched by all of that
        # listing shows a key its own memories only; an admin sees every memory
        names = {k: [m["name"] for m in c.get("/v1/memories", headers=h).json()["memories"]]
                 for k, h in [("a", a_read), ("b", b_write), ("admin", admin)]}
        assert names == {"a": ["team-a-docs"], "b": ["team-b-docs"], "admin": ["team-a-docs", "team-b-docs"]}
        # write: its memories, not deleting them; admin alone deletes (its own patterns)
        assert c.post("/v1/memories/shared/facts", json={"text": "Nokia was founded by Ada Lovelace."},
                      headers=a_write).status_code == 201
        assert c.delete(f"/v1/memories/team-a-docs/facts/{fid}", headers=a_write).status_code == 200
        assert c.delete("/v1/memories/shared", headers=a_write).status_code == 403
        assert c.delete("/v1/memories/team-a-docs", headers=admin).status_code == 403  # not one of ops-*
        assert c.post("/v1/memories/ops-x/facts", json={"text": LYON}, headers=admin).status_code == 201
        assert c.delete("/v1/memories/ops-x", headers=admin).status_code == 200
        # no key, a wrong one, another scheme: 401; health stays open
        for h in ({}, as_("read-a-0124"), {"Authorization": "Basic read-a-0123"}):
            assert c.get("/v1/memories/team-a-docs/facts", headers=h).status_code == 401
        assert c.get("/healthz").status_code == 200
    logged = caplog.text
    assert not [k for k in ("read-a-0123", "write-a-0123", "write-b-0123", "admin-0123") if k in logged]


@pytest.mark.parametrize("entries", [
    [{"key": "short", "role": "read", "memories": ["a"]}], [{"key": "long-enough", "role": "owner", "memories": ["a"]}],
    [{"key": "long-enough", "role": "read", "memories": []}], [{"role": "read", "memories": ["a"]}],
    [{"key_sha256": "abc", "role": "read", "memories": ["a"]}], {"key": "long-enough"},
])
def test_a_malformed_keys_file_stops_the_start_naming_the_entry_not_the_key(make_client, tmp_path,  # noqa: ANN001
                                                                          entries: object) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(entries))
    with pytest.raises(ValueError, match="keys.json") as e, make_client(f"file://{tmp_path / 's'}", api_keys_file=path):
        pass
    assert "long-enough" not in str(e.value)


def test_api_keys(make_client, tmp_path) -> None:  # noqa: ANN001
    with make_client(f"file://{tmp_path}", api_keys=["k1", "k2"]) as c:
        assert c.get("/v1/memories").status_code == 401
        assert c.get("/v1/memories", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.get("/v1/memories", headers={"Authorization": "Basic k1"}).status_code == 401
        r = c.post(f"{BASE}/facts", json={"text": LYON})
        assert r.status_code == 401 and c.app.state.editor.registry.get("demo") is None
        assert c.get("/v1/memories", headers={"Authorization": "Bearer k2"}).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200


def test_health_and_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert ready.json()["checks"] == {"models": True, "store": True, "reads": True, "writes": True}
    write(client, LYON)
    client.get(f"{BASE}/facts/nope")
    client.request("BREW", f"{BASE}/facts")
    text = client.get("/metrics").text
    assert "larimar_facts 1.0" in text and "larimar_memories 1.0" in text
    assert "demo" not in text, "an open endpoint names no memory unless asked to"
    assert 'larimar_http_requests_total{method="POST",route="/v1/memories/{memory}/facts",status="201"} 1.0' in text
    assert 'route="/v1/memories/{memory}/facts/{fact_id}",status="404"' in text
    assert 'method="other"' in text and "BREW" not in text, "label values come from a fixed list"


def test_metrics_name_memories_when_asked(make_client, tmp_path) -> None:  # noqa: ANN001
    with make_client(f"file://{tmp_path / 'store'}", metrics_memory_names=True) as c:
        write(c, LYON)
        assert 'larimar_memory_facts{memory="demo"} 1.0' in c.get("/metrics").text


def test_docs_and_redoc_load_every_asset_from_the_service_itself(client: TestClient) -> None:
    """/docs and /redoc must work on a machine without internet: every script, style and icon they load is
    served by the service (fastapi-offline's bundled copies), none from a CDN."""
    for page in ("/docs", "/redoc"):
        html = client.get(page)
        assert html.status_code == 200 and "text/html" in html.headers["content-type"]
        assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html.text)
        assert assets and not [a for a in assets if "://" in a], assets  # nothing fetched from another host
        for asset in assets:
            r = client.get(asset)
            assert r.status_code == 200 and len(r.content) > 1000, (page, asset)
    assert client.get("/openapi.json").json()["info"]["title"] == "Larimar"


def test_unreachable_store_means_unready_then_recovers(make_client, new_redis_server) -> None:  # noqa: ANN001
    late = new_redis_server()
    with make_client(late.url) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["checks"]["store"] is False
        w = c.post(f"{BASE}/facts", json={"text": LYON})
        assert w.status_code == 503 and "store" in w.json()["detail"]
        assert c.get("/v1/memories").status_code == 503
        late.start()  # the store comes up after the service
        for _ in range(100):
            if c.get("/readyz").status_code == 200:
                break
            time.sleep(0.1)
        assert c.get("/readyz").status_code == 200
        assert write(c, LYON)["text"] == LYON


def test_with_the_store_out_of_reach_queries_answer_and_writes_wait_for_it(make_client,  # noqa: ANN001
                                                                          new_redis_server) -> None:  # noqa: ANN001
    """Queries read the memory and the texts of the facts they recall, which stay in memory (FactCache): they
    answered 503 while Redis was down, and /readyz took the service out of every load balancer."""
    server = new_redis_server()
    server.start()
    ask = {"prompt": "What is the capital of France?", "max_new_tokens": 12}
    with make_client(server.url) as c:
        lyon = write(c, LYON)
        before = c.post(f"{BASE}/query", json=ask).json()
        assert before["in_scope"] and before["facts"][0]["id"] == lyon["id"]
        server.stop()
        during = c.post(f"{BASE}/query", json=ask)
        assert during.status_code == 200, during.text
        assert (during.json()["answer"], during.json()["facts"]) == (before["answer"], before["facts"])
        ready = c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "degraded"
        assert ready.json()["checks"] == {"models": True, "store": False, "reads": True, "writes": False}
        assert c.get("/readyz", params={"writes": True}).status_code == 503
        refused = c.post(f"{BASE}/facts", json={"text": "Bananas are blue."})
        assert refused.status_code == 503 and refused.json()["detail"]
        assert c.delete(f"{BASE}/facts/{lyon['id']}").status_code == 503
        server.start()  # back, from its append-only file: writes resume with no restart of the service
        for _ in range(100):
            if c.get("/readyz", params={"writes": True}).status_code == 200:
                break
            time.sleep(0.1)
        assert write(c, "Bananas are blue.")["text"] == "Bananas are blue."
        assert c.get(f"{BASE}/facts/{lyon['id']}").status_code == 200, "the refused forget changed nothing"
        assert c.get(BASE).json()["facts"] == 2


# --- durability and concurrency -----------------------------------------------------------


def test_restart_restores_facts_memory_and_answers(make_client, store_url: str) -> None:  # noqa: ANN001
    prompts = ["What is the capital of France?", "What colour are bananas?", "What is 2 + 2?"]
    with make_client(store_url, snapshot_every=3) as c:
        ids = [write(c, t)["id"] for t in [LYON, "Bananas are blue.", "Ice is hot.", "Rust is a metal.",
                                            "Paris is in Texas."]]
        c.delete(f"{BASE}/facts/{ids[2]}")
        write(c, "Snow is green.")
        answers = [c.post(f"{BASE}/query", json={"prompt": p, "max_new_tokens": 16}).json() for p in prompts]
        M = editor(c).registry.reading("demo").state.M.clone()
        facts = c.get(f"{BASE}/facts").json()
    with make_client(store_url, snapshot_every=3) as c:
        assert c.get(f"{BASE}/facts").json() == facts
        assert torch.equal(editor(c).registry.reading("demo").state.M, M), "restore is bit-for-bit"
        again = [c.post(f"{BASE}/query", json={"prompt": p, "max_new_tokens": 16}).json() for p in prompts]
        for a, b in zip(answers, again, strict=True):
            assert (a["answer"], a["in_scope"], a["facts"]) == (b["answer"], b["in_scope"], b["facts"])


def test_compaction_folds_the_log(make_client, store_url: str) -> None:  # noqa: ANN001
    with make_client(store_url, snapshot_every=3) as c:
        for i in range(7):
            write(c, f"Fact number {i} is true.")
        assert c.get(BASE).json()["log_entries"] == 1
        stored = open_store(c.app.state.settings.store_url).load("demo")
        assert stored.checkpoint is not None and len(stored.log) == 1


def test_deletes_racing_writes_leave_store_and_memory_agreeing(make_client, store_url: str) -> None:  # noqa: ANN001
    acknowledged: list[str] = []

    with make_client(store_url) as c:
        def writer() -> None:
            for i in range(12):
                r = c.post(f"{BASE}/facts", json={"text": f"Race fact {i} holds."})
                assert r.status_code == 201, r.text

        def deleter() -> None:
            for _ in range(6):
                c.delete(BASE)
                time.sleep(0.01)

        threads = [threading.Thread(target=writer) for _ in range(2)] + [threading.Thread(target=deleter)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        r = c.get(f"{BASE}/facts", params={"limit": 1000})
        acknowledged = sorted(f["id"] for f in r.json()["facts"]) if r.status_code == 200 else []
    with make_client(store_url) as c:  # what the store holds is exactly what the running service had
        r = c.get(f"{BASE}/facts", params={"limit": 1000})
        restored = sorted(f["id"] for f in r.json()["facts"]) if r.status_code == 200 else []
    assert restored == acknowledged


def test_concurrent_writes_are_serialised_and_queries_see_whole_updates(client: TestClient) -> None:
    errors: list[str] = []
    h_ref: list = []

    def writer(k: int) -> None:
        for i in range(8):
            r = client.post(f"{BASE}/facts", json={"text": f"Writer {k} says item {i} is purple."})
            if r.status_code != 201:
                errors.append(r.text)

    def reader() -> None:
        for _ in range(30):
            r = client.app.state.editor.registry.reading("demo")
            if r is None:
                continue
            h_ref.append(r)
            try:
                ((newest,),) = r.nearest(r.live_latents()[-1:].float(), 1)  # the newest row has its id
            except IndexError:
                newest = None
            if newest is None or r.live_latents().shape[0] != r.live or r.state.updates != r.live:
                errors.append("torn view")  # every published row has its id, and the state has all its updates

    write(client, "Seed fact.")
    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)] + [threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    reading = editor(client).registry.reading("demo")
    assert reading.live == 33 and client.get(f"{BASE}/facts").json()["total"] == 33
    assert editor(client).registry.get("demo").seq == 33, "every write got its own log entry"
    assert torch.allclose(reading.state.M, reading.rebuilt().M, atol=1e-5), "serial updates equal the batch solution"


def test_a_renamed_setting_still_works_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.settings import Settings

    monkeypatch.setenv("LARIMAR_CONTEXT_FACTS", "5")
    with pytest.warns(FutureWarning, match="LARIMAR_RECALLED_FACTS"):
        assert Settings().recalled_facts == 5
    monkeypatch.setenv("LARIMAR_RECALLED_FACTS", "2")  # the new name wins where both are set
    with pytest.warns(FutureWarning):
        assert Settings().recalled_facts == 2


def test_put_replaces_a_fact_in_one_step_and_the_answer_follows(make_client, store_url: str) -> None:  # noqa: ANN001
    question = {"prompt": "What is the capital of France?", "max_new_tokens": 12}
    with make_client(store_url) as c:
        old = write(c, LYON, metadata={"source": "a"})
        write(c, "Ada Quill works as a pilot.")
        assert "Lyon" in c.post(f"{BASE}/query", json=question).json()["answer"]
        M = editor(c).registry.reading("demo").state.M.clone()
        meta = c.put(f"{BASE}/facts/{old['id']}", json={"metadata": {"source": "b"}})
        assert meta.status_code == 200 and meta.json()["text"] == LYON and meta.json()["metadata"] == {"source": "b"}
        assert torch.equal(editor(c).registry.reading("demo").state.M, M), "metadata alone leaves memory as it was"
        r = c.put(f"{BASE}/facts/{old['id']}", json={"text": "The capital of France is Marseille."})
        assert r.status_code == 200, r.text
        new = r.json()
        assert (new["id"], new["created_at"], new["metadata"]) == (old["id"], old["created_at"], {"source": "b"})
        answer = c.post(f"{BASE}/query", json=question).json()
        assert "Marseille" in answer["answer"] and "Lyon" not in answer["answer"]
        assert [f["id"] for f in answer["facts"]][:1] == [old["id"]]
        listed = c.get(f"{BASE}/facts").json()
        assert listed["total"] == 2 and [f["text"] for f in listed["facts"]][0] == new["text"]  # same place
        # bad input changes nothing
        assert c.put(f"{BASE}/facts/{old['id']}", json={}).status_code == 422
        assert c.put(f"{BASE}/facts/{old['id']}", json={"text": " "}).status_code == 422
        assert c.put(f"{BASE}/facts/nope", json={"text": "Bo Rind plays the oboe."}).status_code == 404
        assert c.put("/v1/memories/nope/facts/x", json={"text": "Bo Rind plays the oboe."}).status_code == 404
        assert c.get(f"{BASE}/facts/{old['id']}").json()["text"] == new["text"]
    with make_client(store_url) as c:  # durable: the restart reads the new text and state
        assert c.get(f"{BASE}/facts/{old['id']}").json()["text"] == new["text"]
        assert "Marseille" in c.post(f"{BASE}/query", json=question).json()["answer"]


def test_readers_see_the_old_fact_or_the_new_one_while_it_is_replaced(client: TestClient) -> None:
    texts = ["The capital of France is Lyon.", "The capital of France is Marseille."]
    fid = write(client, texts[0])["id"]
    seen: list[tuple[int, str]] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            r = client.get(f"{BASE}/facts/{fid}")
            seen.append((r.status_code, r.json().get("text", "")))
            hits = editor(client).recall("demo", "What is the capital of France?", "on").facts
            seen.append((200 if [f.id for f in hits].count(fid) == 1 else 500, hits[0].text))

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(1, 9):
        assert client.put(f"{BASE}/facts/{fid}", json={"text": texts[i % 2]}).status_code == 200
    stop.set()
    reader.join()
    assert seen and all(code == 200 and text in texts for code, text in seen), set(seen) - {(200, t) for t in texts}


def test_several_facts_are_forgotten_in_one_step_as_if_one_by_one(make_client, store_url: str) -> None:  # noqa: ANN001
    texts = [LYON, "Bananas are blue.", "Ice is hot.", "Ada Quill works as a pilot.", "Bo Rind plays the oboe."]
    with make_client(store_url) as c:
        one = [write(c, t, memory="one")["id"] for t in texts]
        many = [write(c, t, memory="many")["id"] for t in texts]
        for i in one[1:4]:
            assert c.delete(f"/v1/memories/one/facts/{i}").status_code == 200
        seq = editor(c).registry.get("many").seq
        r = c.post("/v1/memories/many/facts/forget", json={"ids": [many[1], "nope", many[2]]})
        assert r.status_code == 404 and "'nope'" in r.json()["detail"]  # all or none
        assert c.get("/v1/memories/many").json()["facts"] == 5 and editor(c).registry.get("many").seq == seq
        r = c.post("/v1/memories/many/facts/forget", json={"ids": many[1:4]})
        assert r.status_code == 200 and r.json() == {"ids": many[1:4], "forgotten": True}
        assert editor(c).registry.get("many").seq == seq + 1, "one step: one downdate, one checkpoint"
        a, b = (editor(c).registry.reading(m).state for m in ("one", "many"))
        assert torch.allclose(a.M, b.M, atol=1e-5) and torch.allclose(a.C_inv, b.C_inv, atol=1e-5)
        assert [f["text"] for f in c.get("/v1/memories/many/facts").json()["facts"]] == [texts[0], texts[4]]
        assert c.post("/v1/memories/many/facts/forget", json={"ids": []}).status_code == 422
        M = b.M.clone()
    with make_client(store_url) as c:  # durable
        assert c.get("/v1/memories/many").json()["facts"] == 2
        assert torch.equal(editor(c).registry.reading("many").state.M, M)


def test_forget_then_purge_leaves_no_copy_in_any_file(make_client, request: pytest.FixtureRequest,
                                                      tmp_path) -> None:  # noqa: ANN001
    """Over HTTP, both stores: erasure is reported pending after a forget and complete after a purge, and then no
    file under the store's data directory holds the fact's text or its latent's bytes."""
    for backend in ("file", "redis"):
        if backend == "redis":
            url, root = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_server").workdir
        else:
            url, root = f"file://{tmp_path / 'store'}", tmp_path / "store"
        secret = f"The vault code of project Osprey-{backend} is 4417."
        with make_client(url, purge_delay_s=3600) as c:
            write(c, "Bananas are blue.")
            gone = write(c, secret, metadata={"owner": f"Osprey-{backend} team"})
            latent = editor(c).encoder.encode([secret])[0].cpu().numpy().tobytes()
            write(c, "Ice is hot.")
            replaced = write(c, f"The Osprey-{backend} launch code is 9921.")
            assert c.get(BASE).json()["erasure"] == "complete"
            put = c.put(f"{BASE}/facts/{replaced['id']}", json={"text": "The launch was cancelled."})
            assert put.status_code == 200
            assert c.delete(f"{BASE}/facts/{gone['id']}").status_code == 200
            assert c.get(BASE).json()["erasure"] == "pending"
            purged = c.post(f"{BASE}/purge")
            assert purged.status_code == 200 and purged.json()["erasure"] == "complete"
            needles = [f"Osprey-{backend}".encode(), latent]
            held = [str(p) for p in root.rglob("*") if p.is_file() and any(n in p.read_bytes() for n in needles)]
            assert held == [], f"{backend}: the forgotten or replaced fact is still in {held}"
            assert c.get(f"{BASE}/facts").json()["total"] == 3
            assert c.post("/v1/memories/nope/purge").status_code == 404


def test_erasure_happens_by_itself_after_the_purge_delay(make_client, store_url: str) -> None:  # noqa: ANN001
    with make_client(store_url, purge_delay_s=0.2) as c:
        gone = write(c, "Ice is hot.")
        write(c, "Snow is green.")
        c.delete(f"{BASE}/facts/{gone['id']}")
        for _ in range(100):
            if c.get(BASE).json()["erasure"] == "complete":
                break
            time.sleep(0.1)
        assert c.get(BASE).json()["erasure"] == "complete"


def test_above_index_above_lookups_use_the_approximate_index_and_agree_with_exact(make_client,
                                                                                 tmp_path) -> None:  # noqa: ANN001
    url = f"file://{tmp_path / 'store'}"
    with make_client(url, index_above=200) as c:
        texts = [f"Item {i} of the archive is stored in room {i % 37} on floor {i % 5}." for i in range(300)]
        r = c.post(f"{BASE}/facts/batch", json={"facts": [{"text": t} for t in texts[:250]]})
        assert r.status_code == 201
        ids = [f["id"] for f in r.json()["facts"]]
        write(c, LYON)
        for _ in range(200):
            if c.get(BASE).json()["lookup"] == "index":
                break
            time.sleep(0.05)
        assert c.get(BASE).json()["lookup"] == "index", "the indexer built an index past index_above"
        c.delete(f"{BASE}/facts/{ids[7]}")
        c.post(f"{BASE}/facts/batch", json={"facts": [{"text": t} for t in texts[250:]]})  # a tail not indexed yet
        prompts = ["What is the capital of France?", "Where is item 7 of the archive stored?",
                   "Where is item 42 of the archive stored?", "Where is item 280 of the archive stored?"]
        approx = [c.post(f"{BASE}/query", json={"prompt": p, "max_new_tokens": 12}).json() for p in prompts]
    with make_client(url, index_above=10**9) as c:  # the same memory, restored, read by exact scans
        assert c.get(BASE).json()["lookup"] == "exact"
        exact = [c.post(f"{BASE}/query", json={"prompt": p, "max_new_tokens": 12}).json() for p in prompts]
    for a, e in zip(approx, exact, strict=True):
        assert (a["in_scope"], [f["id"] for f in a["facts"]]) == (e["in_scope"], [f["id"] for f in e["facts"]])
    assert all(f["id"] != ids[7] for q in approx for f in q["facts"]), "a forgotten fact is never recalled"
    assert "Lyon" in approx[0]["answer"]
