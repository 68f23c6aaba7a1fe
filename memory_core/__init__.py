"""The memory math of Larimar: pure torch, no HTTP, no model loading."""

from memory_core.episodic import (
    RERANK_SLACK,
    EpisodicMemory,
    MemoryConfig,
    MemoryState,
    cosines,
    generate,
    hierarchical_read,
    nearest,
    pinv,
    read,
    reference_memory,
    rerank,
    write_episode,
)

__all__ = [
    "RERANK_SLACK",
    "EpisodicMemory",
    "MemoryConfig",
    "MemoryState",
    "cosines",
    "generate",
    "hierarchical_read",
    "nearest",
    "pinv",
    "read",
    "reference_memory",
    "rerank",
    "write_episode",
]
