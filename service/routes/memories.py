"""Memories as a whole: list, inspect, delete, snapshot."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from service import transfer
from service.auth import listed
from service.deps import ADMIN, READ, WRITE, EditorDep, ImportBody, MemoryName, ReaderKey, body_limit
from service.schemas import ImportOut, MemoryDeleted, MemoryList, MemoryOut, MemorySummary, StateCheckOut

router = APIRouter(prefix="/memories", tags=["memories"])


@router.get("", response_model=MemoryList)
def list_memories(editor: EditorDep, key: ReaderKey) -> MemoryList:
    """The memories this call's API key reaches (every one for an admin key, or with no keys configured)."""
    return MemoryList(memories=[MemorySummary(name=m.name, facts=m.facts) for m in editor.memories()
                                if listed(key, m.name)])


@router.get("/{memory}", response_model=MemoryOut, dependencies=[READ])
def get_memory(memory: MemoryName, editor: EditorDep) -> MemoryOut:
    return MemoryOut(**asdict(editor.memory(memory)))


@router.delete("/{memory}", response_model=MemoryDeleted, dependencies=[ADMIN])
def delete_memory(memory: MemoryName, editor: EditorDep) -> MemoryDeleted:
    editor.delete_memory(memory)
    return MemoryDeleted(name=memory, deleted=True)


@router.get("/{memory}/check", response_model=StateCheckOut, dependencies=[ADMIN])
def check(memory: MemoryName, editor: EditorDep) -> StateCheckOut:
    """This server's copy of the memory against a direct solve from its facts, and a fingerprint to compare
    replicas by (a solve over every fact: admin only)."""
    return StateCheckOut(**asdict(editor.check(memory)))


@router.post("/{memory}/snapshot", response_model=MemoryOut, dependencies=[WRITE])
def snapshot(memory: MemoryName, editor: EditorDep) -> MemoryOut:
    return MemoryOut(**asdict(editor.snapshot(memory)))


@router.post("/{memory}/purge", response_model=MemoryOut, dependencies=[WRITE])
def purge(memory: MemoryName, editor: EditorDep) -> MemoryOut:
    """Erase forgotten facts from every file the store writes now, instead of after LARIMAR_PURGE_DELAY_S."""
    return MemoryOut(**asdict(editor.purge(memory)))


@router.get("/{memory}/export", response_class=StreamingResponse,
            responses={200: {"content": {transfer.MEDIA_TYPE: {}}, "description": "JSON Lines, one fact a line"}},
            dependencies=[READ])
def export(memory: MemoryName, editor: EditorDep,
           latents: Annotated[bool, Query(description="add each fact's latent and the encoder")] = False,
           ) -> StreamingResponse:
    """Every fact, in the order written, as JSON Lines (service/transfer.py), streamed."""
    return StreamingResponse(transfer.lines(editor.export(memory, latents)), media_type=transfer.MEDIA_TYPE,
                             headers={"Content-Disposition": f'attachment; filename="{memory}.jsonl"'})


@router.post("/{memory}/import", response_model=ImportOut,
             openapi_extra={"requestBody": {"content": {transfer.MEDIA_TYPE: {}}, "required": True}},
             dependencies=[WRITE])
@body_limit("max_import_bytes")
async def import_facts(memory: MemoryName, body: ImportBody, editor: EditorDep,
                       keep_ids: Annotated[bool, Query(description="keep the file's ids and created times")] = True,
                       ) -> ImportOut:
    """Load an export file (JSON Lines) into this memory, creating it if need be; texts are re-encoded. The file
    is parsed on a worker thread too: a 256 MiB file would hold the event loop, and every request, for seconds."""
    n = await run_in_threadpool(lambda: editor.import_facts(memory, transfer.parse(body), keep_ids))
    return ImportOut(memory=memory, imported=n)
