"""The knowledge editor: what every route calls, orchestrating the parts that do the work.

A request is checked (``service.limits``: a bad one changes nothing), texts become latents (the encoder),
facts are written and forgotten through the registry (``service.memories``), and a query runs the Larimar
read path (``service.recall``) and hands its readout to the decoder and the LLM. Out of scope, the LLM runs
exactly as if no memory existed. Everything it returns is plain values, so routes never reach into a memory.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from transformers.generation.streamers import BaseStreamer

from models.decoders import Decoder
from models.encoder import TextEncoder
from models.llm import CausalLM, ContinuationScore, Generation, Sampling
from models.remote import RemoteEngine
from models.scope import ScopeRule
from service.admission import Admission, default_concurrency
from service.batching import Batcher, Job
from service.engine import remote_batch
from service.errors import Conflict, DuplicateFact, InvalidInput, NotFound, no_such_memory
from service.limits import Limits
from service.memories import MemoryInfo, MemoryRegistry, Reading, StateCheck
from service.recall import MemoryMode, Recall, RecalledFact, Recaller
from service.settings import Settings
from service.store import Fact
from service.timing import Timer, utc_now
from service.transfer import Imported

EXPORT_CHUNK = 1024  # facts read from the store at a time while exporting


@dataclass(frozen=True)
class WriteResult:
    facts: list[Fact]
    timings_ms: dict[str, float]  # validate, encode, [conflicts,] lock, store_append, apply, [compaction,] total
    conflicts: list[list[RecalledFact]] = field(default_factory=list)  # per fact: see Editor.conflicts
    superseded: list[list[str]] = field(default_factory=list)  # per fact: the ids this write forgot (see add_facts)


@dataclass(frozen=True)
class Answer:
    """The edited LLM's answer to a query or a conversation, with what memory gave it."""

    answer: str
    in_scope: bool
    decoder: str
    facts: list[RecalledFact]
    timings_ms: dict[str, float]  # encode (the prompt), scope, read, prompt, admission (waiting), generate, total
    prompt_tokens: int  # of the text the LLM read (facts shown included; a latent prefix is no tokens)
    completion_tokens: int
    finish_reason: str  # stop (end of turn or a stop string) or length (max_tokens reached)


@dataclass(frozen=True)
class ScoreResult:
    in_scope: bool
    decoder: str
    facts: list[RecalledFact]
    scores: list[ContinuationScore]


