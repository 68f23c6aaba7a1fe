"""Write, list, read and forget facts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from service.deps import EditorDep, MemoryName
from service.memories import Fact
from service.schemas import FactIn, FactOut, FactPage, FactsIn, FactsOut, FactUpdate, Forgotten
from service.timing import server_timing

router = APIRouter(prefix="/memories/{memory}/facts", tags=["facts"])


def _out(memory: str, fact: Fact) -> FactOut:
    return FactOut(memory=memory, **fact.as_dict())


@router.post("", status_code=status.HTTP_201_CREATED, response_model=FactOut)
def write_fact(memory: MemoryName, body: FactIn, editor: EditorDep, response: Response) -> FactOut:
    w = editor.add_facts(memory, [(body.text, body.metadata)])
    response.headers["Server-Timing"] = server_timing(w.timings_ms)
    return _out(memory, w.facts[0])


@router.post("/batch", status_code=status.HTTP_201_CREATED, response_model=FactsOut)
def write_facts(memory: MemoryName, body: FactsIn, editor: EditorDep, response: Response) -> FactsOut:
    w = editor.add_facts(memory, [(f.text, f.metadata) for f in body.facts])
    response.headers["Server-Timing"] = server_timing(w.timings_ms)
    return FactsOut(facts=[_out(memory, f) for f in w.facts])


@router.get("", response_model=FactPage)
def list_facts(
    memory: MemoryName,
    editor: EditorDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> FactPage:
    facts, total = editor.list_facts(memory, limit, offset)
    return FactPage(facts=[_out(memory, f) for f in facts], total=total, limit=limit, offset=offset)


@router.get("/{fact_id}", response_model=FactOut)
def get_fact(memory: MemoryName, fact_id: str, editor: EditorDep) -> FactOut:
    return _out(memory, editor.get_fact(memory, fact_id))


@router.put("/{fact_id}", response_model=FactOut)
def update_fact(memory: MemoryName, fact_id: str, body: FactUpdate, editor: EditorDep) -> FactOut:
    """Replace a fact's text and/or metadata in one durable step: readers see the old fact or the new one."""
    return _out(memory, editor.update_fact(memory, fact_id, body.text, body.metadata))


@router.delete("/{fact_id}", response_model=Forgotten)
def forget_fact(memory: MemoryName, fact_id: str, editor: EditorDep) -> Forgotten:
    editor.forget(memory, fact_id)
    return Forgotten(id=fact_id, forgotten=True)
