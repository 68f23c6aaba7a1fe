"""The knowledge editor: what every route calls.

It checks input against the configured limits (a bad request changes
nothing), turns text into latents, and for queries runs the Larimar read
path: scope detector -> memory readout -> facts the readout reconstructs ->
decoder -> LLM. Out of scope, the LLM runs exactly as if no memory existed.
Everything it returns is plain values, so routes never reach into a memory.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor
from transformers.generation.streamers import BaseStreamer

from memory_core import hierarchical_read
from models.decoders import Chat, Decoder, Readout
from models.encoder import TextEncoder
from models.llm import CausalLM, ContinuationScore, Sampling
from models.relation import RelationGate
from models.scope import DEFAULT_SCOPE_THRESHOLD, ScopeDetector, mentions, named_in, split_sentences
from service.lookup import top_k
from service.memories import DuplicateFact, MemoryHandle, MemoryInfo, MemoryRegistry
from service.settings import Settings
from service.store import Fact
from service.timing import Timer, utc_now

MemoryMode = Literal["auto", "on", "off"]  # read memory when the scope detector says so, always, or never
MAX_METADATA_CHARS = 4096
CONFLICT_CANDIDATES = 8  # nearest facts a write's conflict check reads
EXPORT_CHUNK = 1024  # facts read from the store at a time while exporting
MAX_STOP = 4  # stop strings per chat request, as OpenAI allows
ROLES = ("system", "user", "assistant")  # chat message roles


class InvalidInput(ValueError):
    """The request is well-formed JSON but breaks a limit or rule: 422, nothing changed."""


class NotFound(LookupError):
    """No such memory or fact: 404."""


class Conflict(ValueError):
    """The request clashes with what the memory holds (an imported fact id it already has): 409, nothing
    changed."""


@dataclass(frozen=True)
class Imported:
    """One fact of an import file, as ``service.transfer`` parsed it."""

    line: int
    text: str
    metadata: dict[str, Any] | None = None
    id: str | None = None
    created_at: str | None = None


SOURCE_KEYS = ("document", "title", "piece", "start", "end", "continues")  # a document's piece: where it came from


@dataclass(frozen=True)
class RecalledFact:
    id: str
    text: str
    similarity: float  # cosine between the memory readout and this fact's latent
    source: dict[str, Any] | None = None  # a document's piece: SOURCE_KEYS, so answers can cite the span


def piece_id(doc_id: str, i: int) -> str:
    """The fact id of a document's piece ``i`` (service.documents writes them; recall reads their neighbours)."""
    return f"{doc_id}-{i}"


def source_of(metadata: dict[str, Any]) -> dict[str, Any] | None:
    return {k: metadata.get(k) for k in SOURCE_KEYS} if "document" in metadata else None


@dataclass
class Recall:
    in_scope: bool
    readout: Readout | None
    facts: list[RecalledFact]
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class WriteResult:
    facts: list[Fact]
    timings_ms: dict[str, float]  # validate, encode, [conflicts,] lock, store_append, apply, [compaction,] total
    conflicts: list[list[RecalledFact]] = field(default_factory=list)  # per fact: see Editor.conflicts
    superseded: list[list[str]] = field(default_factory=list)  # per fact: the ids it replaced, now forgotten


@dataclass(frozen=True)
class ChatResult:
    answer: str
    in_scope: bool
    decoder: str
    facts: list[RecalledFact]
    timings_ms: dict[str, float]
    prompt_tokens: int  # of the text the LLM read (facts shown included; a latent prefix is no tokens)
    completion_tokens: int
    finish_reason: str  # stop (end of turn or a stop string) or length (max_tokens reached)


@dataclass(frozen=True)
class QueryResult:
    answer: str
    in_scope: bool
    decoder: str
    facts: list[RecalledFact]
    timings_ms: dict[str, float]  # encode (the prompt), scope, read, generate, total


@dataclass(frozen=True)
class ScoreResult:
    in_scope: bool
    decoder: str
    facts: list[RecalledFact]
    scores: list[ContinuationScore]


