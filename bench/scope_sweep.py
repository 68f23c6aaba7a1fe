"""How the scope detector's threshold trades paraphrase recall against neighbourhood leakage (development range).

N CounterFact edits (case_id 2000-9999) are the written facts. A paraphrase of an edit should be in scope; a
neighbourhood prompt (another subject, same relation) should not. For each cosine-distance threshold this
prints and plots the share of paraphrases in scope and of neighbourhood prompts wrongly in scope.

    python -m bench.scope_sweep [--n 500]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tqdm import tqdm

from models.encoder import TextEncoder
from models.paths import DEFAULT_ENCODER
from models.scope import DEFAULT_SCOPE_THRESHOLD, ScopeDetector
from training.data import DEFAULT_DATA, counterfact

THRESHOLDS = [round(0.05 * i, 2) for i in range(1, 13)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()

    cases = counterfact(args.data, "dev")[: args.n]
    enc = TextEncoder(DEFAULT_ENCODER)
    esd = ScopeDetector(enc)
    facts = enc.encode([c.fact for c in cases])
    para = torch.tensor([esd.decide(c.paraphrases[0], facts).similarity for c in tqdm(cases, desc="paraphrases")])
    neigh = torch.tensor([esd.decide(c.neighbours[0], facts).similarity for c in tqdm(cases, desc="neighbours")])
    rows = [{"threshold": t, "paraphrase_in_scope": round((1 - para <= t).float().mean().item(), 3),
             "neighbour_in_scope": round((1 - neigh <= t).float().mean().item(), 3)} for t in THRESHOLDS]
    for r in rows:
        print(r)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scope_sweep.json").write_text(json.dumps({"n": len(cases), "rows": rows}, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(THRESHOLDS, [r["paraphrase_in_scope"] for r in rows], marker="o", label="paraphrases in scope (want 1)")
    ax.plot(THRESHOLDS, [r["neighbour_in_scope"] for r in rows], marker="o", label="neighbours in scope (want 0)")
    ax.axvline(DEFAULT_SCOPE_THRESHOLD, ls="--", c="grey", label=f"default {DEFAULT_SCOPE_THRESHOLD} (paper)")
    ax.set_xlabel("max cosine distance for 'in scope'")
    ax.set_ylabel("share of prompts")
    ax.set_title(f"Scope detector on CounterFact dev ({len(cases)} written facts)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "scope_sweep.png", dpi=120)


if __name__ == "__main__":
    main()
