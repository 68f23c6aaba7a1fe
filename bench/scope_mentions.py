"""What the mention check costs and saves, on CounterFact's development range, as the service applies it.

Costs: paraphrases and rewrite prompts of dev cases (case_id 2000-9999) whose own fact fails the served rule's
mention check (``ScopeRule.admits``, read from the sentence nearest the fact). Saves: neighbourhood prompts of
the first N dev cases that reach memory with those N facts written, then with training-range facts added (the
reported runs' filler is of the same kind), through the service's read path (``service.recall``) with the
served rule less its relation gate, so the mention check's own share shows.

    python -m bench.scope_mentions [--n 1000] [--filler 9000]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import torch
from tqdm import tqdm

from models.encoder import TextEncoder
from models.scope import MENTION_RULE
from service.app import memory_config, scope_rule
from service.memories import MemoryRegistry
from service.recall import Recaller
from service.settings import Settings
from service.store import open_store
from training.data import DEFAULT_DATA, counterfact

BATCH = 512
MEMORY = "mentions"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--filler", type=int, default=9000)
    ap.add_argument("--threshold", type=float, help="default: the service's, as its settings choose it")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "scope_mentions.json")
    args = ap.parse_args()
    settings = Settings()
    enc = TextEncoder(settings.encoder)
    rule = dataclasses.replace(scope_rule(settings, enc), relation=None, requires_mention=True)
    if args.threshold is not None:
        rule = rule.with_threshold(args.threshold)

    def encode(texts: list[str]) -> torch.Tensor:
        return torch.cat([enc.encode(texts[i:i + BATCH]) for i in range(0, len(texts), BATCH)])  # (n, C)

    dev = counterfact(args.data, "dev")
    own = encode([c.fact for c in dev])  # (D, C)
    misses: dict[str, list[str]] = {"rewrite": [], "paraphrase": []}
    for c, z in zip(tqdm(dev, desc="own facts"), own, strict=True):
        for kind, prompt in (("rewrite", c.request.prompt), ("paraphrase", c.paraphrases[0])):
            p = rule.read(prompt)
            decision = rule.decide(p, p.latents @ z)  # (S,) cosines to its own fact: the nearest sentence
            if not rule.admits(p, decision, [c.fact], [""])[0]:
                misses[kind].append(prompt)

    cases = dev[: args.n]
    facts = [c.fact for c in cases] + [c.fact for c in counterfact(args.data, "train")[: args.filler]]
    reached: dict[int, list[dict[str, object]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        registry = MemoryRegistry(open_store(f"file://{tmp}/store"), memory_config(settings, enc.dim), "cpu",
                                  snapshot_every=10**9)
        registry.restore()
        recaller = Recaller(registry, rule, settings.recalled_facts, settings.memory_read, settings.read_segment)
        written = 0
        for n in (args.n, args.n + args.filler):
            for i in tqdm(range(written, n, BATCH), desc=f"writing to {n} facts"):
                part = facts[i : min(n, i + BATCH)]
                registry.write(MEMORY, [(t, {}) for t in part], encode(part))
            written = n
            reached[n] = []
            for c in tqdm(cases, desc=f"neighbours among {n} facts"):
                r = recaller.recall(MEMORY, c.neighbours[0], "auto")
                if r.in_scope:
                    reached[n].append({"neighbour": c.neighbours[0], "facts": [f.text for f in r.facts]})
        registry.close()
    res = {"mention_rule": MENTION_RULE, "scope_threshold": rule.threshold, "recalled_facts": settings.recalled_facts,
           "path": "served (service.recall), relation gate off",
           "own_fact_misses": {kind: {"n": len(dev), "missed": len(v), "examples": v[:20]}
                               for kind, v in misses.items()},
           "neighbours_reached": {str(n): {"n": len(cases), "reached": len(v), "rows": v} for n, v in reached.items()}}
    args.out.write_text(json.dumps(res, indent=1, ensure_ascii=False))
    print(json.dumps({"own_fact_misses": {k: v["missed"] for k, v in res["own_fact_misses"].items()},
                      "neighbours_reached": {n: v["reached"] for n, v in res["neighbours_reached"].items()}}))


if __name__ == "__main__":
    main()
