"""What the mention check costs and saves, on CounterFact's development range.

Costs: paraphrases and rewrite prompts of dev cases (case_id 2000-9999) whose own fact fails ``mentions`` (the
sentence the scope detector would pick, the one nearest the fact). Saves: neighbourhood prompts of the first
N dev cases that reach memory with those N facts written, then with training-range facts added (the
reported runs' filler is of the same kind), as the service decides it: the nearest fact within the scope
threshold, the recalled facts (up to ``recalled_facts``, each within it) filtered by the mention check.

    python -m bench.scope_mentions [--n 1000] [--filler 9000]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tqdm import tqdm

from models.encoder import TextEncoder
from models.scope import MENTION_RULE, mentions, named_in
from models.sentences import split_sentences
from service.app import decoder_choice
from service.settings import Settings
from training.data import DEFAULT_DATA, counterfact

BATCH = 512


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--filler", type=int, default=9000)
    ap.add_argument("--threshold", type=float, help="default: the service's, as its settings choose it")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "scope_mentions.json")
    args = ap.parse_args()
    settings = Settings()
    threshold = decoder_choice(settings).scope_threshold if args.threshold is None else args.threshold
    k = settings.recalled_facts
    enc = TextEncoder(settings.encoder)

    def encode(texts: list[str]) -> torch.Tensor:
        return torch.cat([enc.encode(texts[i:i + BATCH]) for i in range(0, len(texts), BATCH)])  # (n, C)

    dev = counterfact(args.data, "dev")
    misses: dict[str, list[str]] = {"rewrite": [], "paraphrase": []}
    for c in tqdm(dev, desc="own facts"):
        for kind, prompt in (("rewrite", c.request.prompt), ("paraphrase", c.paraphrases[0])):
            sentences = split_sentences(prompt)
            best = int((enc.encode(sentences) @ enc.encode([c.fact])[0]).argmax()) if len(sentences) > 1 else 0
            if not mentions(named_in(prompt, sentences[best]), c.fact):
                misses[kind].append(prompt)

    cases = dev[: args.n]
    facts = [c.fact for c in cases] + [c.fact for c in counterfact(args.data, "train")[: args.filler]]
    F = encode(facts)  # (N + filler, C)
    reached: dict[int, list[dict[str, object]]] = {}
    for n in (args.n, args.n + args.filler):
        reached[n] = []
        for c in tqdm(cases, desc=f"neighbours among {n} facts"):
            sentences = split_sentences(c.neighbours[0])
            sims, idx = (enc.encode(sentences) @ F[:n].T).topk(k, dim=1)  # (S, k)
            row = int(sims[:, 0].argmax())
            near = [facts[i] for s, i in zip(sims[row].tolist(), idx[row].tolist(), strict=True) if 1 - s <= threshold]
            found = [f for f in near if mentions(named_in(c.neighbours[0], sentences[row]), f)]
            if found:
                reached[n].append({"neighbour": c.neighbours[0], "facts": found})
    res = {"mention_rule": MENTION_RULE, "scope_threshold": threshold, "recalled_facts": k,
           "own_fact_misses": {kind: {"n": len(dev), "missed": len(v), "examples": v[:20]}
                               for kind, v in misses.items()},
           "neighbours_reached": {str(n): {"n": len(cases), "reached": len(v), "rows": v} for n, v in reached.items()}}
    args.out.write_text(json.dumps(res, indent=1, ensure_ascii=False))
    print(json.dumps({"own_fact_misses": {k: v["missed"] for k, v in res["own_fact_misses"].items()},
                      "neighbours_reached": {n: v["reached"] for n, v in res["neighbours_reached"].items()}}))


if __name__ == "__main__":
    main()