class Editor:
    def __init__(self, settings: Settings, encoder: TextEncoder, llm: CausalLM, decoder: Decoder,
                 registry: MemoryRegistry, scope_threshold: float = DEFAULT_SCOPE_THRESHOLD,
                 relation: RelationGate | None = None) -> None:
        self.settings = settings
        self.encoder = encoder
        self.llm = llm
        self.decoder = decoder
        self.registry = registry
        self.scope = ScopeDetector(encoder, scope_threshold)
        self.relation = relation  # None: recalled facts are not checked for the relation the query asks

    # --- validation ------------------------------------------------------------

    def _text(self, text: str, what: str = "text") -> str:
        if not text.strip():
            raise InvalidInput(f"{what} must not be empty")
        if len(text) > self.settings.max_text_chars:
            raise InvalidInput(f"{what} has {len(text)} characters; the limit is {self.settings.max_text_chars}")
        return text

    def checked_metadata(self, metadata: dict[str, Any] | None) -> dict[str, Any]:
        metadata = metadata or {}
        if len(json.dumps(metadata)) > MAX_METADATA_CHARS:
            raise InvalidInput(f"metadata is over {MAX_METADATA_CHARS} characters of JSON")
        return metadata

    def _handle(self, memory: str) -> MemoryHandle:
        h = self.registry.get(memory)
        if h is None:
            raise NotFound(f"memory {memory!r} does not exist (it is created by its first write)")
        return h

    # --- facts ---------------------------------------------------------------

    def add_facts(self, memory: str, items: list[tuple[str, dict[str, Any] | None]],
                  supersedes: list[list[str]] | None = None) -> WriteResult:
        """Write facts as one memory update (a batch is one rank-N Woodbury step), report each one's
        ``conflicts``, then forget the facts each names in ``supersedes`` (after the write, so a failure in
        between leaves old and new, never neither)."""
        timer = Timer()
        if not items:
            raise InvalidInput("facts must hold at least one fact")
        if len(items) > self.settings.max_batch_facts:
            raise InvalidInput(f"{len(items)} facts in one batch; the limit is {self.settings.max_batch_facts}")
        label = "facts[{}].text" if len(items) > 1 else "text"
        checked = [(self._text(t, label.format(i)), self.checked_metadata(m)) for i, (t, m) in enumerate(items)]
        supersedes = supersedes or [[] for _ in items]
        if named := [i for ids in supersedes for i in ids]:  # 404 before anything is written
            self._handle(memory)
            if gone := next((i for i, f in zip(named, self.registry.store.facts(memory, named), strict=True)
                             if f is None), None):
                raise NotFound(f"fact {gone!r} is not in memory {memory!r}")
        timer.lap("validate")
        latents = self.encoder.encode([t for t, _ in checked])  # (N, C)
        timer.lap("encode")
        conflicts = [[c for c in found if c.id not in gone] for found, gone in
                     zip(self.conflicts(memory, [t for t, _ in checked], latents), supersedes, strict=True)]
        timer.lap("conflicts")
        facts = self.registry.write(memory, checked, latents, timer)
        if gone := [i for ids in supersedes for i in ids]:  # one step; False: forgotten meanwhile, as was asked
            self.registry.forget(memory, *gone)
        return WriteResult(facts, timer.total(), conflicts, supersedes)

    def conflicts(self, memory: str, texts: list[str], latents: Tensor) -> list[list[RecalledFact]]:
        """Per new fact, the facts the memory holds that look like the same statement with another answer:
        within the scope threshold of it, naming what it names (``mentions``) and, with a relation gate,
        stating its relation, but worded otherwise ("The capital of France is Lyon." for "The capital of
        France is Marseille."). Callers resolve them: keep both, or write with ``supersedes``."""
        h = self.registry.get(memory)
        if h is None or not h.view.live:
            return [[] for _ in texts]
        out = []
        for text, near in zip(texts, self._nearest(memory, h, latents, CONFLICT_CANDIDATES), strict=True):
            found = [(f, s) for f, s in near if 1.0 - s <= self.scope.threshold
                     and f.text.strip() != text.strip() and mentions(text, f.text)]
            if found and self.relation is not None:  # the gate's encoder call only when something is that close
                agree = self.relation.agrees(text, [f.text for f, _ in found])
                found = [fs for fs, ok in zip(found, agree, strict=True) if ok]
            out.append([RecalledFact(f.id, f.text, s) for f, s in found])
        return out

    def search(self, memory: str, q: str, limit: int) -> list[tuple[Fact, float]]:
        """The facts nearest ``q`` by the encoder's cosine, best first (what ``GET .../facts?q=`` lists)."""
        h = self._handle(memory)
        if not h.view.live:
            return []
        (hits,) = self._nearest(memory, h, self.encoder.encode([self._text(q, "q")]), limit)
        return hits

    def _nearest(self, memory: str, h: MemoryHandle, Z: Tensor, k: int) -> list[list[tuple[Fact, float]]]:
        """Per row of ``Z`` (Q, C), the k live facts nearest it with their cosines, best first; one lookup and
        one store read for all rows (a fact forgotten meanwhile is left out)."""
        view, index = h.view, h.index
        sims, idx = top_k(Z, view.latents, min(k, view.live), view.dead, index, view.ids)  # (Q, k)
        ids = [[view.ids[i] for i in row] for row in idx.tolist()]
        flat = [i for row in ids for i in row]
        held = dict(zip(flat, self.registry.store.facts(memory, flat), strict=True))
        return [[(held[i], s) for i, s in zip(row, srow, strict=True) if held[i] is not None]
                for row, srow in zip(ids, sims.tolist(), strict=True)]

    def export(self, memory: str, latents: bool = False) -> Iterator[dict[str, Any]]:
        """Every fact of the memory in the order written, as export records (``service.transfer``); a chunk
        at a time, so a memory of any size streams. Writes and forgets meanwhile may or may not be seen."""
        self._handle(memory)  # now, not at the first record: a missing memory is a 404, not a broken stream
        return self._exported(memory, latents)

    def _exported(self, memory: str, latents: bool) -> Iterator[dict[str, Any]]:
        for ids, Z in self.registry.store.latents(memory, EXPORT_CHUNK):  # Z: (n, C)
            for fact, z in zip(self.registry.store.facts(memory, ids), Z, strict=True):
                if fact is not None:  # forgotten since the chunk was read
                    yield fact.as_dict() | ({"latent": z.tolist(), "encoder": self.settings.encoder} if latents else {})

    def import_facts(self, memory: str, records: list[Imported], keep_ids: bool = True) -> int:
        """Write exported facts, in their order, batch by batch; texts are encoded by this service's encoder
        whatever wrote the file (a latent in it is never used). With ``keep_ids`` the facts keep their ids and
        created times, and an id the memory already holds fails the whole import before any write."""
        if not records:
            raise InvalidInput("the file holds no facts")
        checked = [(self._text(r.text, f"line {r.line}: text"), self.checked_metadata(r.metadata)) for r in records]
        kept = None
        if keep_ids:
            kept = [(r.id or uuid.uuid4().hex, r.created_at or utc_now()) for r in records]
            ids = [i for i, _ in kept]
            if len(set(ids)) < len(ids):
                raise InvalidInput("the file holds a fact id twice")
            h = self.registry.get(memory)
            if h is not None and (taken := next((i for i in ids if i in h.row_of), None)):
                raise Conflict(f"memory {memory!r} already holds fact {taken!r} (import with keep_ids=false "
                               "to give the facts new ids)")
        step = self.settings.max_batch_facts
        for i in range(0, len(checked), step):
            part = checked[i : i + step]
            latents = self.encoder.encode([t for t, _ in part])  # (n, C)
            try:
                self.registry.write(memory, part, latents, kept=kept[i : i + step] if kept else None)
            except DuplicateFact as e:  # written meanwhile by another request
                raise Conflict(f"{e}; the first {i} facts of the file were imported") from e
        return len(checked)

    def update_fact(self, memory: str, fact_id: str, text: str | None, metadata: dict[str, Any] | None) -> Fact:
        """New text and/or metadata for a fact, in one durable step (``MemoryRegistry.replace``); what is not
        given stays. New text is encoded and takes the old text's place in the memory."""
        if text is None and metadata is None:
            raise InvalidInput("give text, metadata or both")
        old = self.get_fact(memory, fact_id)
        new_text = old.text if text is None else self._text(text)
        new_metadata = old.metadata if metadata is None else self.checked_metadata(metadata)
        latent = None if new_text == old.text else self.encoder.encode([new_text])[0]  # (C,)
        fact = self.registry.replace(memory, fact_id, new_text, new_metadata, latent)
        if fact is None:  # forgotten meanwhile
            raise NotFound(f"fact {fact_id!r} is not in memory {memory!r}")
        return fact

    def forget(self, memory: str, *fact_ids: str) -> None:
        """Forget facts in one step (one downdate, one durable store transaction): all, or none with a 404
        naming one that is not in the memory."""
        if not 1 <= len(fact_ids) <= self.settings.max_batch_facts:
            raise InvalidInput(f"ids must hold 1 to {self.settings.max_batch_facts} fact ids")
        if not self.registry.forget(memory, *fact_ids):
            held = self.registry.store.facts(memory, list(fact_ids))
            gone = next((i for i, f in zip(fact_ids, held, strict=True) if f is None), fact_ids[0])
            raise NotFound(f"fact {gone!r} is not in memory {memory!r}")

    def list_facts(self, memory: str, limit: int, offset: int) -> tuple[list[Fact], int]:
        """A page from the store; the total is the memory's own count (counting rows in the store is O(N))."""
        h = self._handle(memory)
        return self.registry.store.page(memory, limit, offset), h.view.live

    def get_fact(self, memory: str, fact_id: str) -> Fact:
        self._handle(memory)
        (fact,) = self.registry.store.facts(memory, [fact_id])
        if fact is None:
            raise NotFound(f"fact {fact_id!r} is not in memory {memory!r}")
        return fact

    # --- reading ---------------------------------------------------------------

    def recall(self, memory: str, prompt: str, mode: MemoryMode, timer: Timer | None = None) -> Recall:
        """Scope decision and, in scope, the readout and the facts it reconstructs.

        The view is taken once, so a write landing meanwhile is either wholly seen or not at all.
        """
        h = self._handle(memory)
        view, index = h.view, h.index
        timer = timer or Timer()
        if mode == "off" or not view.live:
            return Recall(False, None, [], timer.marks)
        Zq = self.scope.encode(prompt)  # (S, C)
        timer.lap("encode")
        S = Zq.shape[0]
        # every sentence's readout before the scope picks one, so that one search serves the scope
        # detector (sentences -> facts) and the readout -> facts step
        if self.settings.memory_read == "hierarchical":  # section 6: segment memories -> top memory
            Z_r = hierarchical_read(Zq, view.live_latents().float(), self.settings.read_segment)  # (S, C)
        else:
            Z_r = h.mem.read(view.state, Zq)  # (S, C)
        sims, idx = top_k(torch.cat([Zq, Z_r]), view.latents, self.settings.recalled_facts, view.dead, index,
                          view.ids)  # (2S, k)
        decision = self.scope.decide_from(Zq, sims[:S, 0])
        timer.lap("scope")
        if mode == "auto" and not decision.in_scope:
            return Recall(False, None, [], timer.marks)
        row = S + decision.sentence
        z_r = Z_r[decision.sentence]  # (C,)
        keep = [
            (float(s), int(i))
            for rank, (s, i) in enumerate(zip(sims[row].tolist(), idx[row].tolist(), strict=True))
            if rank == 0 or 1.0 - s <= self.scope.threshold
        ]
        texts = self.registry.store.facts(memory, [view.ids[i] for _, i in keep])
        # a fact forgotten since this view was taken has no text left: it is not recalled; in auto mode
        # neither is one about something else than the query names (scope_requires_mention)
        about = named_in(prompt, split_sentences(prompt)[decision.sentence])
        before = self._continued(memory, texts)  # the piece each document piece opening with a pronoun continues
        context = {i: f.text for i, f in before.items()}
        found = [(s, i, t) for (s, i), t in zip(keep, texts, strict=True) if t is not None
                 and (mode != "auto" or not self.settings.scope_requires_mention
                      or mentions(about, f"{context.get(t.id, '')} {t.text}"))]
        if mode == "auto" and self.relation is not None:  # nor one stating another relation than it asks
            agree = self.relation.agrees([about, prompt], [t.text for *_, t in found])
            found = [f for f, ok in zip(found, agree, strict=True) if ok]
        found = self._merged(found, before)
        facts = [RecalledFact(t.id, t.text, s, source_of(t.metadata)) for s, _, t in found]
        timer.lap("read")
        if not facts:
            return Recall(False, None, [], timer.marks)
        latents = view.latents[[i for _, i, _ in found]].float()  # (k, C) the written latents of those facts
        return Recall(True, Readout(z_r, tuple(f.text for f in facts), latents,
                                    tuple(context.get(f.id, "") for f in facts)), facts, timer.marks)

    @staticmethod
    def _merged(found: list[tuple[float, int, Fact]], before: dict[str, Fact]) -> list[tuple[float, int, Fact]]:
        """A recalled piece that another recalled piece continues is shown once, as that piece's context, and the
        pair takes the better rank: recalled apart, the first sentence (which names the subject) ranks first and
        the answer is steered to its words ("Greta Lindqvist runs a small cafe near the harbour." -> "harbour")."""
        by_id = {t.id: (s, i, t) for s, i, t in found}
        continued_by = {before[t.id].id: t.id for _, _, t in found if t.id in before}  # piece -> its continuation
        out, placed = [], set()
        for s, i, t in found:
            if t.id in placed or t.id in continued_by and continued_by[t.id] in placed:  # shown, or as context
                continue
            if t.id in continued_by:  # its continuation, in its place
                s2, i2, t2 = by_id[continued_by[t.id]]
                out.append((max(s, s2), i2, t2))
                placed.add(t2.id)
            else:
                out.append((s, i, t))
                placed.add(t.id)
        return out

    def _continued(self, memory: str, facts: list[Fact | None]) -> dict[str, Fact]:
        """Fact id -> the piece it continues, for document pieces that open with a pronoun in the
        paragraph of the piece before them (metadata ``continues``; service.documents): the names that piece
        states are what the pronoun stands for, for the mention check and for the LLM. One store read."""
        wanted = {f.id: piece_id(f.metadata["document"], f.metadata["continues"]) for f in facts
                  if f is not None and isinstance(f.metadata.get("continues"), int) and "document" in f.metadata}
        if not wanted:
            return {}
        before = dict(zip(wanted.values(), self.registry.store.facts(memory, list(wanted.values())), strict=True))
        return {i: before[b] for i, b in wanted.items() if before[b] is not None}

    def _max_new_tokens(self, max_new_tokens: int | None, what: str = "max_new_tokens") -> int:
        n = self.settings.default_max_new_tokens if max_new_tokens is None else max_new_tokens
        if not 1 <= n <= self.settings.max_new_tokens:
            raise InvalidInput(f"{what} must be between 1 and {self.settings.max_new_tokens}")
        return n

    def query(self, memory: str, prompt: str, max_new_tokens: int | None, mode: MemoryMode) -> QueryResult:
        """One greedy answer: a batch of one through the decoder's batched path, as the benchmarks run it."""
        self._text(prompt, "prompt")
        n = self._max_new_tokens(max_new_tokens)
        timer = Timer()
        recall = self.recall(memory, prompt, mode, timer)
        (answer,) = self.decoder.generate_batch(self.llm, [(prompt, recall.readout)], n)
        timer.lap("generate")
        return QueryResult(answer.text, recall.in_scope, self.decoder.name, recall.facts, timer.total())

    def chat(self, memory: str | None, messages: list[dict[str, str]], max_new_tokens: int | None,
             sampling: Sampling, mode: MemoryMode, streamer: BaseStreamer | None = None) -> ChatResult:
        """One answer to a conversation. The scope detector and the readout read its last user turn (what is
        asked now); the turns before it reach the LLM as they were. ``memory`` None: the plain LLM. A
        ``streamer`` gets the answer's tokens as they come (``chat_stream``)."""
        chat = self._conversation(messages)
        n = self._max_new_tokens(max_new_tokens, "max_tokens")
        if not (0.0 <= sampling.temperature <= 2.0 and 0.0 < sampling.top_p <= 1.0):
            raise InvalidInput("temperature must be within [0, 2] and top_p within (0, 1]")
        if len(sampling.stop) > MAX_STOP or any(not s for s in sampling.stop):
            raise InvalidInput(f"stop holds at most {MAX_STOP} non-empty strings")
        timer = Timer()
        recall = self.recall(memory, chat.prompt, mode, timer) if memory else Recall(False, None, [])
        prompt_tokens = len(self.llm.token_ids(self.decoder.generation_text(self.llm, chat, recall.readout)))
        (answer,) = self.decoder.generate_batch(self.llm, [(chat, recall.readout)], n, sampling=sampling,
                                                streamer=streamer)
        timer.lap("generate")
        return ChatResult(answer.text, recall.in_scope, self.decoder.name, recall.facts, timer.total(), prompt_tokens,
                          answer.new_tokens, "stop" if answer.stopped else "length")

    def _conversation(self, messages: list[dict[str, str]]) -> Chat:
        if not messages:
            raise InvalidInput("messages must hold at least one message")
        for i, m in enumerate(messages):
            if m.get("role") not in ROLES:
                raise InvalidInput(f"messages[{i}].role must be one of {', '.join(ROLES)}")
            self._text(m.get("content") or "", f"messages[{i}].content")
        if messages[-1]["role"] != "user":
            raise InvalidInput("the last message must be the user's")
        return Chat(tuple({"role": m["role"], "content": m["content"]} for m in messages[:-1]),
                    messages[-1]["content"])

    def score(self, memory: str, prompt: str, candidates: list[str], mode: MemoryMode) -> ScoreResult:
        self._text(prompt, "prompt")
        if not 1 <= len(candidates) <= self.settings.max_candidates:
            raise InvalidInput(f"candidates must hold 1 to {self.settings.max_candidates} strings")
        for i, c in enumerate(candidates):
            self._text(c, f"candidates[{i}]")
        recall = self.recall(memory, prompt, mode)
        (scores,) = self.decoder.score_batch(self.llm, [(prompt, candidates, recall.readout)])
        return ScoreResult(recall.in_scope, self.decoder.name, recall.facts, scores)

    # --- memories ----------------------------------------------------------------

    def memory(self, memory: str) -> MemoryInfo:
        return self._handle(memory).info()

    def memories(self) -> list[MemoryInfo]:
        return [h.info() for h in self.registry.handles()]

    def delete_memory(self, memory: str) -> None:
        if not self.registry.delete(memory):
            raise NotFound(f"memory {memory!r} does not exist")

    def snapshot(self, memory: str) -> MemoryInfo:
        h = self.registry.snapshot(memory)
        if h is None:
            raise NotFound(f"memory {memory!r} does not exist")
        return h.info()

    def purge(self, memory: str) -> MemoryInfo:
        """Erasure now: forgets and deletes so far reach every file the store writes."""
        self._handle(memory)
        self.registry.purge()
        return self.memory(memory)

    def ready(self) -> bool:
        return self.registry.restored and self.registry.store.ping()

    def restoring(self) -> str:
        """What restore is doing now, "" when it is not running."""
        return self.registry.restoring

    def close(self) -> None:
        self.registry.close()
