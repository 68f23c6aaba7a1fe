"""Test doubles shared by the fast unit tests: no model is loaded, every latent is reproducible."""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import torch
from torch import Tensor

from memory_core import MemoryConfig
from service.memories import MemoryRegistry
from service.store import open_store

_WORD = re.compile(r"\w+")


class StubEncoder:
    """A sentence encoder made of word vectors: a text's latent is the normalised sum of one fixed random vector
    per lower-cased word (seeded by its CRC-32), so texts sharing words are near and the same text always gives
    the same latent, on any machine. Stands in for ``models.encoder.TextEncoder`` (``dim``, ``device``,
    ``encode``)."""

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim
        self.device = torch.device("cpu")
        self._vectors: dict[str, Tensor] = {}

    def word_vector(self, word: str) -> Tensor:
        """(C,) the fixed random vector of one lower-cased word."""
        v = self._vectors.get(word)
        if v is None:
            g = torch.Generator().manual_seed(zlib.crc32(word.encode()))
            v = self._vectors[word] = torch.randn(self.dim, generator=g)
        return v

    def encode(self, texts: list[str]) -> Tensor:
        """(N,) texts -> (N, C) unit-norm float32 latents; a text without words gets its own fixed vector."""
        out = torch.empty((len(texts), self.dim))  # (N, C)
        for i, text in enumerate(texts):
            ws = [w.lower() for w in _WORD.findall(text)] or [""]
            out[i] = torch.stack([self.word_vector(w) for w in ws]).sum(0)
        return torch.nn.functional.normalize(out, dim=-1)  # (N, C)


def open_stub_registry(directory: Path, dim: int = 64) -> MemoryRegistry:
    """A restored registry on a SQLite store in ``directory``, sized for the stub's latents (K = 128 >= C + 8)."""
    registry = MemoryRegistry(open_store(f"file://{directory / 'store'}"), MemoryConfig(dim=dim, slots=128), "cpu",
                              snapshot_every=100)
    registry.restore()
    return registry
