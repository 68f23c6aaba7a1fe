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
from models.text import name_runs, stem, words

MENTION_RULE = "entity"  # what ``mentions`` asks, as benchmark records name it ("any word" until 2026-12-03)
DEFAULT_SCOPE_THRESHOLD = 0.3  # the paper's; used where no development run chose another for a decoder
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> list[str]:
    parts = [p.strip() for p in _SENTENCE_END.split(text.strip())]
    return [p for p in parts if p] or [text]


def mentions(query: str, fact: str) -> bool:
    """Whether a fact names one of the entities the query names; always true for a query that names nothing.

    Cosine alone puts "What is the capital of China?" near "The capital of Brazil is Shanghai." (same
    relation, another subject); the names tell them apart. A shared word is not enough: among 10,000 facts
    "Michel Rocard is a native speaker of" met "Michel Aumont, speaker of English." and "Ferrari 641 is
    created by" met "Ferrari 375 F1 is produced by Renault.", so a fact must hold two words of one named
    entity (its only word, for a one-word name). Two, not all: capitalised words around a name run into it
    (CounterFact dev: "References Category:Credit D'Qwell Jackson plays as"). A query in lower case names
    nothing and is left to the cosine.
    """
    asked = name_runs(query)
    said = {stem(w) for w in words(fact)}
    return not asked or any(len(entity & said) >= min(2, len(entity)) for entity in asked)


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
