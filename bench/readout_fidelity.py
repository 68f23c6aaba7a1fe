"""What a memory readout carries: is z_r closer to the written fact or to the query that read it?

The latent decoder must be fed something that says the new object. This measures, for CounterFact dev
facts written into a default memory (K=512 slots, linear addressing), the cosine of the readout z_r
(read with the paraphrase's latent) to the fact's own written latent and to the query latent, and how
often the readout's nearest written latent is the fact itself, for growing N.

    python -m bench.readout_fidelity            # writes bench/results/readout_fidelity.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from memory_core import EpisodicMemory, MemoryConfig, nearest
from models.device import describe_machine
from models.encoder import TextEncoder
from models.sentences import split_sentences
from service.settings import Settings
from training.data import DEFAULT_DATA, counterfact

OUT = Path(__file__).resolve().parent / "results" / "readout_fidelity.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[10, 100, 384, 1000, 4000])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    settings = Settings()
    enc = TextEncoder(settings.encoder)
    cases = counterfact(args.data, "dev")[: max(args.n)]
    Z = torch.cat([enc.encode([c.fact for c in cases[i : i + 256]]) for i in range(0, len(cases), 256)])  # (N, C)
    # the query latent is the paraphrase's best sentence, as the scope detector picks it
    Q = torch.stack([max(enc.encode(split_sentences(c.paraphrases[0])), key=lambda q, z=z: float(q @ z))
                     for c, z in zip(cases, Z, strict=True)])  # (N, C)
    mem = EpisodicMemory(MemoryConfig(slots=settings.memory_slots, dim=enc.dim, ridge=settings.memory_ridge))
    rows = []
    for n in args.n:
        state = mem.rebuild(Z[:n])
        k = min(n, 100)  # the first 100 facts are the ones read back
        zr = mem.read(state, Q[:k])  # (k, C)
        cos = torch.nn.functional.cosine_similarity
        _, idx = nearest(zr, Z[:n])
        rows.append({"n": n, "cos_readout_fact": round(float(cos(zr, Z[:k]).mean()), 4),
                     "cos_readout_query": round(float(cos(zr, Q[:k]).mean()), 4),
                     "cos_query_fact": round(float(cos(Q[:k], Z[:k]).mean()), 4),
                     "nearest_is_fact": round(float((idx[:, 0] == torch.arange(k)).float().mean()), 4)})
        print(rows[-1])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"slots": settings.memory_slots, "dim": enc.dim, "split": "counterfact dev",
                                    "machine": describe_machine(), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
