"""Ask the edited LLM, and score candidate continuations."""

from __future__ import annotations

import threading
from dataclasses import asdict

from fastapi import APIRouter, Request

from service.cancel import while_connected
from service.deps import READ, EditorDep, MemoryName
from service.schemas import CandidateScoreOut, QueryIn, QueryOut, RecalledFactOut, ScoreIn, ScoreOut

router = APIRouter(prefix="/memories/{memory}", tags=["query"])


@router.post("/query", response_model=QueryOut, dependencies=[READ])
async def query(memory: MemoryName, body: QueryIn, request: Request, editor: EditorDep) -> QueryOut:
    """A client that disconnects stops its generation (service/cancel.py)."""
    gone = threading.Event()
    r = await while_connected(request, gone, lambda: editor.query(memory, body.prompt, body.max_new_tokens,
                                                                  body.memory_mode, gone))
    return QueryOut(answer=r.answer, in_scope=r.in_scope, decoder=r.decoder, timings_ms=r.timings_ms,
                    facts=[RecalledFactOut(**asdict(f)) for f in r.facts])


@router.post("/score", response_model=ScoreOut, dependencies=[READ])
def score(memory: MemoryName, body: ScoreIn, editor: EditorDep) -> ScoreOut:
    r = editor.score(memory, body.prompt, body.candidates, body.memory_mode)
    return ScoreOut(
        in_scope=r.in_scope,
        decoder=r.decoder,
        facts=[RecalledFactOut(**asdict(f)) for f in r.facts],
        scores=[CandidateScoreOut(candidate=s.candidate, logprob=s.logprob, mean_logprob=s.mean_logprob,
                                  n_tokens=s.n_tokens, token_accuracy=s.token_accuracy,
                                  predicted_token_ids=list(s.predicted)) for s in r.scores],
    )
