"""The scope rule: is a query about something this memory holds, and which recalled facts answer it?

Without it every query is pulled toward some written fact and unrelated answers break (paper: neighbourhood
score 80.4 with it, 13.7 without). The whole rule is ``ScopeRule``; the service (``service.recall``) and the
benchmarks run that one object, so what is measured is what is served:

1. the prompt is split into sentences (``models.sentences``) and each is encoded: ``ScopeRule.read``;
2. the prompt is in scope when some sentence's nearest written fact lies within the threshold, as a cosine
   distance 1 - cos (the external scope detector, ESD): ``ScopeRule.decide``;
3. of the facts the readout of that sentence recalls, the nearest is kept and the others within the
   threshold (``ScopeRule.near``); in ``auto`` mode each must also name what the query names (the mention
   check) and, with a relation gate, state the relation it asks (``ScopeRule.admits``).

A write's conflict check reads the same rule the other way round (``ScopeRule.conflicting``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from models.encoder import TextEncoder
from models.relation import RelationGate
from models.sentences import split_sentences
from models.text import PRONOUNS, STOPWORDS, name_runs, stem, words

# what ``mentions`` asks, as results name it (before: "any word", "entity", "entity, no siblings")
MENTION_RULE = "entity, no siblings, no pronouns"
DEFAULT_SCOPE_THRESHOLD = 0.3  # the paper's; used where no development run chose another for a decoder


def mentions(query: str, fact: str) -> bool:
    """Whether a fact names one of the entities the query names; always true for a query that names nothing.

    Cosine alone puts "What is the capital of China?" near "The capital of Brazil is Shanghai." (same
    relation, another subject); the names tell them apart. A shared word is not enough: among 10,000 facts
    "Michel Rocard is a native speaker of" met "Michel Aumont, speaker of English." and "Ferrari 641 is
    created by" met "Ferrari 375 F1 is produced by Renault.", so a fact must hold two words of one named
    entity (its only word, for a one-word name). Two, not all: capitalised words around a name run into it
    (CounterFact dev: "References Category:Credit D'Qwell Jackson plays as"). Two words can still be a
    sibling ("Nokia Lumia 520" and "Nokia Lumia 1520", "BBC Radio 1" and "BBC Radio 3"): when the fact names
    entities that share words with the query's, one of them must be part of it or hold all of it. A query
    in lower case names nothing and is left to the cosine.
    """
    asked = name_runs(query)
    said = {stem(w) for w in words(fact) if w.lower() not in STOPWORDS}
    named = name_runs(fact)
    return not asked or any(len(entity & said) >= min(2, len(entity)) and _not_a_sibling(entity, named)
                            for entity in asked)


def named_in(prompt: str, sentence: str) -> str:
    """The text whose names ``mentions`` reads: the scope detector's sentence, or the whole prompt when that
    sentence names nothing and opens with a pronoun, so is about what an earlier one named ("What does Etta
    James play? They play"; alone, "They play" named nothing and passed the check for any fact near it).
    A sentence that names nothing otherwise (a subject in lower case) is still left to the cosine: on
    CounterFact dev, reading the whole prompt there lost 16 more of 8,000 paraphrases, whose noise prefix
    names other things ("He called Zarif within five minutes. pink, named for")."""
    ws = words(sentence)
    return prompt if not name_runs(sentence) and ws and ws[0].lower() in PRONOUNS else sentence


def _not_a_sibling(entity: frozenset[str], named: list[frozenset[str]]) -> bool:
    """Whether ``entity`` is no sibling of what the fact names: of the fact's entities sharing words with it,
    none do, or one holds it or is held by it ("Apple" and "Apple Inc.", not "Nokia Lumia 520" and "... 1520")."""
    overlapping = [n for n in named if n & entity]
    return not overlapping or any(n <= entity or entity <= n for n in overlapping)


@dataclass(frozen=True)
class Prompt:
    """A prompt as the rule reads it: split into sentences once, each encoded."""

    text: str
    sentences: tuple[str, ...]
    latents: Tensor  # (S, C) unit-norm latents of the sentences


@dataclass(frozen=True)
class ScopeDecision:
    in_scope: bool
    similarity: float  # best cosine between any prompt sentence and any written fact
    sentence: int  # which sentence of the prompt that is


@dataclass(frozen=True)
class ScopeRule:
    encoder: TextEncoder
    threshold: float = DEFAULT_SCOPE_THRESHOLD  # max cosine distance 1 - cos of an in-scope fact
    relation: RelationGate | None = None  # None: recalled facts are not checked for the relation asked
    requires_mention: bool = True  # LARIMAR_SCOPE_REQUIRES_MENTION: recalled facts name what the query names

    def with_threshold(self, threshold: float) -> ScopeRule:
        """The same rule at another threshold (the scope benchmark's sweep)."""
        return replace(self, threshold=threshold)

    def read(self, prompt: str) -> Prompt:
        sentences = tuple(split_sentences(prompt))
        return Prompt(prompt, sentences, self.encoder.encode(list(sentences)))  # (S, C)

    def near(self, similarity: float) -> bool:
        """Whether a fact at this cosine lies within the threshold."""
        return 1.0 - similarity <= self.threshold

    def decide(self, prompt: Prompt, best: Tensor) -> ScopeDecision:
        """The decision from each sentence's best cosine to any written fact (``best``: (S,), found by the
        caller's lookup): the sentence nearest a fact, in scope when that fact is ``near``."""
        row = int(torch.argmax(best))
        return ScopeDecision(self.near(float(best[row])), float(best[row]), row)

    def about(self, prompt: Prompt, decision: ScopeDecision) -> str:
        """The text whose names the mention check reads (``named_in``)."""
        return named_in(prompt.text, prompt.sentences[decision.sentence])

    def admits(self, prompt: Prompt, decision: ScopeDecision, facts: list[str], contexts: list[str]) -> list[bool]:
        """Per recalled fact (each with the text it continues, "" for none), whether it answers the prompt in
        ``auto`` mode: it names what the prompt names and, with a relation gate, states the relation asked
        (the gate reads the decision's sentence and the whole prompt: one agreeing is enough)."""
        about = self.about(prompt, decision)
        ok = [not self.requires_mention or mentions(about, f"{c} {f}")
              for f, c in zip(facts, contexts, strict=True)]
        if self.relation is not None and any(ok):  # the gate's encoder call only for what is left
            kept = [f for f, k in zip(facts, ok, strict=True) if k]
            agree = iter(self.relation.agrees([about, prompt.text], kept))
            ok = [k and next(agree) for k in ok]
        return ok

    def conflicting(self, text: str, near: list[tuple[str, float]]) -> list[bool]:
        """Per fact near a new fact ``text`` (its text and cosine), whether it looks like the same statement
        with another answer: within the threshold, naming what ``text`` names and, with a relation gate,
        stating its relation, but worded otherwise ("The capital of France is Lyon." for "... is Marseille.")."""
        ok = [self.near(s) and f.strip() != text.strip() and mentions(text, f) for f, s in near]
        if self.relation is not None and any(ok):  # the gate's encoder call only when something is that close
            agree = iter(self.relation.agrees(text, [f for (f, _), k in zip(near, ok, strict=True) if k]))
            ok = [k and next(agree) for k in ok]
        return ok
