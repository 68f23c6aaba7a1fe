"""Snapshots and log entries as safetensors bytes: tensors plus JSON in the header. Never pickle."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True)
class Stored:
    """What a store holds for one memory: the last snapshot and the log written since."""

    snapshot: bytes | None
    log: list[bytes]
