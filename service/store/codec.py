"""Checkpoints as safetensors bytes (tensors plus JSON in the header) and latents as raw float32. Never pickle.

Memories stored before per-fact records were snapshots and log entries in this same format; the stores'
migrations read them with ``decode``."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor


def encode(tensors: dict[str, Tensor], meta: dict[str, Any]) -> bytes:
    """One self-describing blob: safetensors tensors, ``meta`` as JSON under the header's metadata."""
    return st_save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata={"json": json.dumps(meta)})


def decode(blob: bytes) -> tuple[dict[str, Tensor], dict[str, Any]]:
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    meta = json.loads(header.get("__metadata__", {}).get("json", "{}"))
    return st_load(blob), meta


def latent_bytes(z: Tensor) -> bytes:
    """(C,) latent -> its float32 bytes, as a fact record keeps it."""
    return z.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()


def latents_from(blobs: list[bytes]) -> Tensor:
    """Fact records' latent bytes -> (n, C) float32, in one copy."""
    if not blobs:
        return torch.zeros((0, 0))
    flat = np.frombuffer(b"".join(blobs), dtype=np.float32)
    return torch.from_numpy(flat.copy()).view(len(blobs), -1)
