"""Memories as a whole: list, inspect, delete, snapshot."""

from __future__ import annotations

from fastapi import APIRouter

from service.deps import EditorDep, MemoryName
from service.memories import MemoryHandle
from service.schemas import MemoryDeleted, MemoryInfo, MemoryList, MemorySummary

router = APIRouter(prefix="/memories", tags=["memories"])


def _info(h: MemoryHandle) -> MemoryInfo:
    cfg = h.mem.cfg
    return MemoryInfo(name=h.name, facts=len(h.view.ids), slots=cfg.slots, dim=cfg.dim, addressing=cfg.addressing,
                      device=str(h.mem.device), log_entries=h.log_entries, last_snapshot=h.last_snapshot)


@router.get("", response_model=MemoryList)
def list_memories(editor: EditorDep) -> MemoryList:
    return MemoryList(memories=[MemorySummary(name=h.name, facts=len(h.view.ids)) for h in editor.memories()])


@router.get("/{memory}", response_model=MemoryInfo)
def get_memory(memory: MemoryName, editor: EditorDep) -> MemoryInfo:
    return _info(editor.memory(memory))


@router.delete("/{memory}", response_model=MemoryDeleted)
def delete_memory(memory: MemoryName, editor: EditorDep) -> MemoryDeleted:
    editor.delete_memory(memory)
    return MemoryDeleted(name=memory, deleted=True)


@router.post("/{memory}/snapshot", response_model=MemoryInfo)
def snapshot(memory: MemoryName, editor: EditorDep) -> MemoryInfo:
    return _info(editor.snapshot(memory))
