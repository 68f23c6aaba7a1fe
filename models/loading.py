"""Loading the encoder and the LLM once, from whatever holds the model settings (the service's ``Settings``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from models.device import resolve_device
from models.encoder import TextEncoder
from models.llm import CausalLM

log = logging.getLogger("larimar")


class ModelSettings(Protocol):
    """The settings that say which models to load and where; ``service.settings.Settings`` has them."""

    llm: str
    encoder: str
    device: str
    llm_dtype: str
    torch_threads: int
    model_cache_dir: Path


@dataclass(frozen=True)
class LoadedModels:
    encoder: TextEncoder
    llm: CausalLM


def load_llm(settings: ModelSettings) -> CausalLM:
    """The LLM alone (the weight-editing baselines need no encoder)."""
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    device = resolve_device(settings.device)
    return CausalLM(settings.llm, settings.model_cache_dir, device=device, dtype=settings.llm_dtype)


def load_models(settings: ModelSettings) -> LoadedModels:
    device = resolve_device(settings.device)
    log.info("loading encoder %s and LLM %s on %s", settings.encoder, settings.llm, device)
    llm = load_llm(settings)
    return LoadedModels(TextEncoder(settings.encoder, device=device), llm)
