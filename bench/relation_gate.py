"""Choose the relation gate's threshold on development data, and show what each threshold keeps and vetoes.

Kept (should be, at any threshold): CounterFact dev paraphrases (case_id 2000-9999, the sentence naming the
subject) and rewrite prompts against their own fact, zsRE dev rephrasings (eval 500+) against theirs, the
generation dev split's questions, paraphrases and clozes against their item's fact. Vetoed (should be):
the generation dev split's same-subject questions of another relation against the item's fact, and
CounterFact dev facts against another dev case's paraphrase of another relation. The chosen threshold is
the highest with >= 99.5 % of CounterFact paraphrases, >= 99 % of zsRE rephrasings and >= 99 % of the
generation questions, paraphrases and clozes kept. Reported records are never read.

    python -m bench.relation_gate [--write]   # --write records the choice in the gate's config.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib
import torch

from bench.generation import items as G
from models.device import describe_machine
from models.encoder import TextEncoder
from models.relation import RelationConfig, find_gate, load_gate
from service.settings import Settings
from training.data import DEFAULT_DATA, zsre
from training.relation import labelled_cases

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
KEEP = {"counterfact_paraphrase": 99.5, "zsre_rephrase": 99.0, "generation_own": 99.0}
GRID = [round(0.01 * i, 2) for i in range(0, 71)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--gate", type=Path, help="gate directory (default: the one shipped for the encoder)")
    ap.add_argument("--cases", type=int, default=3000, help="CounterFact dev cases read")
    ap.add_argument("--write", action="store_true", help="record the chosen threshold in the gate's config.json")
    args = ap.parse_args()
    settings = Settings()
    directory = args.gate or find_gate(settings.encoder)
    if directory is None:
        raise SystemExit(f"no relation gate for encoder {settings.encoder}: python -m training.relation")
    gate = load_gate(directory, TextEncoder(settings.encoder))

    def cos(queries: list[str], facts: list[str]) -> torch.Tensor:
        """(n,) relation cosine of each query to its fact."""
        out = []
        for i in range(0, len(queries), 256):
            Q, R = gate.latents(queries[i:i + 256]), gate.latents(facts[i:i + 256])  # (b, C) each
            out.append((Q * R).sum(-1))  # (b,)
        return torch.cat(out)

    cf = labelled_cases(args.data, "dev")[: args.cases]
    other = [next(o for o in cf[i + 1:] + cf if o.relation != c.relation) for i, c in enumerate(cf)]
    zs = zsre(args.data, "dev")
    items = G.build("dev")
    pairs = G.same_subject_pairs("dev")
    sims = {
        "counterfact_paraphrase": cos([c.paraphrase for c in cf], [c.fact for c in cf]),
        "counterfact_rewrite": cos([c.prompt for c in cf], [c.fact for c in cf]),
        "zsre_rephrase": cos([c.paraphrases[0] for c in zs], [c.fact for c in zs]),
        "generation_own": cos([it.prompt(f) for it in items for f in G.FORMS],
                              [it.fact for it in items for _ in G.FORMS]),
        "generation_same_subject": cos([p for p, _ in pairs], [it.fact for _, it in pairs]),
        "counterfact_other_relation": cos([o.paraphrase for o in other], [c.fact for c in cf]),
    }
    vetoed = ("generation_same_subject", "counterfact_other_relation")
    rates = {name: [round(100.0 * float(((s < t) if name in vetoed else (s >= t)).float().mean()), 2) for t in GRID]
             for name, s in sims.items()}
    ok = [t for j, t in enumerate(GRID) if all(rates[name][j] >= floor for name, floor in KEEP.items())]
    chosen = max(ok) if ok else 0.0
    j = GRID.index(chosen)
    at = {name: r[j] for name, r in rates.items()}
    res = {"machine": describe_machine(), "gate": str(directory.name), "encoder": settings.encoder,
           "n": {name: len(s) for name, s in sims.items()}, "keep_floors": KEEP, "chosen": chosen,
           "at_chosen": at, "grid": GRID,
           "rates": {name: {"kind": "vetoed" if name in vetoed else "kept", "percent": r} for name, r in rates.items()}}
    (RESULTS / "relation_gate.json").write_text(json.dumps(res, indent=1))
    _plot(rates, vetoed, chosen, RESULTS / "relation_gate.png")
    print(json.dumps({"chosen": chosen, "at_chosen": at}))
    if args.write:
        config = RelationConfig.read(directory)
        chosen_on = (f"bench.relation_gate on dev only: the highest threshold keeping >= 99.5 % of CounterFact dev "
                     f"paraphrases ({at['counterfact_paraphrase']}), >= 99 % of zsRE dev rephrasings "
                     f"({at['zsre_rephrase']}) and of generation dev prompts ({at['generation_own']}); it vetoes "
                     f"{at['generation_same_subject']} % of generation dev same-subject questions")
        RelationConfig(config.encoder, config.dim, chosen, chosen_on).write(directory)


def _plot(rates: dict[str, list[float]], vetoed: tuple[str, ...], chosen: float, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    colours = ["#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#d62728", "#8c564b"]
    for (name, r), colour in zip(rates.items(), colours, strict=False):
        ax.plot(GRID, r, label=f"{name.replace('_', ' ')} ({'vetoed' if name in vetoed else 'kept'})",
                color=colour, linestyle="--" if name in vetoed else "-")
    ax.axvline(chosen, color="grey", linewidth=0.8)
    ax.set_xlabel("relation threshold (cosine of name-masked sentences, projected)")
    ax.set_ylabel("% of pairs")
    ax.set_title("Relation gate on development data")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
