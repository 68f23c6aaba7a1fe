"""Hostile input and load: every request bounded, generation admitted by a queue, bad input refused whole.

Each test here failed on the code before the fix it covers (issue 24's findings)."""

from __future__ import annotations

import gc
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from models.chunking import split_document
from service.admission import Admission
from service.errors import Busy

BASE = "/v1/memories/demo"
LYON = "The capital of France is Lyon."


def test_admission_runs_a_bounded_number_queues_a_bounded_number_and_refuses_the_rest_at_once() -> None:
    admission = Admission(concurrency=1, queue=1, wait_s=0.3)
    holding, release = threading.Event(), threading.Event()
    outcomes: list[str] = []

    def hold() -> None:
        with admission.slot():
            holding.set()
            release.wait(5)

    def wait_for_a_slot() -> None:
        try:
            with admission.slot():
                outcomes.append("ran")
        except Busy as e:
            outcomes.append(f"busy after waiting, retry in {e.retry_after}")

    first = threading.Thread(target=hold)
    first.start()
    assert holding.wait(5)
    waiter = threading.Thread(target=wait_for_a_slot)
    waiter.start()
    deadline = time.monotonic() + 5
    while admission.inside < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    with pytest.raises(Busy) as refused:  # one running, one waiting: a third is refused at once
        with admission.slot():
            pass
    assert refused.value.retry_after >= 1
    waiter.join(5)
    assert outcomes == ["busy after waiting, retry in 1"], "no slot came free within wait_s"
    release.set()
    first.join(5)
    with admission.slot():  # free again
        assert admission.inside == 1
    assert admission.inside == 0


def test_a_full_llm_answers_503_with_retry_after_and_the_probes_still_answer(make_client: Callable,
                                                                             tmp_path: Path) -> None:
    with make_client(f"file://{tmp_path / 'store'}", llm_concurrency=1, llm_queue=0, llm_wait_s=0.2) as c:
        c.post(f"{BASE}/facts", json={"text": LYON})
        admission = c.app.state.editor.admission
        with admission.slot():  # the one slot is taken, as by a long generation
            t0 = time.monotonic()
            for path, body in ((f"{BASE}/query", {"prompt": "What is the capital of France?"}),
                               (f"{BASE}/score", {"prompt": "The capital of France is", "candidates": ["Lyon"]}),
                               ("/v1/chat/completions", {"model": "larimar/demo",
                                                         "messages": [{"role": "user", "content": "Hi"}]}),
                               ("/v1/chat/completions", {"model": "larimar", "stream": True,
                                                         "messages": [{"role": "user", "content": "Hi"}]})):
                r = c.post(path, json=body)
                assert r.status_code == 503, (path, r.text)
                assert int(r.headers["Retry-After"]) >= 1 and r.json()["detail"]
            assert time.monotonic() - t0 < 10, "refused at once, not after a generation"
            assert c.get("/healthz").status_code == 200
            assert c.get("/readyz").json()["status"] == "ready"
            assert c.post(f"{BASE}/facts", json={"text": "Ice is hot."}).status_code == 201, "writes need no LLM slot"
        r = c.post(f"{BASE}/query", json={"prompt": "What is the capital of France?", "max_new_tokens": 8})
        assert r.status_code == 200 and "admission" in r.json()["timings_ms"]


@pytest.mark.parametrize(("body", "message"), [
    ({"stop": ["x" * 4000]}, "stop string"),
    ({"messages": [{"role": "user", "content": "Hi."}] * 65}, "messages holds 65"),
    ({"messages": [{"role": "user" if i % 2 == 0 else "assistant", "content": "word " * 390} for i in range(63)]},
     "window"),
])
def test_chat_requests_past_a_limit_get_422_naming_it(client: TestClient, body: dict, message: str) -> None:
    request = {"model": "larimar", "messages": [{"role": "user", "content": "Hi."}], "max_tokens": 4} | body
    r = client.post("/v1/chat/completions", json=request)
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"]


