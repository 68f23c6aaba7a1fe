"""Larimar's trained decoder conditioning: the memory readout z_r becomes a prefix the frozen LLM attends to.

Following the paper's reference code (larimar.md section 5), z_r is projected into S key/value slots
in every decoder layer and into a bias added to every input token embedding. The LLM's own weights
never change, so with no readout (out of scope) the model is exactly the base model.

    z_r (B, C) --down--> (B, R) --kv--> (B, L, 2, S, n_kv, d)   one key and one value slot per layer
    z_r (B, C) --emb---> (B, H)                                  bias on every token embedding

The adapter is saved as ``adapter.safetensors`` + ``config.json`` in one directory, next to a model card.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import PretrainedConfig

from models.llm import KVPrefix

WEIGHTS, CONFIG = "adapter.safetensors", "config.json"


@dataclass(frozen=True)
class LatentConfig:
    latent_dim: int  # C, the encoder's width
    n_layers: int  # L
    n_kv_heads: int
    head_dim: int  # d
    hidden: int  # H, the LLM's embedding width
    slots: int = 1  # S key/value slots per layer
    rank: int = 256  # R, the bottleneck between z_r and the slots
    form: str = "latent"  # "latent": the prompt is bare; "hybrid": the recalled facts are shown as text too
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


class LatentAdapter(nn.Module):
    def __init__(self, cfg: LatentConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.down = nn.Linear(cfg.latent_dim, cfg.rank)
        self.kv = nn.Linear(cfg.rank, cfg.n_layers * 2 * cfg.slots * cfg.n_kv_heads * cfg.head_dim)
        self.emb = nn.Linear(cfg.latent_dim, cfg.hidden, bias=False)
        # Start close to "no memory": small slots, no embedding shift.
        nn.init.normal_(self.kv.weight, std=0.02)
        nn.init.zeros_(self.kv.bias)
        nn.init.zeros_(self.emb.weight)

    def forward(self, z: Tensor) -> KVPrefix:
        """(B, C) readouts -> the prefix the LLM decodes behind."""
        c = self.cfg
        B = z.shape[0]
        z = nn.functional.normalize(z.float(), dim=-1)  # readouts are not unit norm; written latents are
        h = torch.tanh(self.down(z))  # (B, R)
        kv = self.kv(h).view(B, c.n_layers, 2, c.slots, c.n_kv_heads, c.head_dim)
        kv = kv.permute(1, 2, 0, 4, 3, 5)  # (L, 2, B, n_kv, S, d)
        return KVPrefix(tuple(kv[:, 0].unbind(0)), tuple(kv[:, 1].unbind(0)), self.emb(z))  # bias (B, H)

    def save(self, directory: Path, extra: dict | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(directory / WEIGHTS), metadata={"format": "pt"})
        (directory / CONFIG).write_text(json.dumps(asdict(self.cfg) | (extra or {}), indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path, device: str | torch.device = "cpu") -> LatentAdapter:
        meta = json.loads((directory / CONFIG).read_text())
        fields = LatentConfig.__dataclass_fields__
        adapter = cls(LatentConfig(**{k: v for k, v in meta.items() if k in fields}))
        state = {k: v.float() for k, v in load_file(str(directory / WEIGHTS)).items()}
        adapter.load_state_dict(state)
        return adapter.to(device).eval()


ADAPTERS = Path(__file__).resolve().parent / "adapters"  # adapters shipped with the service, one per base model
CONTEXT_SCOPE_THRESHOLD = 0.3  # the paper's; context decoding's development runs kept it


def _shipped(llm: str, encoder: str, root: Path) -> list[tuple[Path, dict]]:
    metas = [(cfg.parent, json.loads(cfg.read_text())) for cfg in sorted(root.glob(f"*/{CONFIG}"))]
    return [(d, m) for d, m in metas if m.get("llm") == llm and m.get("encoder") == encoder]


def find_adapter(llm: str, encoder: str, form: str, root: Path = ADAPTERS) -> Path | None:
    """The shipped adapter trained in this form for exactly this LLM and encoder, if there is one."""
    return next((d for d, m in _shipped(llm, encoder, root) if m.get("form") == form), None)


def default_decoder(llm: str, encoder: str, root: Path = ADAPTERS) -> str:
    """The kind the development runs chose for this model (the shipped adapter marked default), else context."""
    return next((m["form"] for _, m in _shipped(llm, encoder, root) if m.get("default")), "context")


def adapter_form(directory: Path) -> str:
    return json.loads((directory / CONFIG).read_text()).get("form", "latent")


def scope_threshold_for(directory: Path) -> float:
    """The scope threshold chosen with this adapter on development data (its config), else the paper's."""
    return float(json.loads((directory / CONFIG).read_text()).get("scope_threshold", CONTEXT_SCOPE_THRESHOLD))
