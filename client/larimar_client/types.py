"""What the routes return, as typed values (the service's JSON, field for field)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

T = TypeVar("T")


class LarimarError(Exception):
    """An error response: ``status`` (401, 403, 404, 409, 413, 422, 503...) and the service's ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status, self.detail = status, detail


def build(cls: type[T], data: dict[str, Any]) -> T:
    """``cls`` from a JSON object, ignoring fields a newer service adds."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class RecalledFact:
    id: str
    text: str
    similarity: float
    source: dict[str, Any] | None = None  # a document's piece: document, title, piece, start, end


@dataclass(frozen=True)
class Document:
    id: str
    memory: str
    title: str | None
    status: str  # ingesting, ready, failed (see error) or deleting
    chars: int
    pieces: int  # piece i is the fact "<id>-<i>"
    written: int  # pieces in the memory so far
    chunking: str
    metadata: dict[str, Any]
    created_at: str
    updated_at: str
    error: str | None = None


@dataclass(frozen=True)
class Fact:
    id: str
    memory: str
    text: str
    metadata: dict[str, Any]
    created_at: str
    similarity: float | None = None  # searches only
    conflicts: list[RecalledFact] = field(default_factory=list)  # writes only: the same statement, otherwise
    superseded: list[str] = field(default_factory=list)  # writes only

    @classmethod
    def of(cls, data: dict[str, Any]) -> Fact:
        f = build(cls, data)
        return f if not f.conflicts else build(cls, {**data, "conflicts": [build(RecalledFact, c)
                                                                             for c in data["conflicts"]]})


@dataclass(frozen=True)
class FactPage:
    facts: list[Fact]
    total: int
    limit: int
    offset: int


@dataclass(frozen=True)
class Answer:
    answer: str
    in_scope: bool
    decoder: str
    facts: list[RecalledFact]
    timings_ms: dict[str, float]


@dataclass(frozen=True)
class CandidateScore:
    candidate: str
    logprob: float
    mean_logprob: float
    n_tokens: int
    token_accuracy: float
    predicted_token_ids: list[int]


@dataclass(frozen=True)
class Scores:
    in_scope: bool
    decoder: str
    facts: list[RecalledFact]
    scores: list[CandidateScore]


@dataclass(frozen=True)
class MemorySummary:
    name: str
    facts: int


@dataclass(frozen=True)
class MemoryInfo:
    name: str
    facts: int
    slots: int
    dim: int
    addressing: str
    device: str
    log_entries: int
    last_snapshot: str | None
    erasure: str
    lookup: str = "exact"
    seq: int = 0  # the operation the answering server's copy is at (send it as Larimar-Seq to read at least that far)