def _page(client: TestClient) -> list[dict]:
    r = client.get(f"{BASE}/facts")
    assert r.status_code == 200, "listing keeps working"
    return r.json()["facts"]


@pytest.mark.parametrize("metadata", [
    {"document": "x"},  # a client cannot make a fact pass for a document's piece
    {"note": "\ud800"},  # a lone surrogate: cannot be stored as UTF-8, answered or exported
    {"deep": json.loads("[" * 9 + "]" * 9)},
])
def test_bad_metadata_is_refused_on_every_route_that_takes_it(client: TestClient, metadata: dict) -> None:
    fact = client.post(f"{BASE}/facts", json={"text": LYON}).json()
    before = _page(client)
    body = json.dumps({"text": "Ice is hot.", "metadata": metadata})  # json.dumps keeps a lone surrogate escaped
    headers = {"content-type": "application/json"}
    for method, path, content in (
        ("POST", f"{BASE}/facts", body),
        ("POST", f"{BASE}/facts/batch", json.dumps({"facts": [json.loads(body)]})),
        ("PUT", f"{BASE}/facts/{fact['id']}", json.dumps({"metadata": metadata})),
        ("POST", f"{BASE}/import", body + "\n"),
    ):
        r = client.request(method, path, content=content, headers=headers)
        assert r.status_code == 422, (method, path, r.text)
        assert r.json()["detail"]
    assert _page(client) == before, "nothing changed"
    assert client.get(f"{BASE}/export").status_code == 200


