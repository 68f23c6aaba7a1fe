"""External scope detector (ESD): is a query about something this memory holds?

Without it every query is pulled toward some written fact and unrelated
answers break (paper: neighbourhood score 80.4 with it, 13.7 without).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import Tensor

from memory_core import nearest
from models.encoder import TextEncoder
from models.text import PRONOUNS, STOPWORDS, name_runs, stem, words

# what ``mentions`` asks, as results name it (before: "any word", "entity", "entity, no siblings")
MENTION_RULE = "entity, no siblings, no pronouns"
DEFAULT_SCOPE_THRESHOLD = 0.3  # the paper's; used where no development run chose another for a decoder
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# a full stop after a title or a suffix ends no sentence (initials and "No." do: CounterFact prompts follow
# such fragments, "Main, J. In Kalajoki, the language spoken is")
_ABBREVIATION = re.compile(r"(?:^|[\s(])(?:Mr|Mrs|Ms|Dr|Prof|Jr|Sr|St|Inc|Ltd|Co|Corp)\.$")


def split_sentences(text: str) -> list[str]:
    """Sentences, not every full stop: "Martin Luther King Jr. speaks the language" is one sentence (split, its
    second half named nothing and passed any mention check)."""
    sentences: list[str] = []
    for part in (p.strip() for p in _SENTENCE_END.split(text.strip())):
        if not part:
            continue
        if sentences and _ABBREVIATION.search(sentences[-1]):
            sentences[-1] = f"{sentences[-1]} {part}"
        else:
            sentences.append(part)
    return sentences or [text]


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
class ScopeDecision:
    in_scope: bool
    similarity: float  # best cosine between any query sentence and any written fact
    query_latent: Tensor  # (C,) latent of the best-matching sentence
    sentence: int  # which sentence of the query that is


class ScopeDetector:
    def __init__(self, encoder: TextEncoder, threshold: float = DEFAULT_SCOPE_THRESHOLD) -> None:
        self.encoder = encoder
        self.threshold = threshold  # max cosine distance 1 - cos

    def decide(self, query: str, fact_latents: Tensor, exclude: Tensor | None = None) -> ScopeDecision:
        """Best cosine over (query sentences x written facts, bar rows marked in ``exclude``); in scope when
        1 - cos <= threshold."""
        return self.decide_encoded(self.encode(query), fact_latents, exclude)

    def encode(self, query: str) -> Tensor:
        """(S, C) unit-norm latents of the query's sentences."""
        return self.encoder.encode(split_sentences(query))

    def decide_from(self, Zq: Tensor, best: Tensor) -> ScopeDecision:
        """The decision from each query sentence's best cosine to any written fact (found by the caller)."""
        # Zq: (S, C), best: (S,)
        row = int(torch.argmax(best))
        return ScopeDecision(bool(1.0 - best[row].item() <= self.threshold), float(best[row]), Zq[row], row)

    def decide_encoded(self, Zq: Tensor, fact_latents: Tensor, exclude: Tensor | None = None) -> ScopeDecision:
        """The decision by an exact scan of unit-norm ``fact_latents`` (the service may search an index)."""
        if fact_latents.shape[0] == 0 or (exclude is not None and bool(exclude.all())):
            return ScopeDecision(False, 0.0, Zq[0], 0)
        best, _ = nearest(Zq, fact_latents, 1, exclude, unit=True)  # (S, 1)
        return self.decide_from(Zq, best[:, 0])
