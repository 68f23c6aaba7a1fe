"""How many facts a memory holds: recall of the right fact through the memory.

For N CounterFact edits (development range, case_id 2000-9999) written one at a
time into one memory, query with each edit's *paraphrase* and count how often
the readout's nearest written latent is that edit (recall@1). Compared across
addressing modes, read rules and K, with the encoder's own nearest neighbour
(no memory) as the ceiling.

    python -m bench.capacity [--data ../shared/data] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tqdm import tqdm

from memory_core import EpisodicMemory, MemoryConfig, nearest, read
from models.device import describe_machine
from models.encoder import TextEncoder
from models.paths import DEFAULT_ENCODER
from training.data import DEFAULT_DATA, counterfact


def encode_all(enc: TextEncoder, texts: list[str], desc: str) -> torch.Tensor:
    return torch.cat([enc.encode(texts[i : i + 128]) for i in tqdm(range(0, len(texts), 128), desc=desc)])


def recall_at_1(readout: torch.Tensor, latents: torch.Tensor) -> float:
    _, idx = nearest(readout, latents, k=1)
    return (idx[:, 0] == torch.arange(len(latents))).float().mean().item()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 512, 1024, 2048, 4096])
    ap.add_argument("--slots", type=int, nargs="+", default=[512, 4096])
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    cases = counterfact(args.data, "dev")[: max(args.sizes)]
    enc = TextEncoder(DEFAULT_ENCODER)
    Z = encode_all(enc, [c.fact for c in cases], "encode facts")
    Zp = encode_all(enc, [c.paraphrases[0] for c in cases], "encode paraphrases")

    rows: list[dict] = []
    for n in args.sizes:
        rows.append({"mode": "no memory (encoder NN)", "K": 0, "N": n, "recall": recall_at_1(Zp[:n], Z[:n])})
        for K in args.slots:
            for mode in ("linear", "gaussian"):
                mem = EpisodicMemory(MemoryConfig(slots=K, dim=enc.dim, addressing=mode))
                state = mem.rebuild(Z[:n])  # equals n sequential writes (tested)
                key_read = mem.read(state, Zp[:n])  # W_q = address(Zq), the service's read
                pinv_read = read(Zp[:n], state.M)[0]  # Algorithm 1's W_q = Zq M^+
                rows.append({"mode": f"{mode}, key read", "K": K, "N": n, "recall": recall_at_1(key_read, Z[:n])})
                rows.append({"mode": f"{mode}, pinv read", "K": K, "N": n, "recall": recall_at_1(pinv_read, Z[:n])})
        print(n, [(r["mode"], r["K"], round(r["recall"], 3)) for r in rows if r["N"] == n])

    out = {"machine": describe_machine(), "split": "counterfact dev (case_id 2000-9999)", "rows": rows}
    (args.out / "capacity.json").write_text(json.dumps(out, indent=1))
    plot(rows, args.out / "capacity.png")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    series = sorted({(r["mode"], r["K"]) for r in rows})
    for mode, K in series:
        pts = sorted((r["N"], r["recall"]) for r in rows if r["mode"] == mode and r["K"] == K)
        label = mode if K == 0 else f"{mode}, K={K}"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label, ls="--" if K == 0 else "-")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("facts written (N)")
    ax.set_ylabel("paraphrase recall@1 of the written fact")
    ax.set_title("Memory capacity on CounterFact (dev range), all-MiniLM-L6-v2 latents")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
