"""Text -> latent z: the Larimar encoder e.

Mean pooling over tokens then L2 normalisation, which is how all-MiniLM-L6-v2
was trained; any other Hugging Face encoder directory works the same way.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import AutoModel, AutoTokenizer

from models.paths import resolve

ENCODE_BATCH = 32  # texts per forward pass when many are encoded (measured: 32 beat 16, 64 and 128)


class TextEncoder:
    def __init__(self, spec: str, device: str = "cpu", max_length: int = 256) -> None:
        path = resolve(spec)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval()
        self.device = torch.device(device)
        self.max_length = max_length
        self.dim: int = int(self.model.config.hidden_size)

    def encode(self, texts: list[str], batch_size: int = ENCODE_BATCH) -> Tensor:
        """(N,) texts -> (N, C) unit-norm float32 latents on the encoder's device.

        Many texts are encoded shortest first, ``batch_size`` at a time: a batch is padded to its longest
        text, so similar lengths together waste little (on this project's 2-core CPU, 631 essay sentences:
        5.5k tokens/s against 1.5k in one unsorted batch of 256)."""
        if len(texts) <= batch_size:
            return self._encode(texts)
        lengths = [len(ids) for ids in self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]]
        order = sorted(range(len(texts)), key=lengths.__getitem__)
        out = torch.empty((len(texts), self.dim), device=self.device)  # (N, C)
        for i in range(0, len(order), batch_size):
            rows = order[i : i + batch_size]
            out[rows] = self._encode([texts[j] for j in rows])  # (b, C)
        return out

    @torch.inference_mode()
    def _encode(self, texts: list[str]) -> Tensor:
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(**batch).last_hidden_state  # (N, T, C)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (N, T, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)  # (N, C)
        return torch.nn.functional.normalize(pooled.float(), dim=-1)
