"""How the scope threshold trades paraphrase recall against neighbourhood leakage, as the service decides scope
(development range).

N CounterFact edits (case_id 2000-9999) are written into a memory as the service writes them. A paraphrase of
an edit should be in scope; a neighbourhood prompt (another subject, same relation) should not. For each
cosine-distance threshold, every prompt goes through the service's own read path (``service.recall``: the scope
rule's decision, the readout's facts, the mention check and the relation gate the settings turn on) with the
served ``ScopeRule`` at that threshold, and this prints and plots the share of paraphrases and of neighbourhood
prompts in scope: served (the whole rule) and by the cosine decision alone (the paper's scope detector).

    python -m bench.scope_sweep [--n 500]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from tqdm import tqdm

from models.encoder import TextEncoder
from service.app import decoder_choice, memory_config, scope_rule
from service.memories import MemoryRegistry
from service.recall import Recaller
from service.settings import Settings
from service.store import open_store
from training.data import DEFAULT_DATA, counterfact

THRESHOLDS = [round(0.05 * i, 2) for i in range(1, 13)]
MEMORY = "sweep"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()

    settings = Settings()
    cases = counterfact(args.data, "dev")[: args.n]
    enc = TextEncoder(settings.encoder)
    served = scope_rule(settings, enc)
    with tempfile.TemporaryDirectory() as tmp:
        registry = MemoryRegistry(open_store(f"file://{tmp}/store"), memory_config(settings, enc.dim), "cpu",
                                  snapshot_every=10**9)
        registry.restore()
        facts = [c.fact for c in cases]
        for i in tqdm(range(0, len(facts), settings.max_batch_facts), desc="writing facts"):
            part = facts[i : i + settings.max_batch_facts]
            registry.write(MEMORY, [(t, {}) for t in part], enc.encode(part))
        recaller = Recaller(registry, served, settings.recalled_facts, settings.memory_read, settings.read_segment)
        rows = []
        for t in tqdm(THRESHOLDS, desc="thresholds"):
            rule = served.with_threshold(t)
            row: dict[str, float] = {"threshold": t}
            for kind, prompts in (("paraphrase", [c.paraphrases[0] for c in cases]),
                                  ("neighbour", [c.neighbours[0] for c in cases])):
                recalls = [recaller.recall(MEMORY, p, "auto", rule=rule) for p in prompts]
                row[f"{kind}_in_scope"] = round(sum(r.in_scope for r in recalls) / len(recalls), 3)
                row[f"{kind}_cosine_in_scope"] = round(
                    sum(r.decision is not None and r.decision.in_scope for r in recalls) / len(recalls), 3)
            print(row)
            rows.append(row)
        registry.close()
    default = decoder_choice(settings).scope_threshold
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scope_sweep.json").write_text(json.dumps(
        {"n": len(cases), "served_threshold": default, "relation_gate": served.relation.describe()
         if served.relation else None, "scope_requires_mention": served.requires_mention, "rows": rows}, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for kind, colour, want in (("paraphrase", "tab:blue", 1), ("neighbour", "tab:red", 0)):
        ax.plot(THRESHOLDS, [r[f"{kind}_in_scope"] for r in rows], marker="o", c=colour,
                label=f"{kind}s in scope, served rule (want {want})")
        ax.plot(THRESHOLDS, [r[f"{kind}_cosine_in_scope"] for r in rows], ls=":", c=colour,
                label=f"{kind}s, cosine decision alone")
    ax.axvline(default, ls="--", c="grey", label=f"served threshold {default}")
    ax.set_xlabel("max cosine distance for 'in scope'")
    ax.set_ylabel("share of prompts")
    ax.set_title(f"Scope rule on CounterFact dev ({len(cases)} written facts)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "scope_sweep.png", dpi=120)


if __name__ == "__main__":
    main()
