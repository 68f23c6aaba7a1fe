"""Request and response bodies. Types are checked here; limits that come from settings are checked by the editor."""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from service.recall import MemoryMode

MEMORY_NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"


class Problem(BaseModel):
    """Every error's body. A request that fails its schema gets FastAPI's list of errors (each with its
    location); any other error says what went wrong, and which limit or setting, in one string."""

    detail: str | list[dict[str, Any]]


ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": Problem, "description": why} for code, why in {
    400: "the body is not JSON, or not UTF-8", 401: "no valid API key", 403: "the key's role or memories do not "
    "cover this, or a browser sent it from another origin", 404: "no such memory, fact or document",
    409: "conflicts with what the memory holds", 413: "the body is over this route's limit",
    422: "invalid input, or past a limit (the message names it)", 429: "past the key's rate limit (Retry-After)",
    503: "the LLM is full or the store unreachable (Retry-After)"}.items()}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class FactIn(_Strict):
    text: str = Field(description="The fact, one or a few sentences.", examples=["The capital of France is Lyon."])
    metadata: dict[str, Any] | None = None
    supersedes: list[str] | None = Field(
        None, description="Ids of facts this one replaces: forgotten once it is written (404 if one is unknown)."
    )


class FactUpdate(_Strict):
    text: str | None = Field(None, description="The fact's new text (re-encoded; the old text is forgotten).")
    metadata: dict[str, Any] | None = Field(None, description="New metadata, replacing the old as a whole.")


class FactsIn(_Strict):
    facts: list[FactIn]


class FactOut(BaseModel):
    id: str
    memory: str
    text: str
    metadata: dict[str, Any]
    created_at: str
    similarity: float | None = Field(None, description="Cosine to the search text (GET .../facts?q= only).")


class ConflictOut(BaseModel):
    id: str
    text: str
    similarity: float


class WrittenFactOut(FactOut):
    conflicts: list[ConflictOut] = Field(
        default_factory=list, description="Facts already held that look like the same statement with another "
        "answer (same subject and relation, other words); resolve by keeping both or writing with supersedes.")
    superseded: list[str] = Field(default_factory=list, description="Ids forgotten because this fact replaced them.")


class FactsOut(BaseModel):
    facts: list[WrittenFactOut]


class FactPage(BaseModel):
    facts: list[FactOut]
    total: int
    limit: int
    offset: int


class ImportOut(BaseModel):
    memory: str
    imported: int  # facts written


class ForgetIn(_Strict):
    ids: list[str] = Field(description="The facts to forget, all in one step (404 and nothing forgotten if one "
                           "is not in the memory).")


class ForgottenMany(BaseModel):
    ids: list[str]
    forgotten: bool


class Forgotten(BaseModel):
    id: str
    forgotten: bool


MEMORY_MODE = Field(
    "auto", validation_alias=AliasChoices("memory_mode", "memory"),
    description="auto: read memory when the scope detector finds the prompt in scope; on: always; off: never "
    "(the unedited model). The older name `memory` is still accepted.",
)


class QueryIn(_Strict):
    prompt: str
    max_new_tokens: int | None = None
    memory_mode: MemoryMode = MEMORY_MODE


class SourceOut(BaseModel):
    document: str
    title: str | None
    piece: int
    start: int = Field(description="offset of the piece's first character in the document's text")
    end: int = Field(description="one past its last")
    continues: int | None = Field(None, description="the piece this one continues (it opens with a pronoun in the "
                                  "same paragraph): the LLM was shown that piece before it")


class RecalledFactOut(BaseModel):
    id: str
    text: str
    similarity: float
    source: SourceOut | None = Field(None, description="set when the fact is a document's piece")


class DocumentIn(_Strict):
    text: str = Field(description="The document, any length up to LARIMAR_MAX_DOCUMENT_CHARS.")
    title: str | None = None
    metadata: dict[str, Any] | None = None


class DocumentOut(BaseModel):
    id: str
    memory: str
    title: str | None
    status: str = Field(description="ingesting, ready, failed (error says why; DELETE removes what was written) "
                        "or deleting")
    chars: int
    pieces: int = Field(description="how many pieces the text was cut into; piece i is fact <id>-<i>")
    written: int = Field(description="pieces in the memory so far (progress while ingesting)")
    chunking: str
    metadata: dict[str, Any]
    created_at: str
    updated_at: str
    error: str | None = None


class DocumentList(BaseModel):
    documents: list[DocumentOut]


class DocumentDeleted(BaseModel):
    id: str
    deleted: bool


DECODER_DOC = "the decoder that brought memory to the LLM: context (facts as text), latent (trained prefix), hybrid"


class QueryOut(BaseModel):
    answer: str
    in_scope: bool
    decoder: str = Field(description=DECODER_DOC)
    facts: list[RecalledFactOut]
    timings_ms: dict[str, float]


class ScoreIn(_Strict):
    prompt: str
    candidates: list[str]
    memory_mode: MemoryMode = MEMORY_MODE


class CandidateScoreOut(BaseModel):
    candidate: str
    logprob: float
    mean_logprob: float
    n_tokens: int
    token_accuracy: float = Field(description="share of the candidate's tokens that are the model's own greedy choice")
    predicted_token_ids: list[int] = Field(description="the model's greedy token at each of the candidate's positions")


class ScoreOut(BaseModel):
    in_scope: bool
    decoder: str = Field(description=DECODER_DOC)
    facts: list[RecalledFactOut]
    scores: list[CandidateScoreOut]


class MemorySummary(BaseModel):
    name: str
    facts: int


class MemoryList(BaseModel):
    memories: list[MemorySummary]


class MemoryOut(BaseModel):
    name: str
    facts: int
    slots: int = Field(description="K, the memory's rows")
    dim: int = Field(description="C, the latent width")
    addressing: str
    device: str
    log_entries: int
    last_snapshot: str | None
    erasure: str = Field(description="complete, or pending: a forget has not yet reached every file the store "
                         "writes (POST .../purge forces it)")
    lookup: str = Field(description="exact (scans), or index: past LARIMAR_INDEX_ABOVE facts an approximate index, "
                        "built in the background, finds candidates that are then ranked exactly")
    seq: int = Field(description="the operation this server's copy is at (the Larimar-Seq header: send it back to "
                     "read at least this far on any replica)")


class StateCheckOut(BaseModel):
    name: str
    seq: int = Field(description="the operation this server's copy of the memory is at")
    facts: int
    fingerprint: list[float] = Field(description="four fixed projections of the memory matrix M: replicas at one "
                                     "seq agree to round-off")
    norm: float = Field(description="||M||_F, the scale of the fingerprint: compare differences against it")
    facts_digest: str = Field(description="sha256 of the ids of the facts held, sorted, each followed by a newline")
    deviation: float = Field(description="max |M - M_rebuilt| / max |M_rebuilt|, M_rebuilt solved directly from the "
                             "facts held: round-off that updates accumulated")


class MemoryDeleted(BaseModel):
    name: str
    deleted: bool


class Health(BaseModel):
    status: str  # ok (alive), ready, degraded (reads only: the store is out of reach), restoring, unavailable
    checks: dict[str, bool] = {}
    detail: str | None = None
