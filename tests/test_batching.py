"""Answers waiting for the LLM are generated together (service/batching.py): who shares a batch, who runs
alone, and that each request gets its own answer, its errors and its refusals. The LLM here is a stand-in
that records its batches; the real one answers the same alone or batched (tests/test_models.py, and the last
test here over HTTP)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import torch
from transformers.generation.streamers import BaseStreamer

from models.decoders import Chat
from models.llm import Generation, Sampling
from service.admission import Admission
from service.batching import Batcher, Job, Watching
from service.cancel import ClientGone
from service.errors import Busy


class StandIn:
    """Generates "<prompt>/<limit>" for each job after ``step_s`` a token, recording each batch's prompts, and
    puts the prompts (B, 2), then a token a step (B,), to the batch's streamer, as both generation paths do:
    row i's token at step k is 100 i + k."""

    def __init__(self, step_s: float = 0.02, fail: bool = False, parts: bool = False) -> None:
        self.step_s, self.fail, self.parts = step_s, fail, parts
        self.batches: list[list[str]] = []

    def __call__(self, jobs: list[Job], streamer: Watching) -> list[Generation]:
        """With ``parts``, the odd rows, then the even ones, as LatentDecoder generates in-scope rows apart."""
        self.batches.append([j.chat.prompt for j in jobs])
        parts = [list(range(1, len(jobs), 2)), list(range(0, len(jobs), 2))] if self.parts else [None]
        for part in [p for p in parts if p != []]:
            rows = torch.arange(len(jobs)) if part is None else torch.tensor(part)
            out = streamer if part is None else streamer.rows(part)
            out.put(torch.stack([rows, rows], 1))
            for k in range(max(jobs[i].max_new_tokens for i in rows.tolist())):
                out.put(100 * rows + k)
                time.sleep(self.step_s)
            out.end()
        if self.parts:
            streamer.end()
        if self.fail:
            raise RuntimeError("the LLM failed")
        return [Generation(f"{j.chat.prompt}/{j.max_new_tokens}", j.max_new_tokens) for j in jobs]


def job(prompt: str, n: int = 5, **kw: object) -> Job:
    sampling, tokens = kw.pop("sampling", Sampling()), kw.pop("tokens", 20 + n)
    return Job(Chat((), prompt), None, n, sampling, tokens, **kw)  # type: ignore[arg-type]


