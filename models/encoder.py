"""Text -> latent z: the Larimar encoder e.

Mean pooling over tokens then L2 normalisation, which is how all-MiniLM-L6-v2
was trained; any other Hugging Face encoder directory works the same way.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import AutoModel, AutoTokenizer

from models.paths import resolve


class TextEncoder:
    def __init__(self, spec: str, device: str = "cpu", max_length: int = 256) -> None:
        path = resolve(spec)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval()
        self.device = torch.device(device)
        self.max_length = max_length
        self.dim: int = int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> Tensor:
        """(N,) texts -> (N, C) unit-norm float32 latents on the encoder's device."""
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(**batch).last_hidden_state  # (N, T, C)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (N, T, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)  # (N, C)
        return torch.nn.functional.normalize(pooled.float(), dim=-1)