def test_a_lone_surrogate_in_a_text_is_refused(client: TestClient) -> None:
    r = client.post(f"{BASE}/facts", content=json.dumps({"text": "Ice is \ud800 hot."}),
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and "Unicode" in r.json()["detail"]


def test_a_fact_stored_with_a_document_key_of_its_own_is_answered_as_a_plain_fact(client: TestClient) -> None:
    """Facts written before the key was reserved: a query that recalls one answers 200 and cites no piece."""
    editor = client.app.state.editor
    editor.registry.write("demo", [(LYON, {"document": "x"})], editor.encoder.encode([LYON]))
    r = client.post(f"{BASE}/query", json={"prompt": "What is the capital of France?", "max_new_tokens": 8})
    assert r.status_code == 200, r.text
    assert r.json()["facts"] and r.json()["facts"][0]["source"] is None


def test_no_document_piece_is_longer_than_a_fact(client: TestClient) -> None:
    text = "Ada Quill founded the Quill works in Oslo. " + "x" * 30_000 + " The works closed in 1990 after a fire."
    r = client.post(f"{BASE}/documents", json={"text": text})
    assert r.status_code == 201, r.text
    facts = client.get(f"{BASE}/facts", params={"limit": 1000}).json()["facts"]
    limit = client.app.state.settings.max_text_chars
    assert facts and max(len(f["text"]) for f in facts) <= limit
    assert "".join(f["text"] for f in facts).replace(" ", "") == text.replace(" ", ""), "nothing dropped"


def test_splitting_cuts_long_runs_at_white_space_and_packs_chunks_within_the_limit() -> None:
    words = lambda texts: [len(t.split()) for t in texts]  # noqa: E731
    text = "One short opening sentence here. " + "abc " * 3000 + "Closing words of the text."
    for chunking in ("sentences", "chunks"):
        pieces = split_document(text, chunking, 10_000, words, max_chars=500)
        assert all(len(p.text) <= 500 and text[p.start : p.end] == p.text for p in pieces)
        assert all(not p.text.startswith(" ") and not p.text.endswith(" ") for p in pieces)
    unbroken = split_document("y" * 1234, "sentences", 10, words, max_chars=500)
    assert [len(p.text) for p in unbroken] == [500, 500, 234]


@pytest.mark.parametrize("unit", ["Dr. ", "e.g. ", ". ", '."', "\n ", "a", "A.b"])
def test_splitting_adversarial_text_takes_time_in_proportion_to_its_length(unit: str) -> None:
    """The splitter re-searched after each abbreviation: 0.4 / 1.4 / 6.4 s at 8 / 16 / 32 KB of "Dr. ". A ratio
    of two lengths, not a time: 8x the text must cost well under the 64x of a quadratic splitter."""
    words = lambda texts: [len(t.split()) for t in texts]  # noqa: E731

    def seconds(n: int) -> float:
        text, best = unit * (n // len(unit)), float("inf")
        gc.collect()
        gc.disable()  # a collection inside one run would count against it
        try:
            for _ in range(5):
                t0 = time.perf_counter()
                split_document(text, "sentences", 128, words, max_chars=2000)
                best = min(best, time.perf_counter() - t0)
        finally:
            gc.enable()
        return best

    small, large = seconds(32_000), seconds(256_000)
    assert large / small < 32, f"{unit!r}: {small:.4f} s at 32 KB, {large:.4f} s at 256 KB"


def test_an_import_file_is_parsed_off_the_event_loop(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Parsing a 256 MiB file on the event loop would hold every other request, the probes included."""
    import asyncio

    from service import transfer

    on_loop: list[bool] = []
    parse = transfer.parse

    def watched(body: bytes) -> list:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return parse(body)

    monkeypatch.setattr(transfer, "parse", watched)
    r = client.post(f"{BASE}/import", content=json.dumps({"text": LYON}) + "\n")
    assert r.status_code == 200, r.text
    assert on_loop == [False]


def test_an_import_is_all_or_nothing_and_a_retry_after_a_store_failure_imports_it_all(
        make_client: Callable, store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """It committed batch by batch: a store failure at the end of a file kept its start, and a retry with the
    file's ids answered 409. Now a failure leaves nothing, and the file's 3 batches replay after a restart."""
    from service.store import RedisStore, SqliteStore, StoreError

    lines = "".join(json.dumps({"text": f"Ledger entry {i} records a delivery of {i} crates.", "id": f"f{i}"}) + "\n"
                    for i in range(600))  # three batches of max_batch_facts=256
    for cls in (SqliteStore, RedisStore):
        write = cls.write

        def failing(self, name, facts, *rest, _write=write, **kw):  # noqa: ANN001, ANN003, ANN202
            if any(f.id == "f599" for f in facts):
                raise StoreError("the disk is full")
            return _write(self, name, facts, *rest, **kw)

        monkeypatch.setattr(cls, "write", failing)
    with make_client(store_url) as c:
        c.post("/v1/memories/other/facts", json={"text": LYON})
        r = c.post(f"{BASE}/import", content=lines)
        assert r.status_code == 503, r.text
        assert c.get(BASE).status_code == 404  # nothing of the file, not even the memory
        monkeypatch.undo()
        r = c.post(f"{BASE}/import", content=lines)
        assert r.status_code == 200 and r.json()["imported"] == 600, r.text
    with make_client(store_url) as c:  # restarted: the three logged updates replay into the same memory
        assert c.get(BASE).json()["facts"] == 600
        hit = c.get(f"{BASE}/facts", params={"q": "Ledger entry 417 records a delivery of 417 crates.", "limit": 1})
        assert hit.json()["facts"][0]["id"] == "f417"


def test_body_limits_follow_the_route_not_the_end_of_the_path(make_client: Callable, tmp_path: Path) -> None:
    """The limit was chosen by path suffix: a fact whose id is "import" was updated with a body of up to the
    import limit (256 MiB by default), and a memory named "documents" was written to with the document limit."""
    with make_client(f"file://{tmp_path / 's'}", max_body_bytes=2048, max_import_bytes=1 << 20,
                     max_document_bytes=1 << 20) as c:
        big = {"text": "y " * 3000}
        for method, path in [("PUT", f"{BASE}/facts/import"), ("POST", "/v1/memories/import/facts"),
                             ("POST", "/v1/memories/documents/facts")]:
            r = c.request(method, path, json=big)
            assert r.status_code == 413 and "LARIMAR_MAX_BODY_BYTES" in r.json()["detail"], (path, r.text)
        r = c.post(f"{BASE}/documents", json={"title": "t", "text": "Ada Quill works as a pilot. " * 200})
        assert r.status_code in (201, 202), r.text
        r = c.post(f"{BASE}/import", content=(json.dumps({"text": LYON}) + "\n") * 100)
        assert r.status_code == 200, r.text


def test_purges_asked_for_together_share_one_run_of_the_store(make_client: Callable, store_url: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Every call ran a store-wide purge of its own, one after another: a write key calling it in a loop kept
    the store purging. Now callers that wait behind a running purge share the next one."""
    from service.store import RedisStore, SqliteStore

    runs: list[str] = []
    for cls in (SqliteStore, RedisStore):
        def slow(self, *a, _purge=cls.purge, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
            runs.append(threading.current_thread().name)
            time.sleep(0.3)  # long enough that every caller below arrives while one runs
            return _purge(self, *a, **kw)

        monkeypatch.setattr(cls, "purge", slow)
    with make_client(store_url) as c:
        fact = c.post(f"{BASE}/facts", json={"text": LYON}).json()
        c.delete(f"{BASE}/facts/{fact['id']}")
        runs.clear()  # the background purge may have run meanwhile
        answers: list[int] = []
        callers = [threading.Thread(target=lambda: answers.append(c.post(f"{BASE}/purge").status_code))
                   for _ in range(8)]
        for t in callers:
            t.start()
        for t in callers:
            t.join()
        assert answers == [200] * 8
        assert 1 <= len(runs) <= 3  # the one running, the one after it (and the background purge's, at most)
        assert c.get(BASE).json()["erasure"] == "complete"


def test_a_rebound_host_and_a_cross_site_write_are_refused_without_keys(client: TestClient) -> None:
    """Without keys, a web page could rebind its own domain to 127.0.0.1 and use the service as same-origin,
    or post to it from its own origin: both were served."""
    assert client.post(f"{BASE}/facts", json={"text": LYON}).status_code == 201  # Host 127.0.0.1, no Origin
    rebound = client.get(f"{BASE}/facts", headers={"Host": "evil.example:8000"})
    assert rebound.status_code == 400 and "LARIMAR_ALLOWED_HOSTS" in rebound.json()["detail"]
    assert client.get("/healthz", headers={"Host": "10.0.0.7:8000"}).status_code == 200  # probes: any Host
    for origin in ("https://evil.example", "null"):
        r = client.post(f"{BASE}/facts", json={"text": "Bananas are blue."}, headers={"Origin": origin})
        assert r.status_code == 403 and "LARIMAR_ALLOWED_ORIGINS" in r.json()["detail"]
    assert client.get(f"{BASE}/facts", headers={"Origin": "https://evil.example"}).status_code == 200  # a read
    same = client.post(f"{BASE}/facts", json={"text": "Ada Quill works as a pilot."},
                       headers={"Origin": "http://127.0.0.1"})  # the console, served from the service itself
    assert same.status_code == 201
    assert client.get(BASE).json()["facts"] == 2


def test_allowed_hosts_and_origins_are_settings(make_client: Callable, tmp_path: Path) -> None:
    with make_client(f"file://{tmp_path / 's'}", allowed_hosts=["larimar.internal"],
                     allowed_origins=["https://app.example.com"]) as c:
        assert c.get("/v1/memories").status_code == 400  # 127.0.0.1 is no longer listed
        h = {"Host": "larimar.internal:8000"}
        assert c.post(f"{BASE}/facts", json={"text": LYON}, headers=h | {"Origin": "https://app.example.com"}
                      ).status_code == 201
        assert c.post(f"{BASE}/facts", json={"text": LYON}, headers=h | {"Origin": "https://other.example.com"}
                      ).status_code == 403
    with make_client(f"file://{tmp_path / 't'}", api_keys=["k-0123456789"]) as c:  # keyed: any Host
        assert c.get("/v1/memories", headers={"Host": "larimar.internal", "Authorization": "Bearer k-0123456789"}
                     ).status_code == 200


def test_input_that_broke_the_checks_themselves_gets_422(client: TestClient) -> None:
    """Found by bench/hostile_load.py: metadata nested 400 deep exhausted the recursive depth check (500), and
    a lone surrogate in a field of the wrong type made FastAPI's own 422 unsendable (500, connection dropped)."""
    deep: object = "leaf"
    for _ in range(600):  # the JSON parser's own recursion limit answers 400 past ~1000
        deep = {"k": deep}
    r = client.post(f"{BASE}/facts", json={"text": LYON, "metadata": deep})
    assert r.status_code == 422 and "nests deeper" in r.json()["detail"]
    as_json = {"content-type": "application/json"}
    r = client.post(f"{BASE}/query", content=b'{"prompt": ["\\ud800"]}', headers=as_json)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "prompt"]
    r = client.post(f"{BASE}/facts", content=b'{"text": "x", "metadata": 7, "\\ud800": 1}', headers=as_json)
    assert r.status_code == 422
    assert client.get(BASE).status_code == 404  # nothing written


@pytest.mark.parametrize(("method", "path", "body", "code", "message"), [
    ("GET", f"{BASE}/facts?offset=9223372036854775808", None, 422, "offset"),
    ("POST", "/v1/chat/completions", {"model": "larimar/demo", "seed": 2**64, "temperature": 0.7,
                                      "messages": [{"role": "user", "content": "Hi"}]}, 422, "seed"),
    ("POST", f"{BASE}/facts", b'{"text": "A b c.", "supersedes": ["\\ud800"]}', 422, "supersedes[0]"),
    ("POST", f"{BASE}/facts/forget", b'{"ids": ["\\ud800"]}', 422, "ids[0]"),
    ("POST", f"{BASE}/import", b'{"text": "x", "metadata": {"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}\n", 422,
     "line 1: nested too deeply"),
    ("POST", f"{BASE}/score", {"prompt": "\U0001F600" * 1900, "candidates": ["\U0001F600" * 1900, "Lyon"]}, 422,
     "window"),
    ("POST", f"{BASE}/score", {"prompt": "\U0001F600" * 1000, "candidates": ["\U0001F600" * 1000, "Lyon"]}, 422,
     "max_score_tokens"),
])
def test_what_the_fuzzer_found_gets_a_4xx_naming_it(client: TestClient, method: str, path: str, body: object,
                                                     code: int, message: str) -> None:
    """bench/fuzz.py found each of these answering 500 (or, for /score, computing for minutes)."""
    client.post(f"{BASE}/facts", json={"text": LYON})
    raw = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) else \
        {"json": body} if body is not None else {}
    r = client.request(method, path, **raw)
    assert r.status_code == code and message in json.dumps(r.json()["detail"]), r.text
    assert client.get(BASE).json()["facts"] == 1


def test_metrics_and_readiness_name_no_memory(client: TestClient) -> None:
    client.post(f"{BASE}/facts", json={"text": LYON})
    assert "demo" not in client.get("/metrics").text
    assert "demo" not in client.get("/readyz").text


def test_a_seeded_sampled_answer_is_the_same_whatever_runs_beside_it(models) -> None:  # noqa: ANN001
    """The seed was process-global: concurrent sampled requests drew from each other's generator."""
    from models.llm import Sampling

    llm = models.llm
    prompt = llm.render([{"role": "user", "content": "Write a sentence about the sea."}])
    alone = {s: llm.generate_batch([prompt], 12, sampling=Sampling(1.0, 1.0, (), s))[0].text for s in range(4)}
    together: dict[int, list[str]] = {s: [] for s in range(4)}

    def run(seed: int) -> None:
        for _ in range(2):
            together[seed].append(llm.generate_batch([prompt], 12, sampling=Sampling(1.0, 1.0, (), seed))[0].text)

    threads = [threading.Thread(target=run, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(together[s] == [alone[s]] * 2 for s in range(4)), (alone, together)
