"""Fitting the latent decoder's adapter with the LLM and encoder frozen (``larimar-train``).

Objective (larimar.md section 5, adapted to a frozen LLM), cross-entropy on the target tokens only:
- edit-shaped rows: the fact's prompt, its paraphrase and a chat-form question answered with what memory
  says, and a neighbourhood prompt answered with its true object (a misfired scope must not spread it);
- reconstruction of the written sentence (and of WikiText-2 sentences) from its latent alone.
The paper's plain-LM term (zero latent) is constant here: without a readout there is no prefix and the
frozen LLM is the base model by construction.

An adapter is trained for one decoder: "latent" (bare prompt, the prefix alone carries the fact) or
"hybrid" (the recalled facts shown as text too); which one the service uses by default is chosen by
measurement on development data (models/adapters/choices.json). Checkpoints every few steps make a
killed run resumable.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from models.device import describe_machine
from models.encoder import TextEncoder
from models.latent import TRAINING, LatentAdapter, LatentConfig
from models.llm import CausalLM
from training.examples import Example, Row, RowBuilder, load_examples

log = logging.getLogger("larimar.train")
CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 450
    facts_per_step: int = 8  # latent decoder; a row set is ~5 rows per fact
    hybrid_facts_per_step: int = 6  # hybrid rows are ~4x longer
    decoder: str = "hybrid"  # "latent" (bare prompt) or "hybrid" (facts as text too): one adapter per decoder
    lr: float = 5e-4
    warmup: int = 30
    rank: int = 256
    prefix_len: int = 1
    max_tokens: int = 128
    checkpoint_every: int = 25
    wikitext_sentences: int = 2000
    seed: int = 0


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine down to a tenth."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def encode_all(encoder: TextEncoder, texts: list[str], batch: int = 256) -> Tensor:
    out = [encoder.encode(texts[i : i + batch]) for i in tqdm(range(0, len(texts), batch), desc="encode facts")]
    return torch.cat(out)  # (N, C)


def rows_loss(llm: CausalLM, adapter: LatentAdapter, Z: Tensor, rows: list[Row], max_tokens: int) -> Tensor:
    """Weighted mean over rows of each row's mean target-token cross-entropy, behind the rows' prefixes."""
    pairs = [llm.pair_ids(r.context, r.target) for r in rows]
    seqs = [(p + t)[-max_tokens:] for p, t in pairs]
    n_tgt = [min(len(t), max_tokens - 1) for _, t in pairs]
    ids, mask = llm.pad(seqs)
    prefix = adapter(Z[[r.example for r in rows]].to(llm.device))
    hidden = llm.forward(ids, mask, prefix, hidden=True).last_hidden_state  # (B, T, H)
    # target token j of row i sits at len - n + j and is predicted one position earlier
    bi = torch.cat([torch.full((n,), i) for i, n in enumerate(n_tgt)])
    ti = torch.cat([torch.arange(len(s) - n - 1, len(s) - 1) for s, n in zip(seqs, n_tgt, strict=True)])
    tgt = torch.cat([torch.tensor(s[len(s) - n :]) for s, n in zip(seqs, n_tgt, strict=True)]).to(llm.device)
    logits = llm.model.get_output_embeddings()(hidden[bi, ti])  # (M, V) only where the loss looks
    ce = torch.nn.functional.cross_entropy(logits.float(), tgt, reduction="none")  # (M,)
    per_row = torch.zeros(len(rows), device=ce.device).index_add(0, bi.to(ce.device), ce)
    per_row = per_row / torch.tensor(n_tgt, device=ce.device).clamp_min(1)
    w = torch.tensor([r.weight for r in rows], device=ce.device)
    return (per_row * w).sum() / w.sum()


class Trainer:
    def __init__(self, cfg: TrainConfig, llm: CausalLM, encoder: TextEncoder, data: Path, out: Path,
                 llm_spec: str, encoder_spec: str) -> None:
        self.cfg, self.llm, self.out = cfg, llm, out
        for p in llm.model.parameters():
            p.requires_grad_(False)
        self.examples: list[Example] = load_examples(data, cfg.wikitext_sentences, cfg.seed)
        self.Z = encode_all(encoder, [f.text for f in self.examples])  # (N, C)
        self.rows = RowBuilder(llm, self.examples)
        self.editable = [i for i, f in enumerate(self.examples) if f.prompt]  # hybrid rows need a prompt
        self.adapter = LatentAdapter(LatentConfig.for_llm(llm.model.config, encoder.dim, prefix_len=cfg.prefix_len,
                                                          rank=cfg.rank, decoder=cfg.decoder, llm=llm_spec,
                                                          encoder=encoder_spec))
        self.adapter.to(llm.device).train()
        self.opt = torch.optim.AdamW(self.adapter.parameters(), lr=cfg.lr, weight_decay=0.0)
        self.step, self.seconds, self.rng = 0, 0.0, random.Random(cfg.seed)
        self.losses: dict[str, list[float]] = {"latent": [], "hybrid": []}

    # --- checkpoints ----------------------------------------------------------

    def save_checkpoint(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / (CHECKPOINT + ".tmp")
        torch.save({"adapter": self.adapter.state_dict(), "opt": self.opt.state_dict(), "step": self.step,
                    "seconds": self.seconds, "rng": self.rng.getstate(), "losses": self.losses,
                    "cfg": asdict(self.cfg), "latent_cfg": asdict(self.adapter.cfg)}, tmp)
        os.replace(tmp, self.out / CHECKPOINT)  # a kill mid-save leaves the previous checkpoint whole

    def resume(self) -> bool:
        path = self.out / CHECKPOINT
        if not path.exists():
            return False
        ck = torch.load(path, weights_only=False)
        self.adapter.load_state_dict(ck["adapter"])
        self.opt.load_state_dict(ck["opt"])
        self.step, self.seconds, self.losses = ck["step"], ck["seconds"], ck["losses"]
        self.rng.setstate(ck["rng"])
        log.info("resumed at step %d (%.0f s trained)", self.step, self.seconds)
        return True

    # --- training ---------------------------------------------------------------

    def batch(self, hybrid: bool) -> list[Row]:
        rows: list[Row] = []
        if hybrid:
            for i in self.rng.sample(self.editable, self.cfg.hybrid_facts_per_step):
                distractor = self.rng.choice(self.editable) if self.rng.random() < 0.5 else None
                rows += self.rows.hybrid_rows(i, distractor if distractor != i else None)
        else:
            for i in self.rng.sample(range(len(self.examples)), self.cfg.facts_per_step):
                rows += self.rows.latent_rows(i)
        return rows

    def run(self) -> None:
        cfg = self.cfg
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train latent decoder")
        while self.step < cfg.steps:
            t0 = time.perf_counter()
            for g in self.opt.param_groups:
                g["lr"] = lr_at(cfg, self.step)
            loss = rows_loss(self.llm, self.adapter, self.Z, self.batch(cfg.decoder == "hybrid"), cfg.max_tokens)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.adapter.parameters(), 1.0)
            self.opt.step()
            self.losses[cfg.decoder].append(loss.item())
            self.step += 1
            self.seconds += time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix({f: f"{sum(v[-20:]) / len(v[-20:]):.3f}" for f, v in self.losses.items() if v})
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.save_checkpoint()
        bar.close()

    def export(self, directory: Path) -> None:
        """The adapter as shipped (config + weights), beside it what the training run was (training.json)."""
        record = {
            "config": asdict(self.cfg),
            "steps": self.step,
            "seconds": round(self.seconds, 1),
            "machine": describe_machine(),
            "facts": len(self.examples),
            "final_loss": {f: round(sum(v[-50:]) / len(v[-50:]), 4) for f, v in self.losses.items() if v},
        }
        self.adapter.save_pretrained(directory)
        (directory / TRAINING).write_text(json.dumps(record, indent=2) + "\n")
        (directory / "losses.json").write_text(json.dumps(self.losses) + "\n")


def export_checkpoint(out: Path, directory: Path) -> None:
    """The adapter of the latest checkpoint, without the data or models (to evaluate a run still training)."""
    ck = torch.load(out / CHECKPOINT, weights_only=False)
    adapter = LatentAdapter(LatentConfig(**ck["latent_cfg"]))
    adapter.load_state_dict(ck["adapter"])
    adapter.save_pretrained(directory)
    record = {"config": ck["cfg"], "steps": ck["step"], "seconds": round(ck["seconds"], 1), "checkpoint": True}
    (directory / TRAINING).write_text(json.dumps(record, indent=2) + "\n")