class Editor:
    def __init__(self, settings: Settings, encoder: TextEncoder, llm: CausalLM, decoder: Decoder,
                 registry: MemoryRegistry, rule: ScopeRule) -> None:
        self.settings = settings
        self.limits = Limits(settings)
        self.encoder = encoder
        self.llm = llm
        self.decoder = decoder
        self.registry = registry
        self.recaller = Recaller(registry, rule, settings.recalled_facts, settings.memory_read, settings.read_segment)
        concurrency = settings.llm_concurrency or default_concurrency(settings.resolved_device(), os.cpu_count() or 1)
        self.admission = Admission(concurrency, settings.llm_queue, settings.llm_wait_s)
        self.batcher = Batcher(self.admission, self._generate, settings.llm_batch, settings.llm_batch_tokens)
        self.engine = RemoteEngine(settings.llm_url, settings.llm_model, settings.llm_api_key,
                                   settings.llm_timeout_s) if settings.llm_url else None

    @property
    def rule(self) -> ScopeRule:
        """The scope rule the read path and the conflict check apply (benchmarks record it)."""
        return self.recaller.rule

    # --- facts ---------------------------------------------------------------

    def add_facts(self, memory: str, items: list[tuple[str, dict[str, Any] | None]],
                  supersedes: list[list[str]] | None = None) -> WriteResult:
        """Write facts as one memory update (a batch is one rank-N Woodbury step), report each one's
        ``conflicts``, then forget the facts each names in ``supersedes`` (after the write, so a failure in
        between leaves old and new, never neither). ``superseded`` lists those this write forgot: one forgotten
        meanwhile by another request is left out, and the others are forgotten all the same."""
        timer = Timer()
        checked = self.limits.facts(items)
        supersedes = supersedes or [[] for _ in items]
        if named := list(self.limits.fact_ids(tuple(i for ids in supersedes for i in ids), "supersedes")):
            self._require(memory)
            if gone := next((i for i, f in zip(named, self.registry.facts(memory, named), strict=True)
                             if f is None), None):
                raise NotFound(f"fact {gone!r} is not in memory {memory!r}")
        timer.lap("validate")
        latents = self.encoder.encode([t for t, _ in checked])  # (N, C)
        timer.lap("encode")
        conflicts = [[c for c in found if c.id not in gone] for found, gone in
                     zip(self.recaller.conflicts(memory, [t for t, _ in checked], latents), supersedes, strict=True)]
        timer.lap("conflicts")
        facts = self.registry.write(memory, checked, latents, timer)
        forgot = set(self.registry.forget_held(memory, *(i for ids in supersedes for i in ids)))  # in one step
        return WriteResult(facts, timer.total(), conflicts, [[i for i in ids if i in forgot] for ids in supersedes])

    def search(self, memory: str, q: str, limit: int) -> list[tuple[Fact, float]]:
        """The facts nearest ``q`` by the encoder's cosine, best first (what ``GET .../facts?q=`` lists)."""
        reading = self._reading(memory)
        if not reading.live:
            return []
        (hits,) = reading.nearest_facts(self.encoder.encode([self.limits.text(q, "q")]), limit)
        return hits

    def export(self, memory: str, latents: bool = False) -> Iterator[dict[str, Any]]:
        """Every fact of the memory in the order written, as export records (``service.transfer``); a chunk
        at a time, so a memory of any size streams. Writes and forgets meanwhile may or may not be seen."""
        self._require(memory)  # now, not at the first record: a missing memory is a 404, not a broken stream
        extra = {"encoder": self.settings.encoder} if latents else None
        return (fact.as_dict() | ({"latent": z.tolist()} | extra if extra else {})
                for fact, z in self.registry.exported(memory, EXPORT_CHUNK))

    def import_facts(self, memory: str, records: list[Imported], keep_ids: bool = True) -> int:
        """Write exported facts, in their order, all or nothing: encoded first, then one store transaction and
        one published view (``MemoryRegistry.write`` with ``entry_size``), so a failure or a restart leaves
        none of the file and a retry is the same request. Texts are encoded by this service's encoder whatever
        wrote the file (a latent in it is never used). With ``keep_ids`` the facts keep their ids and created
        times, and an id the memory already holds fails the whole import."""
        if not records:
            raise InvalidInput("the file holds no facts")
        if len(records) > self.settings.max_import_facts:
            raise InvalidInput(f"the file holds {len(records)} facts, over max_import_facts="
                               f"{self.settings.max_import_facts}: split it")
        checked = [(self.limits.text(r.text, f"line {r.line}: text"), self.limits.metadata(r.metadata))
                   for r in records]
        kept = None
        if keep_ids:
            kept = [(r.id or uuid.uuid4().hex, r.created_at or utc_now()) for r in records]
            ids = [i for i, _ in kept]
            if len(set(ids)) < len(ids):
                raise InvalidInput("the file holds a fact id twice")
        latents = self.encoder.encode([t for t, _ in checked])  # (N, C), in batches of similar lengths
        try:
            self.registry.write(memory, checked, latents, kept=kept, entry_size=self.settings.max_batch_facts)
        except DuplicateFact as e:  # found before anything is stored
            raise Conflict(f"{e} (import with keep_ids=false to give the facts new ids); nothing was imported") from e
        return len(checked)

    def update_fact(self, memory: str, fact_id: str, text: str | None, metadata: dict[str, Any] | None) -> Fact:
        """New text and/or metadata for a fact, in one durable step (``MemoryRegistry.replace``); what is not
        given stays. New text is encoded and takes the old text's place in the memory."""
        if text is None and metadata is None:
            raise InvalidInput("give text, metadata or both")
        self.get_fact(memory, fact_id)  # 404 first; the stored fact is merged with these under the memory's lock
        text = None if text is None else self.limits.text(text)
        metadata = None if metadata is None else self.limits.metadata(metadata)
        latent = None if text is None else self.encoder.encode([text])[0]  # (C,) before the lock, used if text changed
        fact = self.registry.replace(memory, fact_id, text, metadata, latent)
        if fact is None:  # forgotten meanwhile
            raise NotFound(f"fact {fact_id!r} is not in memory {memory!r}")
        return fact

    def forget(self, memory: str, *fact_ids: str) -> None:
        """Forget facts in one step (one downdate, one durable store transaction): all, or none with a 404
        naming one that is not in the memory."""
        if not self.registry.forget(memory, *self.limits.ids(fact_ids)):
            held = self.registry.facts(memory, list(fact_ids))
            gone = next((i for i, f in zip(fact_ids, held, strict=True) if f is None), fact_ids[0])
            raise NotFound(f"fact {gone!r} is not in memory {memory!r}")

    def list_facts(self, memory: str, limit: int, offset: int) -> tuple[list[Fact], int]:
        """A page from the store; the total is the memory's own count (counting rows in the store is O(N))."""
        return self.registry.page(memory, limit, offset), self.memory(memory).facts

    def get_fact(self, memory: str, fact_id: str) -> Fact:
        self._require(memory)
        (fact,) = self.registry.facts(memory, [fact_id])
        if fact is None:
            raise NotFound(f"fact {fact_id!r} is not in memory {memory!r}")
        return fact

    # --- answers ---------------------------------------------------------------

    def recall(self, memory: str, prompt: str, mode: MemoryMode, timer: Timer | None = None) -> Recall:
        return self.recaller.recall(memory, prompt, mode, timer)

    def query(self, memory: str, prompt: str, max_new_tokens: int | None, mode: MemoryMode,
              gone: threading.Event | None = None) -> Answer:
        """One greedy answer: a conversation of one turn, as the benchmarks run it."""
        return self.chat(memory, [{"role": "user", "content": self.limits.text(prompt, "prompt")}], max_new_tokens,
                         Sampling(), mode, gone=gone, what="max_new_tokens")

    def chat(self, memory: str | None, messages: list[dict[str, str]], max_new_tokens: int | None,
             sampling: Sampling, mode: MemoryMode, streamer: BaseStreamer | None = None,
             gone: threading.Event | None = None, what: str = "max_tokens") -> Answer:
        """One answer to a conversation. The scope rule and the readout read its last user turn (what is
        asked now); the turns before it reach the LLM as they were. ``memory`` None: the plain LLM. A
        ``streamer`` gets the answer's tokens as they come (``openai_compat.stream``); ``gone``, set when the
        client disconnects, stops the answer (service/cancel.py). The answer is generated in a batch with the
        others waiting for the LLM (service/batching.py)."""
        chat = self.limits.conversation(messages)
        n = self.limits.max_new_tokens(max_new_tokens, what)
        self.limits.sampling(sampling)
        timer = Timer()
        with self.admission.admitted():
            recall = self.recall(memory, chat.prompt, mode, timer) if memory else Recall(False, None, [])
            prompt_tokens = len(self.llm.token_ids(self.decoder.generation_text(self.llm, chat, recall.readout)))
            if prompt_tokens + n > (window := self.llm.window):
                raise InvalidInput(f"the conversation is {prompt_tokens} tokens (the recalled facts included); with "
                                   f"{what}={n} it passes the LLM's window of {window}: send fewer or shorter turns")
            timer.lap("prompt")
            job = Job(chat, recall.readout, n, sampling, prompt_tokens + n, streamer, gone)
            answer = self.batcher.answer(job)
        timer.lap("admission", job.started)  # waiting for the LLM
        timer.lap("generate")
        return Answer(answer.text, recall.in_scope, self.decoder.name, recall.facts, timer.total(), prompt_tokens,
                      answer.new_tokens, "stop" if answer.stopped else "length")

    def _generate(self, jobs: list[Job], streamer: BaseStreamer) -> list[Generation]:
        """One batch of answers (``Batcher``): the jobs share a sampling; each keeps its own limit. On the
        remote engine when one is set (service/engine.py)."""
        if self.engine is not None:
            return remote_batch(self.engine, jobs, streamer)
        return self.decoder.generate_batch(self.llm, [(j.chat, j.readout) for j in jobs],
                                           [j.max_new_tokens for j in jobs], sampling=jobs[0].sampling,
                                           streamer=streamer)

    def score(self, memory: str, prompt: str, candidates: list[str], mode: MemoryMode) -> ScoreResult:
        self.limits.text(prompt, "prompt")
        self.limits.candidates(candidates)
        asked = len(self.llm.token_ids(prompt))
        self.limits.scored([asked + len(self.llm.token_ids(c)) for c in candidates], self.llm.window)
        with self.admission.slot():
            recall = self.recall(memory, prompt, mode)
            (scores,) = self.decoder.score_batch(self.llm, [(prompt, candidates, recall.readout)])
        return ScoreResult(recall.in_scope, self.decoder.name, recall.facts, scores)

    # --- memories ----------------------------------------------------------------

    def memory(self, memory: str) -> MemoryInfo:
        info = self.registry.info(memory)
        if info is None:
            raise no_such_memory(memory)
        return info

    def memories(self) -> list[MemoryInfo]:
        return self.registry.infos()

    def check(self, memory: str) -> StateCheck:
        if (found := self.registry.check(memory)) is None:
            raise no_such_memory(memory)
        return found

    def delete_memory(self, memory: str) -> None:
        if not self.registry.delete(memory):
            raise NotFound(f"memory {memory!r} does not exist")

    def snapshot(self, memory: str) -> MemoryInfo:
        info = self.registry.snapshot(memory)
        if info is None:
            raise NotFound(f"memory {memory!r} does not exist")
        return info

    def purge(self, memory: str) -> MemoryInfo:
        """Erasure now: forgets and deletes so far reach every file the store writes."""
        self._require(memory)
        self.registry.purge()
        return self.memory(memory)

    def readiness(self) -> tuple[bool, bool]:
        return self.registry.readiness()

    def restoring(self) -> str:
        """What restore is doing now, "" when it is not running."""
        return self.registry.restoring

    def close(self) -> None:
        self.registry.close()

    def _require(self, memory: str) -> None:
        self.memory(memory)

    def _reading(self, memory: str) -> Reading:
        reading = self.registry.reading(memory)
        if reading is None:
            raise no_such_memory(memory)
        return reading
