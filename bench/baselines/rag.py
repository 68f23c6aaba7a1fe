"""Retrieval into the prompt: the pipeline a team would build in an afternoon instead of this service (issue 26).

The same encoder as the service (all-MiniLM-L6-v2 by default), an exact vector index of the fact sentences
(faiss ``IndexFlatIP`` over unit latents: exact cosine, ids so a fact can be removed) and the top k facts
pasted into the prompt on every query, phrased by the service's own ``ContextDecoder`` so the prompt is not
what differs. Two variants: plain top-k (every query gets k facts), and top-k above a cosine threshold
chosen on the development sets as the service's scope threshold was (``python -m bench.baselines.rag``).
With ``answer_bias`` the same decoding trick as the service's steers the answer, so the bias is measured
apart from the memory. No scope detector, no mention check, no relation gate, no episodic memory.

    python -m bench.baselines.rag            # sweep the threshold on dev, write bench/results/rag_threshold.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch

from bench.generation.items import FORMS, build, same_subject, unrelated
from models.decoders import ContextDecoder, Readout
from models.device import describe_machine
from models.encoder import TextEncoder
from service.settings import Settings
from training.data import DEFAULT_DATA, counterfact

# Chosen by ``python -m bench.baselines.rag`` on CounterFact dev (case_id 2000-2999) and the generation suite's
# dev split: the cosine that best separates prompts about a written fact from prompts about none
# (bench/results/rag_threshold.json).
RAG_THRESHOLD = 0.675
SWEEP = [round(0.025 * i, 3) for i in range(8, 33)]
SYSTEMS = ("rag", "rag-threshold", "rag-bias", "rag-threshold-bias")
RESULTS = Path(__file__).resolve().parents[1] / "results"


class Rag:
    """Facts by id in an exact inner-product index; ``recall`` gives the k nearest, best first, with cosines."""

    def __init__(self, encoder: TextEncoder, k: int = 3, threshold: float | None = None) -> None:
        self.encoder, self.k, self.threshold = encoder, k, threshold
        self.reset()

    def reset(self) -> None:
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.encoder.dim))
        self.texts: dict[int, str] = {}
        self.next_id = 0

    def add(self, texts: Sequence[str]) -> list[int]:
        ids = list(range(self.next_id, self.next_id + len(texts)))
        self.next_id += len(texts)
        latents = self.encoder.encode(list(texts)).cpu().numpy().astype(np.float32)  # (n, C) unit rows
        self.index.add_with_ids(latents, np.asarray(ids, dtype=np.int64))
        self.texts.update(zip(ids, texts, strict=True))
        return ids

    def forget(self, fact_id: int) -> None:
        self.index.remove_ids(np.asarray([fact_id], dtype=np.int64))
        del self.texts[fact_id]

    def nearest(self, prompts: Sequence[str], k: int | None = None) -> list[list[tuple[str, float]]]:
        """Per prompt, the k nearest facts and their cosines, whatever the threshold."""
        if not self.texts:
            return [[] for _ in prompts]
        q = self.encoder.encode(list(prompts)).cpu().numpy().astype(np.float32)  # (P, C)
        sims, ids = self.index.search(q, min(k or self.k, len(self.texts)))  # (P, k) each
        return [[(self.texts[int(i)], float(s)) for s, i in zip(row_s, row_i, strict=True) if i >= 0]
                for row_s, row_i in zip(sims, ids, strict=True)]

    def recall(self, prompt: str) -> list[str]:
        """The facts pasted into this prompt: the top k, above the threshold when there is one."""
        (near,) = self.nearest([prompt])
        return [t for t, s in near if self.threshold is None or s >= self.threshold]


@dataclass(frozen=True)
class Pipeline:
    """A RAG system as the benchmarks run it: its index and the decoder that shows the facts to the LLM."""

    name: str  # one of SYSTEMS
    rag: Rag
    decoder: ContextDecoder

    def readout(self, prompt: str) -> Readout | None:
        """What the LLM is shown for this prompt (None: nothing, the plain LLM answers)."""
        facts = tuple(self.rag.recall(prompt))
        return Readout(torch.empty(0), facts) if facts else None

    def config(self) -> dict:
        return {"k": self.rag.k, "threshold": self.rag.threshold, "answer_bias": self.decoder.answer_bias}


def pipeline(name: str, encoder: TextEncoder, settings: Settings) -> Pipeline:
    """``name`` (one of SYSTEMS) over the service's encoder, k and answer bias settings."""
    rag = Rag(encoder, settings.recalled_facts, RAG_THRESHOLD if "threshold" in name else None)
    return Pipeline(name, rag, ContextDecoder(settings.answer_bias if name.endswith("-bias") else 0.0))


def _rates(pos: list[float], neg: list[float], t: float) -> tuple[float, float]:
    return (sum(s >= t for s in pos) / len(pos), sum(s < t for s in neg) / len(neg))


def sweep(encoder: TextEncoder, encoder_spec: str, data: Path, n: int) -> dict:
    """For each threshold, the share of prompts about a written fact that reach it as the top fact above the
    threshold (positives) and of prompts about no written fact that reach nothing (negatives), on CounterFact
    dev (paraphrases / neighbourhood prompts) and the generation dev split (questions, paraphrases, clozes /
    unrelated and same-subject-other-relation prompts). The chosen threshold maximises the mean of the four."""
    rag = Rag(encoder)
    cases = counterfact(data, "dev")[:n]
    rag.add([c.fact for c in cases])
    pos_cf = [s if t == c.fact else -1.0 for c, ((t, s),) in
              zip(cases, rag.nearest([c.paraphrases[0] for c in cases], 1), strict=True)]
    neg_cf = [near[0][1] for near in rag.nearest([c.neighbours[0] for c in cases], 1)]
    rag.reset()
    items = build("dev")
    rag.add([it.fact for it in items])
    asks = [(it, it.prompt(f)) for it in items for f in FORMS]
    pos_gen = [s if t == it.fact else -1.0 for (it, _), ((t, s),) in
               zip(asks, rag.nearest([p for _, p in asks], 1), strict=True)]
    neg_gen = [near[0][1] for near in rag.nearest(unrelated("dev") + same_subject("dev"), 1)]
    rows = []
    for t in SWEEP:
        cf, gen = _rates(pos_cf, neg_cf, t), _rates(pos_gen, neg_gen, t)
        rows.append({"threshold": t, "cf_paraphrase_reached": cf[0], "cf_neighbour_rejected": cf[1],
                     "gen_prompt_reached": gen[0], "gen_unrelated_rejected": gen[1],
                     "score": (sum(cf) + sum(gen)) / 4})
    best = max(rows, key=lambda r: r["score"])
    return {"machine": describe_machine(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "encoder": encoder_spec, "counterfact_dev_cases": len(cases), "generation_dev_items": len(items),
            "chosen": best["threshold"], "sweep": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--n", type=int, default=1000, help="CounterFact dev cases written")
    ap.add_argument("--out", type=Path, default=RESULTS / "rag_threshold.json")
    args = ap.parse_args()
    spec = Settings().encoder
    res = sweep(TextEncoder(spec), spec, args.data, args.n)
    args.out.write_text(json.dumps(res, indent=1))
    for r in res["sweep"]:
        print(json.dumps(r))
    print("chosen threshold:", res["chosen"])


if __name__ == "__main__":
    main()
