"""Answers that wait for the LLM together are generated together.

One answer at a time leaves most of the machine idle: each step of a small LLM is a thin matrix-vector
product. On this project's 2-core CPU (SmolLM2-135M, 32 new tokens each) one answer took 1.0 s and eight in
one batch 2.8 s, 0.35 s an answer; under load, answers per second rise about threefold, with the same
answers (greedy decoding gives a prompt the same answer alone or among others, each cut at its own limit).

A request that needs the LLM becomes a ``Job``. When an admission slot is free, the request that finds it
takes the oldest waiting job and every later one that can share its batch (greedy, the same stop strings),
at most ``max_batch`` of them and ``max_tokens`` padded tokens, runs them as one batch, and hands each its
answer, a streamed one token by token: the requests' own threads do the work, as leader and followers, with
no thread of this module's own. A sampled answer runs alone (a seeded draw must not depend on what runs
beside it).

A job whose client has gone (``Job.gone``) is dropped before its batch starts; a batch stops at the next
token once every client in it has gone (service/cancel.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from torch import Tensor
from transformers.generation.streamers import BaseStreamer

from models.decoders import Chat, Readout
from models.llm import Generation, RowsStreamer, Sampling
from service.admission import Admission
from service.cancel import ClientGone
from service.errors import Busy


@dataclass(eq=False)
class Job:
    """One answer to generate: the conversation, what memory recalled for it, its limit and sampling; a
    ``streamer`` for a streamed answer; ``gone`` set when its client disconnects."""

    chat: Chat
    readout: Readout | None
    max_new_tokens: int
    sampling: Sampling
    tokens: int  # the prompt's tokens plus max_new_tokens: its row's length at most
    streamer: BaseStreamer | None = None
    gone: threading.Event | None = None
    started: float | None = None  # time.perf_counter() when its batch began
    answer: Generation | None = None
    error: BaseException | None = None
    done: bool = field(default=False)

    @property
    def alone(self) -> bool:
        return not self.sampling.greedy

    @property
    def left(self) -> bool:
        return self.gone is not None and self.gone.is_set()


Generate = Callable[[list[Job], BaseStreamer], list[Generation]]  # one batch -> one answer per job


class Watching(RowsStreamer):
    """The streamer a batch runs with: it stops the batch (``ClientGone``) once every client in it has gone,
    and passes each streamed job its own row: the prompt first, then one token a step up to the job's limit
    (a streamer such as transformers' ``TextIteratorStreamer`` takes a batch of one). A decoder may generate
    the batch in parts (``rows``)."""

    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs
        self.sent = [0] * len(jobs)  # new tokens passed on to each job's streamer

    def put(self, value: Tensor) -> None:
        self.put_rows(value, range(len(self.jobs)))

    def put_rows(self, value: Tensor, rows: Sequence[int]) -> None:
        """``value``'s row r is job ``rows[r]``'s: (B, T) the prompts first, then (B,) a token a step."""
        if all(j.left for j in self.jobs):
            raise ClientGone.everyone()
        prompt = value.dim() == 2
        for r, i in enumerate(rows):
            job = self.jobs[i]
            if job.streamer is not None and (prompt or self.sent[i] < job.max_new_tokens):
                job.streamer.put(value[r : r + 1])
                self.sent[i] += not prompt

    def rows(self, indices: list[int]) -> BaseStreamer:
        return _Part(self, indices)

    def end(self) -> None:
        for j in self.jobs:
            if j.streamer is not None:
                j.streamer.end()


class _Part(BaseStreamer):
    def __init__(self, whole: Watching, rows: list[int]) -> None:
        self.whole, self.rows = whole, rows

    def put(self, value: Tensor) -> None:
        self.whole.put_rows(value, self.rows)

    def end(self) -> None:
        """The whole batch ends once, after its last part (the decoder ends it)."""


class Batcher:
    def __init__(self, admission: Admission, generate: Generate, max_batch: int, max_tokens: int) -> None:
        """``max_tokens``: most padded tokens in a batch (rows x the longest row), which bounds its memory; a job
        longer than that runs alone."""
        self.admission, self.generate = admission, generate
        self.max_batch, self.max_tokens = max_batch, max_tokens
        self._waiting: list[Job] = []
        self._changed = threading.Condition()  # guards _waiting and every job's done; notified when a slot frees
        admission.on_release = self._slot_freed

    def answer(self, job: Job) -> Generation:
        """This job's answer, once a batch has made it. ``Busy`` when no batch took it within the admission's
        ``wait_s``; ``ClientGone`` when its client went before; what generation raised, as it was."""
        deadline = time.monotonic() + self.admission.wait_s
        with self._changed:
            self._waiting.append(job)
            while not job.done:
                # lead a batch only while this job waits: one taken into another's batch waits for it (with
                # several slots, a free one must not be taken and given back in a loop meanwhile)
                if job in self._waiting and self.admission.try_acquire():
                    batch = self._take()
                    self._changed.release()
                    try:
                        self._run(batch)
                    finally:
                        self._changed.acquire()
                        self.admission.release()  # notifies (_slot_freed; the lock is re-entrant)
                    continue
                left = deadline - time.monotonic()
                if job in self._waiting and left <= 0:
                    self._waiting.remove(job)
                    raise Busy(f"no LLM slot came free within {self.admission.wait_s:g} s; retry later",
                               self.admission.retry_after())
                self._changed.wait(left if job in self._waiting else None)
        if job.error is not None:
            raise job.error
        assert job.answer is not None
        return job.answer

    def _slot_freed(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _take(self) -> list[Job]:
        """The next batch, taken off the queue (the caller holds ``_changed`` and a slot): the oldest job and
        the later ones that can share its batch. Jobs whose client has gone are answered ClientGone first."""
        for j in [j for j in self._waiting if j.left]:
            self._waiting.remove(j)
            j.error, j.done = ClientGone("the client closed the connection before its answer began"), True
        if not self._waiting:
            return []
        first = self._waiting[0]
        batch = [first]
        for j in self._waiting[1:] if not first.alone else []:
            longest = max(j.tokens, *(b.tokens for b in batch))
            if len(batch) < self.max_batch and not j.alone and j.sampling == first.sampling \
                    and (len(batch) + 1) * longest <= self.max_tokens:
                batch.append(j)
        for j in batch:
            self._waiting.remove(j)
        return batch

    def _run(self, batch: list[Job]) -> None:
        """Generate one batch (without the lock) and hand each job its answer or the batch's error."""
        if not batch:
            return
        started = time.perf_counter()
        try:
            answers = self.generate(batch, Watching(batch))
            errors: list[BaseException | None] = [None] * len(batch)
        except Exception as e:  # noqa: BLE001 - every job of the batch gets it
            answers, errors = [None] * len(batch), [e] * len(batch)
        with self._changed:
            for j, a, e in zip(batch, answers, errors, strict=True):
                j.started, j.answer, j.error, j.done = started, a, e, True
