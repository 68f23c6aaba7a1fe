"""The memory math of Larimar: pure torch, no HTTP, no model loading."""

from memory_core.episodic import (
    EpisodicMemory,
    MemoryConfig,
    MemoryState,
    generate,
    nearest,
    pinv,
    read,
    reference_memory,
    write_episode,
)

__all__ = [
    "EpisodicMemory",
    "MemoryConfig",
    "MemoryState",
    "generate",
    "nearest",
    "pinv",
    "read",
    "reference_memory",
    "write_episode",
]
