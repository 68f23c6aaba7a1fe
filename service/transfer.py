"""The export / import file: JSON Lines, one fact per line, in the order the facts were written.

    {"id": "9f0c", "text": "The capital of France is Lyon.", "metadata": {}, "created_at": "2026-12-04T02:30:00Z"}

With ``?latents=true`` an export line also holds ``"latent"`` (the C floats the memory keeps) and
``"encoder"`` (the encoder that made it), for other tools: an import always encodes the texts with its own
encoder, so a file from a service with another encoder loads the same way. Only ``text`` is required on
import; a file with a bad line is refused whole, naming the line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from service.errors import InvalidInput

MEDIA_TYPE = "application/x-ndjson"


@dataclass(frozen=True)
class Imported:
    """One fact of an import file, as parsed here (``Editor.import_facts`` writes them)."""

    line: int
    text: str
    metadata: dict[str, Any] | None = None
    id: str | None = None
    created_at: str | None = None


class ExportedFact(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    text: str
    metadata: dict[str, Any] | None = None
    id: str | None = None
    created_at: str | None = None
    latent: list[float] | None = None  # ignored on import
    encoder: str | None = None  # ignored on import

    @field_validator("id")
    @classmethod
    def _id(cls, v: str | None) -> str | None:
        if v is not None and not (0 < len(v) <= 64 and v.isascii() and v.replace("-", "").replace("_", "").isalnum()):
            raise ValueError("an id is 1-64 letters, digits, '-' or '_'")
        return v

    @field_validator("created_at")
    @classmethod
    def _created(cls, v: str | None) -> str | None:
        if v is not None:
            datetime.fromisoformat(v.replace("Z", "+00:00"))  # ValueError when it is no ISO 8601 time
        return v


def parse(body: bytes) -> list[Imported]:
    """The facts of an import file; InvalidInput names the first bad line."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidInput(f"the file is not UTF-8 ({e})") from e
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            f = ExportedFact.model_validate(json.loads(line))
        except json.JSONDecodeError as e:
            raise InvalidInput(f"line {n}: not JSON ({e.msg})") from e
        except RecursionError as e:  # the parser recurses per level: a line nested 100,000 deep exhausts the stack
            raise InvalidInput(f"line {n}: nested too deeply") from e
        except ValidationError as e:
            err = e.errors()[0]
            raise InvalidInput(f"line {n}: {'.'.join(map(str, err['loc'])) or 'fact'}: {err['msg']}") from e
        out.append(Imported(n, f.text, f.metadata, f.id, f.created_at))
    return out


def lines(records: Iterator[dict[str, Any]]) -> Iterator[bytes]:
    for r in records:
        yield json.dumps(r, ensure_ascii=False).encode() + b"\n"
