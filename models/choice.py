"""Which decoder serves a model pair, and at which scope threshold: choices made by measurement.

The development runs (bench/editing/latent_run.sh, CounterFact dev range) pick, per (LLM, encoder), the
decoder ``LARIMAR_DECODER=auto`` means and the scope threshold each decoder uses when
``LARIMAR_SCOPE_THRESHOLD`` is unset. They are recorded in one file, ``models/adapters/choices.json``,
apart from the adapters themselves, whose configs hold only what they are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from models.latent import ADAPTERS, LatentConfig, find_adapter
from models.scope import DEFAULT_SCOPE_THRESHOLD

CHOICES = ADAPTERS / "choices.json"


@dataclass(frozen=True)
class DecoderChoice:
    decoder: str  # context, latent or hybrid
    adapter: Path | None  # the trained adapter of a latent or hybrid decoder
    scope_threshold: float
    chosen_on: str = ""  # what measurement chose the threshold (empty: a setting, or the paper's default)


def recorded(llm: str, encoder: str, path: Path = CHOICES) -> dict:
    """The development runs' record for this model pair ({} when none was measured)."""
    entries = json.loads(path.read_text())["choices"] if path.exists() else []
    return next((e for e in entries if (e["llm"], e["encoder"]) == (llm, encoder)), {})


def choose_decoder(llm: str, encoder: str, decoder: str = "auto", adapter: Path | None = None,
                   scope_threshold: float | None = None, path: Path = CHOICES) -> DecoderChoice:
    """The decoder to run and its threshold; what is set wins over what was recorded.

    ``auto`` is the decoder of an adapter given by path, else the recorded default for this model pair,
    else context. A latent or hybrid decoder with no adapter given takes the one shipped for this pair.
    """
    record = recorded(llm, encoder, path)
    if decoder == "auto":
        decoder = LatentConfig.from_pretrained(adapter).decoder if adapter else record.get("default_decoder", "context")
    if decoder != "context" and adapter is None:
        adapter = find_adapter(llm, encoder, decoder)
    if scope_threshold is not None:
        return DecoderChoice(decoder, adapter, scope_threshold)
    chosen = record.get("scope_threshold", {}).get(decoder)
    if chosen is None:
        return DecoderChoice(decoder, adapter, DEFAULT_SCOPE_THRESHOLD)
    return DecoderChoice(decoder, adapter, float(chosen), record.get("chosen_on", ""))
