"""Write, list, read and forget facts."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from service.deps import READ, WRITE, EditorDep, MemoryName
from service.editor import WriteResult
from service.memories import Fact
from service.schemas import (
    ConflictOut,
    FactIn,
    FactOut,
    FactPage,
    FactsIn,
    FactsOut,
    FactUpdate,
    ForgetIn,
    Forgotten,
    ForgottenMany,
    WrittenFactOut,
)
from service.timing import server_timing

MAX_OFFSET = 2**62  # past the store's 64-bit integers there is nothing to list

router = APIRouter(prefix="/memories/{memory}/facts", tags=["facts"])


def _out(memory: str, fact: Fact, similarity: float | None = None) -> FactOut:
    return FactOut(memory=memory, similarity=similarity, **fact.as_dict())


def _written(memory: str, w: WriteResult, response: Response) -> list[WrittenFactOut]:
    response.headers["Server-Timing"] = server_timing(w.timings_ms)
    return [WrittenFactOut(memory=memory, **f.as_dict(), superseded=gone,
                           conflicts=[ConflictOut(**asdict(c)) for c in found])
            for f, found, gone in zip(w.facts, w.conflicts, w.superseded, strict=True)]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=WrittenFactOut,
             response_model_exclude_none=True, dependencies=[WRITE])
def write_fact(memory: MemoryName, body: FactIn, editor: EditorDep, response: Response) -> WrittenFactOut:
    w = editor.add_facts(memory, [(body.text, body.metadata)], [body.supersedes or []])
    return _written(memory, w, response)[0]


@router.post("/batch", status_code=status.HTTP_201_CREATED, response_model=FactsOut, response_model_exclude_none=True,
             dependencies=[WRITE])
def write_facts(memory: MemoryName, body: FactsIn, editor: EditorDep, response: Response) -> FactsOut:
    w = editor.add_facts(memory, [(f.text, f.metadata) for f in body.facts], [f.supersedes or [] for f in body.facts])
    return FactsOut(facts=_written(memory, w, response))


@router.post("/forget", response_model=ForgottenMany, dependencies=[WRITE])
def forget_facts(memory: MemoryName, body: ForgetIn, editor: EditorDep) -> ForgottenMany:
    """Forget several facts in one step: one memory downdate and one durable store transaction."""
    editor.forget(memory, *body.ids)
    return ForgottenMany(ids=body.ids, forgotten=True)


@router.get("", response_model=FactPage, response_model_exclude_none=True, dependencies=[READ])
def list_facts(
    memory: MemoryName,
    editor: EditorDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    q: Annotated[str | None, Query(description="list the facts nearest this text instead, best first")] = None,
) -> FactPage:
    if q is not None:
        hits = editor.search(memory, q, limit)
        return FactPage(facts=[_out(memory, f, s) for f, s in hits], total=len(hits), limit=limit, offset=0)
    facts, total = editor.list_facts(memory, limit, offset)
    return FactPage(facts=[_out(memory, f) for f in facts], total=total, limit=limit, offset=offset)


@router.get("/{fact_id}", response_model=FactOut, response_model_exclude_none=True, dependencies=[READ])
def get_fact(memory: MemoryName, fact_id: str, editor: EditorDep) -> FactOut:
    return _out(memory, editor.get_fact(memory, fact_id))


@router.put("/{fact_id}", response_model=FactOut, response_model_exclude_none=True, dependencies=[WRITE])
def update_fact(memory: MemoryName, fact_id: str, body: FactUpdate, editor: EditorDep) -> FactOut:
    """Replace a fact's text and/or metadata in one durable step: readers see the old fact or the new one."""
    return _out(memory, editor.update_fact(memory, fact_id, body.text, body.metadata))


@router.delete("/{fact_id}", response_model=Forgotten, dependencies=[WRITE])
def forget_fact(memory: MemoryName, fact_id: str, editor: EditorDep) -> Forgotten:
    editor.forget(memory, fact_id)
    return Forgotten(id=fact_id, forgotten=True)