def run_all(batcher: Batcher, jobs: list[Job], stagger_s: float = 0.01) -> list[Generation | BaseException]:
    """Each job from a thread of its own, started in order; their answers or errors, in that order."""
    out: list[Generation | BaseException] = [RuntimeError("never answered")] * len(jobs)

    def one(i: int) -> None:
        try:
            out[i] = batcher.answer(jobs[i])
        except BaseException as e:  # noqa: BLE001 - returned to the test
            out[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
        time.sleep(stagger_s)
    for t in threads:
        t.join(30)
    return out


def test_jobs_waiting_together_share_a_batch_and_each_gets_its_own_answer() -> None:
    llm = StandIn(step_s=0.03)
    batcher = Batcher(Admission(1, 16, 10.0), llm, max_batch=4, max_tokens=4096)
    jobs = [job(f"q{i}", n=5 + i) for i in range(9)]
    answers = run_all(batcher, jobs)
    assert [a.text for a in answers] == [f"q{i}/{5 + i}" for i in range(9)]  # type: ignore[union-attr]
    assert llm.batches[0] == ["q0"], "the first runs at once, alone"
    assert [len(b) for b in llm.batches] == [1, 4, 4], "the rest waited, then went four at a time"
    assert [p for b in llm.batches for p in b] == [f"q{i}" for i in range(9)], "oldest first"


class Recorded(BaseStreamer):
    def __init__(self) -> None:
        self.seen: list[list[int]] = []
        self.ended = False

    def put(self, value: torch.Tensor) -> None:
        assert value.shape[0] == 1, "a batch of one, as TextIteratorStreamer takes"
        self.seen.append(value[0].reshape(-1).tolist())

    def end(self) -> None:
        self.ended = True


def test_a_batch_holds_at_most_its_padded_tokens() -> None:
    llm = StandIn(step_s=0.03)
    batcher = Batcher(Admission(1, 16, 10.0), llm, max_batch=8, max_tokens=1000)
    jobs = [job("first", n=10), *(job(f"short{i}", tokens=200) for i in range(4)), job("long", tokens=900),
            job("too long", tokens=5000)]
    answers = run_all(batcher, jobs)
    assert all(isinstance(a, Generation) for a in answers)
    assert llm.batches[1:] == [["short0", "short1", "short2", "short3"], ["long"], ["too long"]]


@pytest.mark.parametrize("parts", [False, True])
def test_sampled_answers_run_alone_and_streamed_ones_get_their_own_rows(parts: bool) -> None:
    llm = StandIn(parts=parts)
    batcher = Batcher(Admission(1, 16, 10.0), llm, max_batch=8, max_tokens=4096)
    streams = [Recorded(), Recorded()]
    jobs = [job("first"), job("sampled", sampling=Sampling(0.7, 0.9, (), 1)), job("greedy-a"),
            job("streamed", n=3, streamer=streams[0]), job("greedy-b"), job("streamed too", n=6, streamer=streams[1]),
            job("stops", sampling=Sampling(stop=("\n",)))]
    answers = run_all(batcher, jobs)
    assert all(isinstance(a, Generation) for a in answers)
    assert ["sampled"] in llm.batches and ["stops"] in llm.batches, "alone; other stop strings: another batch"
    assert ["greedy-a", "streamed", "greedy-b", "streamed too"] in llm.batches
    assert streams[0].seen == [[1, 1], [100], [101], [102]] and streams[0].ended, "its prompt, 3 tokens of its row"
    assert streams[1].seen == [[3, 3], *([300 + k] for k in range(6))] and streams[1].ended


def test_an_error_reaches_every_job_of_its_batch_and_the_next_batch_runs() -> None:
    failing = StandIn(fail=True)
    batcher = Batcher(Admission(1, 16, 10.0), failing, max_batch=8, max_tokens=4096)
    answers = run_all(batcher, [job("a"), job("b"), job("c")])
    assert all(isinstance(a, RuntimeError) for a in answers)
    failing.fail = False
    assert batcher.answer(job("d")).text == "d/5"


def test_a_job_whose_client_went_is_dropped_and_a_batch_whose_clients_all_went_stops() -> None:
    llm = StandIn(step_s=0.05)
    batcher = Batcher(Admission(1, 16, 10.0), llm, max_batch=8, max_tokens=4096)
    gone = threading.Event()
    gone.set()
    answers = run_all(batcher, [job("runs", n=10), job("left before", gone=gone), job("stays")])
    assert isinstance(answers[1], ClientGone) and answers[2].text == "stays/5"  # type: ignore[union-attr]
    assert all("left before" not in b for b in llm.batches)

    going = [threading.Event(), threading.Event()]
    threading.Timer(0.2, lambda: [g.set() for g in going]).start()
    t0 = time.monotonic()
    answers = run_all(batcher, [job("long", n=200, gone=going[0]), job("long too", n=200, gone=going[1])], 0)
    assert all(isinstance(a, ClientGone) for a in answers)
    assert time.monotonic() - t0 < 5, "stopped at the next token, not after 200 of them (10 s)"


def test_a_job_waiting_behind_a_score_starts_when_the_score_gives_its_slot_back() -> None:
    """A score holds an admission slot outside the batcher; when it gave the slot back, nobody told the waiting
    jobs, which slept until their wait ran out (30 s by default) and were refused."""
    admission = Admission(1, 16, 5.0)
    batcher = Batcher(admission, StandIn(), max_batch=8, max_tokens=4096)

    def score() -> None:
        with admission.slot():
            time.sleep(0.3)

    scoring = threading.Thread(target=score)
    scoring.start()
    time.sleep(0.05)
    t0 = time.monotonic()
    assert batcher.answer(job("after the score")).text == "after the score/5"
    assert time.monotonic() - t0 < 2.5, "started when the slot came back, not when the wait ran out"
    scoring.join()


def test_a_job_not_started_within_the_wait_is_refused_busy() -> None:
    llm = StandIn(step_s=0.1)
    batcher = Batcher(Admission(1, 16, 0.3), llm, max_batch=1, max_tokens=4096)
    answers = run_all(batcher, [job("long", n=20), job("waits")])
    assert isinstance(answers[0], Generation)
    assert isinstance(answers[1], Busy) and answers[1].retry_after >= 1
    assert [b for b in llm.batches] == [["long"]]


@pytest.mark.parametrize("batch", [1, 8])
def test_concurrent_queries_get_the_answers_they_get_alone(make_server: Callable, tmp_path: Path, batch: int) -> None:
    """Over HTTP with the real LLM and memory: batched answers are the answers one at a time."""
    prompts = ["What is the capital of France?", "Who wrote Hamlet?", "What does Ada Quill do?",
               "Where is the Eiffel Tower?", "What colour are bananas?", "Name a river in Africa."]
    with make_server(f"file://{tmp_path / 'store'}", llm_concurrency=1, llm_batch=batch) as base:
        q = base + "/v1/memories/b/query"
        assert httpx.post(base + "/v1/memories/b/facts/batch", json={"facts": [
            {"text": "The capital of France is Lyon."}, {"text": "Ada Quill works as a pilot."}]}).status_code == 201
        alone = [httpx.post(q, json={"prompt": p, "max_new_tokens": 12 + i}, timeout=120).json()
                 for i, p in enumerate(prompts)]
        together: list[dict] = [{}] * len(prompts)

        def ask(i: int) -> None:
            together[i] = httpx.post(q, json={"prompt": prompts[i], "max_new_tokens": 12 + i}, timeout=120).json()

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        streamed: list[str] = [""] * 3

        def stream(i: int) -> None:
            body = {"model": "larimar/b", "stream": True, "max_tokens": 12 + i,
                    "messages": [{"role": "user", "content": prompts[i]}]}
            with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=120) as r:
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        streamed[i] += "".join(c["delta"].get("content", "") for c in json.loads(line[6:])["choices"])

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert [a["answer"] for a in together] == [a["answer"] for a in alone]
    assert [a["facts"] for a in together] == [a["facts"] for a in alone]
    assert alone[0]["in_scope"] and "Lyon" in alone[0]["answer"]
    assert [s.strip() for s in streamed] == [a["answer"] for a in alone[:3]], "streamed side by side, the same"
