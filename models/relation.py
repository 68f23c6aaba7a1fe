"""The relation gate: does a recalled fact state the relation the query asks about?

The scope detector's cosine is dominated by names: "What is the currency of Brazil?" lies within the hybrid
decoder's 0.45 of "The capital of Brazil is Shanghai.", and the mention check passes, since Brazil is named.
The gate reads what is left once names are masked ("What is the currency of X?" against "The capital of X is
X."), through a linear map W of the encoder's latents trained (``training.relation``) on CounterFact training
cases so that sentences of one relation meet whatever their wording ("The mother tongue of X is", "X, a native
speaker of") and those of two relations part. A fact whose relation cosine to the query is below the threshold
(chosen on development data, ``bench.relation_gate``) is not recalled.

Notation: q the query's relation latent, r_i fact i's, both unit norm; the gate keeps fact i when q . r_i >= tau
(for a query read several ways, the best of them).

A gate directory holds ``projection.safetensors`` (W) and ``config.json`` (the encoder it fits, tau and what
chose it); one is shipped per encoder under ``models/relation``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from models.encoder import TextEncoder
from models.text import mask_names

GATES = Path(__file__).resolve().parent / "relation"  # gates shipped with the service, one per encoder
WEIGHTS, CONFIG = "projection.safetensors", "config.json"


@dataclass(frozen=True)
class RelationConfig:
    encoder: str  # the encoder spec whose latents W maps (LARIMAR_ENCODER)
    dim: int  # C
    threshold: float  # tau, the least relation cosine of a kept fact
    chosen_on: str = ""  # what measurement chose tau

    @classmethod
    def read(cls, directory: Path) -> RelationConfig:
        return cls(**json.loads((directory / CONFIG).read_text()))

    def write(self, directory: Path) -> None:
        (directory / CONFIG).write_text(json.dumps(asdict(self), indent=2) + "\n")


class RelationGate:
    def __init__(self, encoder: TextEncoder, W: Tensor, threshold: float, name: str = "") -> None:
        self.name = name  # the gate directory's, as results record it
        self.encoder = encoder
        self.W = W.to(encoder.device, torch.float32)  # (C, C)
        self.threshold = threshold

    def latents(self, texts: list[str]) -> Tensor:
        """(N,) texts -> (N, C) unit-norm relation latents of the texts with their names masked."""
        Z = self.encoder.encode([mask_names(t) for t in texts])  # (N, C)
        return torch.nn.functional.normalize(Z @ self.W, dim=-1)  # (N, C)

    def similarity(self, query: str, facts: list[str]) -> Tensor:
        """(k,) relation cosine q . r_i of each fact to the query."""
        R = self.latents([query, *facts])  # (1 + k, C)
        return R[1:] @ R[0]  # (k,)

    def agrees(self, query: str | Sequence[str], facts: list[str]) -> list[bool]:
        """Per fact, whether it states the relation the query asks (one encoder call for all). ``query`` may
        be several readings of it (the scope detector's sentence and the whole prompt): a fact agreeing with
        any is kept, as a sentence split wrongly ("... with A. P. Johnson House?" cut at the initials) can
        leave a fragment that asks nothing."""
        queries = [query] if isinstance(query, str) else list(dict.fromkeys(query))
        if not facts:
            return []
        R = self.latents([*queries, *facts])  # (Q + k, C)
        best = (R[len(queries):] @ R[: len(queries)].T).amax(1)  # (k,) q . r_i over the query's readings
        return (best >= self.threshold).tolist()

    def describe(self) -> dict[str, object]:
        """What a benchmark result records of the gate that produced it."""
        return {"gate": self.name, "threshold": self.threshold}

    def save(self, directory: Path, config: RelationConfig) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"W": self.W.detach().cpu().contiguous()}, str(directory / WEIGHTS))
        config.write(directory)


def find_gate(encoder: str, root: Path = GATES) -> Path | None:
    """The shipped gate directory trained for this encoder spec, or None."""
    for config in sorted(root.glob(f"*/{CONFIG}")):
        if json.loads(config.read_text()).get("encoder") == encoder:
            return config.parent
    return None


def load_gate(directory: Path, encoder: TextEncoder, threshold: float | None = None) -> RelationGate:
    """The gate in ``directory`` over ``encoder``; ``threshold`` overrides the chosen tau."""
    config = RelationConfig.read(directory)
    W = load_file(str(directory / WEIGHTS))["W"]  # (C, C)
    if W.shape != (encoder.dim, encoder.dim):
        raise ValueError(f"relation gate {directory} maps {W.shape[0]}-d latents; the encoder's are {encoder.dim}-d")
    return RelationGate(encoder, W, config.threshold if threshold is None else threshold, directory.name)
