"""Memories as a whole: list, inspect, delete, snapshot."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter

from service.deps import EditorDep, MemoryName
from service.schemas import MemoryDeleted, MemoryList, MemoryOut, MemorySummary

router = APIRouter(prefix="/memories", tags=["memories"])


@router.get("", response_model=MemoryList)
def list_memories(editor: EditorDep) -> MemoryList:
    return MemoryList(memories=[MemorySummary(name=m.name, facts=m.facts) for m in editor.memories()])


@router.get("/{memory}", response_model=MemoryOut)
def get_memory(memory: MemoryName, editor: EditorDep) -> MemoryOut:
    return MemoryOut(**asdict(editor.memory(memory)))


@router.delete("/{memory}", response_model=MemoryDeleted)
def delete_memory(memory: MemoryName, editor: EditorDep) -> MemoryDeleted:
    editor.delete_memory(memory)
    return MemoryDeleted(name=memory, deleted=True)


@router.post("/{memory}/snapshot", response_model=MemoryOut)
def snapshot(memory: MemoryName, editor: EditorDep) -> MemoryOut:
    return MemoryOut(**asdict(editor.snapshot(memory)))


@router.post("/{memory}/purge", response_model=MemoryOut)
def purge(memory: MemoryName, editor: EditorDep) -> MemoryOut:
    """Erase forgotten facts from every file the store writes now, instead of after LARIMAR_PURGE_DELAY_S."""
    return MemoryOut(**asdict(editor.purge(memory)))
