"""Fit the relation gate's projection (``models.relation``) on CounterFact training cases.

``python -m training.relation [--out models/relation/all-minilm-l6-v2]``: a few minutes on 2 CPU cores
(encoding ~26k sentences, then 1,000 steps of a 384 x 384 map); deterministic for a seed.

Labels. EasyEdit's CounterFact files carry no relation ids, but every case's prompt is a relation template
with the subject filled in, and known_1000 (not a reported set) names the relation of 135 of those templates.
A case is labelled by its prompt's template; a template known_1000 lacks takes the relation of the cases
whose paraphrase (same relation, another wording) has a known template, when at least 80 % of them agree.
Templates of more than one relation in known_1000 ("{} is a") stay unlabelled, and so do their cases.

Objective. Supervised contrastive (SupCon) over the masked fact sentence, prompt and paraphrase of every
labelled case: sentences of one relation are pulled together, of two relations pushed apart. W starts at the
identity and an L2 pull back to it keeps what the encoder knew of wordings CounterFact lacks (questions,
relations such as currency): without it, dev questions on relations CounterFact lacks fell apart.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor  # noqa: E402
from tqdm import tqdm  # noqa: E402

from models.encoder import TextEncoder  # noqa: E402
from models.relation import GATES, RelationConfig, RelationGate  # noqa: E402
from models.sentences import split_sentences  # noqa: E402
from models.text import mask_names  # noqa: E402
from training.data import CF_SPLITS, DEFAULT_DATA, KNOWN, Split, _flat_counterfact, _read, fact_sentence  # noqa: E402
from training.relation_templates import OWN_RELATIONS, own_sentences  # noqa: E402

log = logging.getLogger("larimar.training.relation")
_SENTENCE_OPENING = re.compile(r"[.!?\"]\s")


@dataclass(frozen=True)
class RelationCase:
    case_id: int
    relation: str  # a Wikidata property id, "P37"
    fact: str  # "The official language of Kalajoki is Finnish."
    prompt: str  # "The official language of Kalajoki is"
    paraphrase: str  # the paraphrase prompt's sentence that names the subject


@dataclass(frozen=True)
class FitConfig:
    steps: int = 1000
    batch: int = 1024
    temperature: float = 0.1
    lr: float = 2e-3
    pull_to_identity: float = 0.01  # lambda of lambda * ||W - I||^2
    seed: int = 0
    own_relations: bool = True  # add training.relation_templates (questions; relations CounterFact lacks)


def template(prompt: str, subject: str) -> str | None:
    """The relation template of a prompt ("The mother tongue of {} is"), without the noise text CounterFact's
    paraphrases open with; None when the subject is missing or the template says too little ("{}, the")."""
    if subject not in prompt:
        return None
    t = prompt.replace(subject, "{}")
    head = t[: t.index("{}")]
    cut = max(head.rfind("\n"), max((m.end() for m in _SENTENCE_OPENING.finditer(head)), default=-1) - 1)
    t = t[cut + 1 :].strip()
    return t if len(re.findall(r"[A-Za-z]+", t)) >= 2 else None


def _subject_sentence(text: str, subject: str) -> str:
    sentences = split_sentences(text)
    return next((s for s in reversed(sentences) if subject in s), sentences[-1])


def labelled_cases(data: Path, split: Split) -> list[RelationCase]:
    """CounterFact cases of ``split`` whose relation the templates tell (module docstring)."""
    counts: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for r in _read(data / KNOWN):
        counts[r["template"]][r["relation_id"]] += 1
    label = {t: c.most_common(1)[0][0] for t, c in counts.items() if len(c) == 1}
    flat = _flat_counterfact(data)  # every split: labels spread through templates, not through cases' objects
    cases = []
    for cid, r in flat.items():
        paraphrase = _subject_sentence(r["rephrase_prompt"], r["subject"])
        cases.append((cid, r, template(r["prompt"], r["subject"]), paraphrase, template(paraphrase, r["subject"])))
    for _ in range(3):  # propagate through paraphrase pairs until it settles
        votes: defaultdict[str, Counter[str]] = defaultdict(Counter)
        for _cid, _r, t1, _p, t2 in cases:
            if known := label.get(t1 or "") or label.get(t2 or ""):
                for t in (t1, t2):
                    if t and t not in label:
                        votes[t][known] += 1
        for t, c in votes.items():
            relation, n = c.most_common(1)[0]
            if n >= 2 and n >= 0.8 * c.total():
                label[t] = relation
    lo, hi = CF_SPLITS[split]
    out = []
    for cid, r, t1, paraphrase, t2 in sorted(cases, key=lambda c: c[0]):
        relation = label.get(t1 or "")
        if lo <= cid < hi and relation and label.get(t2 or "", relation) == relation:
            out.append(RelationCase(cid, relation, fact_sentence(r["prompt"], r["target_new"]), r["prompt"],
                                    paraphrase))
    return out


def encode_masked(encoder: TextEncoder, texts: list[str], batch: int = 256, desc: str = "encode") -> Tensor:
    """(N, C) encoder latents of the texts with their names masked."""
    chunks = [encoder.encode([mask_names(t) for t in texts[i : i + batch]])
              for i in tqdm(range(0, len(texts), batch), desc=desc)]
    return torch.cat(chunks)  # (N, C)


def fit(X: Tensor, y: Tensor, cfg: FitConfig) -> Tensor:
    """The projection W (C, C) minimising SupCon over (X, y) + lambda ||W - I||^2."""
    torch.manual_seed(cfg.seed)
    C = X.shape[1]
    I = torch.eye(C)  # noqa: E741  # (C, C)
    W = I.clone().requires_grad_(True)  # (C, C)
    opt = torch.optim.AdamW([W], lr=cfg.lr, weight_decay=0.0)
    eye = torch.eye(cfg.batch, dtype=torch.bool)  # (B, B)
    bar = tqdm(range(cfg.steps), desc="fit relation gate")
    for step in bar:
        i = torch.randint(0, len(X), (cfg.batch,))  # (B,)
        R = F.normalize(X[i] @ W, dim=-1)  # (B, C)
        logits = (R @ R.T / cfg.temperature).masked_fill(eye, -1e9)  # (B, B)
        positive = (y[i][:, None] == y[i][None, :]) & ~eye  # (B, B) same relation, another sentence
        nll = -(logits.log_softmax(-1) * positive).sum(-1) / positive.sum(-1).clamp_min(1)  # (B,)
        loss = nll.mean() + cfg.pull_to_identity * ((W - I) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return W.detach()


def train(encoder: TextEncoder, encoder_spec: str, data: Path, cfg: FitConfig) -> tuple[RelationGate, RelationConfig]:
    cases = labelled_cases(data, "train")
    relations = sorted({c.relation for c in cases})
    log.info("%d labelled CounterFact training cases over %d relations", len(cases), len(relations))
    texts = [t for c in cases for t in (c.fact, c.prompt, c.paraphrase)]
    labels = [c.relation for c in cases for _ in range(3)]
    if cfg.own_relations:
        own = own_sentences(seed=cfg.seed)
        texts += [t for t, _ in own]
        labels += [f"own:{r}" for _, r in own]
        log.info("and %d sentences of %d relations CounterFact lacks", len(own), len(OWN_RELATIONS))
    names = sorted(set(labels))
    y = torch.tensor([names.index(label) for label in labels])  # (N,)
    W = fit(encode_masked(encoder, texts), y, cfg)
    threshold = 0.3  # a placeholder until bench.relation_gate chooses on development data
    return RelationGate(encoder, W, threshold), RelationConfig(encoder_spec, encoder.dim, threshold)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m training.relation", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=GATES / "all-minilm-l6-v2", help="where the gate is written")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="benchmark data folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-own-relations", action="store_true", help="CounterFact's relations alone")
    args = ap.parse_args(argv)
    from service.settings import Settings

    settings = Settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    encoder = TextEncoder(settings.encoder)
    cfg = FitConfig(seed=args.seed, own_relations=not args.no_own_relations)
    gate, config = train(encoder, settings.encoder, args.data, cfg)
    gate.save(args.out, config)
    log.info("relation gate written to %s (threshold still to choose: python -m bench.relation_gate)", args.out)


if __name__ == "__main__":
    main()
