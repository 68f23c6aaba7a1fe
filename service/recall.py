"""The Larimar read path, prompt to recalled facts, in one place.

scope rule reads the prompt (sentences, latents) -> the memory's readout z_r of every sentence -> one lookup
of the facts nearest each sentence and each readout -> the scope decision (``ScopeRule.decide``) -> the facts
the chosen sentence's readout recalls, kept by the rule (``near``; ``admits`` in auto mode) -> document pieces
read with the piece they continue -> the ``Readout`` the decoder gives the LLM.

Out of scope (or with memory off) there is no readout and the LLM runs exactly as if no memory existed. The
memory is read through one ``Reading``, so a write landing meanwhile is wholly seen or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from models.decoders import Readout
from models.scope import ScopeDecision, ScopeRule
from service.errors import no_such_memory
from service.memories import Hit, MemoryRegistry, Reading
from service.pieces import continued_id, source_of
from service.store import Fact
from service.timing import Timer

MemoryMode = Literal["auto", "on", "off"]  # read memory when the scope rule says so, always, or never
ReadMode = Literal["flat", "hierarchical"]  # LARIMAR_MEMORY_READ: z_r from M, or from the memory hierarchy


@dataclass(frozen=True)
class RecalledFact:
    id: str
    text: str
    similarity: float  # cosine between the memory readout and this fact's latent
    source: dict[str, Any] | None = None  # a document's piece: where it came from, so answers can cite the span


@dataclass(frozen=True)
class Recall:
    in_scope: bool
    readout: Readout | None
    facts: list[RecalledFact]
    timings_ms: dict[str, float] = field(default_factory=dict)
    decision: ScopeDecision | None = None  # the scope rule's, when the memory was looked up


Found = tuple[Hit, Fact]  # a recalled fact: where the lookup found it, and what the store holds of it


CONFLICT_CANDIDATES = 8  # nearest facts a write's conflict check reads


class Recaller:
    """Runs the read path over the registry's memories with one ``ScopeRule`` (the one benchmarks measure)."""

    def __init__(self, registry: MemoryRegistry, rule: ScopeRule, recalled_facts: int, read: ReadMode = "flat",
                 read_segment: int = 64) -> None:
        self.registry = registry
        self.rule = rule
        self.recalled_facts = recalled_facts  # k: facts a readout may recall
        self.read = read
        self.read_segment = read_segment

    def conflicts(self, memory: str, texts: list[str], latents: Tensor) -> list[list[RecalledFact]]:
        """Per new fact, the facts the memory holds that look like the same statement with another answer
        (``ScopeRule.conflicting``). A write reports them; its caller resolves them: keep both, or write again
        with ``supersedes``."""
        reading = self.registry.reading(memory)
        if reading is None or not reading.live:
            return [[] for _ in texts]
        out = []
        for text, near in zip(texts, reading.nearest_facts(latents, CONFLICT_CANDIDATES), strict=True):
            ok = self.rule.conflicting(text, [(f.text, s) for f, s in near])
            out.append([RecalledFact(f.id, f.text, s) for (f, s), k in zip(near, ok, strict=True) if k])
        return out

    def recall(self, memory: str, prompt: str, mode: MemoryMode, timer: Timer | None = None,
               rule: ScopeRule | None = None) -> Recall:
        """Scope decision and, in scope, the readout and the facts it recalls; ``rule`` stands in for the
        served one (a benchmark's threshold sweep)."""
        reading = self.registry.reading(memory)
        if reading is None:
            raise no_such_memory(memory)
        rule = rule or self.rule
        timer = timer or Timer()
        if mode == "off" or not reading.live:
            return Recall(False, None, [], timer.marks)
        p = rule.read(prompt)
        timer.lap("encode")
        S = len(p.sentences)
        # every sentence's readout before the rule picks one, so that one lookup serves the scope decision
        # (sentences -> facts) and the readout -> facts step
        if self.read == "hierarchical":  # section 6: segment memories -> top memory
            Z_r = reading.hierarchical_readout(p.latents, self.read_segment)  # (S, C)
        else:
            Z_r = reading.readout(p.latents)  # (S, C)
        hits = reading.nearest(torch.cat([p.latents, Z_r]), self.recalled_facts)  # 2S rows of k
        decision = rule.decide(p, torch.tensor([row[0].similarity for row in hits[:S]]))  # (S,) best cosines
        timer.lap("scope")
        if mode == "auto" and not decision.in_scope:
            return Recall(False, None, [], timer.marks, decision)
        keep = [h for rank, h in enumerate(hits[S + decision.sentence]) if rank == 0 or rule.near(h.similarity)]
        # a fact forgotten since this reading began has no text left: it is not recalled
        found = [(h, f) for h, f in zip(keep, reading.facts([h.id for h in keep]), strict=True) if f is not None]
        before = _continued(reading, [f for _, f in found])
        context = {i: f.text for i, f in before.items()}
        if mode == "auto":
            ok = rule.admits(p, decision, [f.text for _, f in found], [context.get(f.id, "") for _, f in found])
            found = [x for x, k in zip(found, ok, strict=True) if k]
        found = _merged(found, before)
        timer.lap("read")
        if not found:
            return Recall(False, None, [], timer.marks, decision)
        facts = [RecalledFact(f.id, f.text, h.similarity, source_of(f.metadata)) for h, f in found]
        readout = Readout(Z_r[decision.sentence], tuple(f.text for f in facts),
                          reading.latents([h for h, _ in found]),  # (k, C) the written latents of those facts
                          tuple(context.get(f.id, "") for f in facts))
        return Recall(True, readout, facts, timer.marks, decision)


def _continued(reading: Reading, facts: list[Fact]) -> dict[str, Fact]:
    """Fact id -> the piece it continues (``service.pieces``): the names that piece states are what the
    pronoun opening it stands for, for the mention check and for the LLM. One store read."""
    wanted = {f.id: b for f in facts if (b := continued_id(f.metadata)) is not None}
    if not wanted:
        return {}
    before = dict(zip(wanted.values(), reading.facts(list(wanted.values())), strict=True))
    return {i: before[b] for i, b in wanted.items() if before[b] is not None}


def _merged(found: list[Found], before: dict[str, Fact]) -> list[Found]:
    """A recalled piece that another recalled piece continues is shown once, as that piece's context, and the
    pair takes the better rank: recalled apart, the first sentence (which names the subject) ranks first and
    the answer is steered to its words ("Greta Lindqvist runs a small cafe near the harbour." -> "harbour")."""
    by_id = {f.id: (h, f) for h, f in found}
    continued_by = {before[f.id].id: f.id for _, f in found if f.id in before}  # piece -> its continuation
    out: list[Found] = []
    placed: set[str] = set()
    for h, f in found:
        if f.id in placed or f.id in continued_by and continued_by[f.id] in placed:  # shown, or as context
            continue
        if f.id in continued_by:  # its continuation, in its place
            h2, f2 = by_id[continued_by[f.id]]
            out.append((Hit(h2.id, max(h.similarity, h2.similarity), h2.row), f2))
            placed.add(f2.id)
        else:
            out.append((h, f))
            placed.add(f.id)
    return out
