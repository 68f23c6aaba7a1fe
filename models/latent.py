"""Larimar's trained decoder conditioning: the memory readout becomes a prefix the frozen LLM attends to.

Following the paper's reference code (larimar.md section 5), a latent z is projected into P key/value
positions in every LLM layer and into a bias added to every input token embedding. The LLM's own weights
never change, so with no readout (out of scope) the model is exactly the base model.

    z (B, C) --down--> (B, R) --kv--> (B, L, 2, P, n_kv, d)   key/value prefix positions in every layer
    z (B, C) --emb---> (B, H)                                  bias on every token embedding

An adapter directory is laid out as PEFT lays one out: ``config.json`` (the architecture, the decoder it
serves and the base models it fits, nothing else), ``adapter.safetensors``, and beside them what the
training run recorded (``training.json``) and the model card. Which adapter the service picks, and its
scope threshold, is a separate record (``models.choice``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import PretrainedConfig

from models.llm import KVPrefix

log = logging.getLogger(__name__)

WEIGHTS, CONFIG, TRAINING = "adapter.safetensors", "config.json", "training.json"
ADAPTERS = Path(__file__).resolve().parent / "adapters"  # adapters shipped with the service, one per base model
RENAMED_KEYS = {"form": "decoder", "slots": "prefix_len"}  # config.json keys written before the vocabulary settled


@dataclass(frozen=True)
class LatentConfig:
    latent_dim: int  # C, the encoder's width
    n_layers: int  # L
    n_kv_heads: int
    head_dim: int  # d
    hidden: int  # H, the LLM's embedding width
    prefix_len: int = 1  # P key/value positions per layer
    rank: int = 256  # R, the bottleneck between z and the prefix
    decoder: str = "latent"  # the decoder it serves: "latent" (bare prompt) or "hybrid" (facts shown as text too)
    input: str = "fact"  # "fact": the written latent of the best recalled fact; "readout": z_r itself
    llm: str = ""  # the base model and encoder this adapter was trained for
    encoder: str = ""

    @classmethod
    def for_llm(cls, llm_config: PretrainedConfig, latent_dim: int, **kw: object) -> LatentConfig:
        heads = llm_config.num_attention_heads
        head_dim = getattr(llm_config, "head_dim", None) or llm_config.hidden_size // heads
        return cls(latent_dim=latent_dim, n_layers=llm_config.num_hidden_layers,
                   n_kv_heads=getattr(llm_config, "num_key_value_heads", None) or heads, head_dim=head_dim,
                   hidden=llm_config.hidden_size, **kw)

    @classmethod
    def from_pretrained(cls, directory: Path) -> LatentConfig:
        """The config in ``directory``; keys of older adapters are renamed, history kept there is ignored."""
        raw = json.loads((directory / CONFIG).read_text())
        for old, new in RENAMED_KEYS.items():
            if old in raw and new not in raw:
                log.warning("%s: config key %r is now %r (re-save the adapter to update it)", directory, old, new)
                raw[new] = raw.pop(old)
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})

    def save_pretrained(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG).write_text(json.dumps(asdict(self), indent=2) + "\n")


class LatentAdapter(nn.Module):
    def __init__(self, cfg: LatentConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.down = nn.Linear(cfg.latent_dim, cfg.rank)
        self.kv = nn.Linear(cfg.rank, cfg.n_layers * 2 * cfg.prefix_len * cfg.n_kv_heads * cfg.head_dim)
        self.emb = nn.Linear(cfg.latent_dim, cfg.hidden, bias=False)
        # Start close to "no memory": a small prefix, no embedding shift.
        nn.init.normal_(self.kv.weight, std=0.02)
        nn.init.zeros_(self.kv.bias)
        nn.init.zeros_(self.emb.weight)

    def forward(self, z: Tensor) -> KVPrefix:
        """(B, C) latents -> the prefix the LLM decodes behind."""
        c = self.cfg
        B = z.shape[0]
        z = nn.functional.normalize(z.float(), dim=-1)  # readouts are not unit norm; written latents are
        h = torch.tanh(self.down(z))  # (B, R)
        kv = self.kv(h).view(B, c.n_layers, 2, c.prefix_len, c.n_kv_heads, c.head_dim)
        kv = kv.permute(1, 2, 0, 4, 3, 5)  # (L, 2, B, n_kv, P, d)
        return KVPrefix(tuple(kv[:, 0].unbind(0)), tuple(kv[:, 1].unbind(0)), self.emb(z))  # bias (B, H)

    def save_pretrained(self, directory: Path) -> None:
        """Weights as float16 safetensors (small enough for git) and the architecture-only config."""
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(directory / WEIGHTS), metadata={"format": "pt"})
        self.cfg.save_pretrained(directory)

    @classmethod
    def from_pretrained(cls, directory: Path, device: str | torch.device = "cpu") -> LatentAdapter:
        adapter = cls(LatentConfig.from_pretrained(directory))
        adapter.load_state_dict({k: v.float() for k, v in load_file(str(directory / WEIGHTS)).items()})
        return adapter.to(device).eval()


def find_adapter(llm: str, encoder: str, decoder: str, root: Path = ADAPTERS) -> Path | None:
    """The shipped adapter trained for this decoder on exactly this LLM and encoder, if there is one."""
    for config in sorted(root.glob(f"*/{CONFIG}")):
        cfg = LatentConfig.from_pretrained(config.parent)
        if (cfg.llm, cfg.encoder, cfg.decoder) == (llm, encoder, decoder):
            return config.parent
    return None
