"""The model card of a shipped adapter, from its config, its training record and the benchmark summaries.

    python -m bench.editing.card models/adapters/smollm2-135m-instruct-hybrid

Rewrites the generated block of the card's README.md (between the markers); the prose around it is kept.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.editing.report import facts_in_memory, n_label
from bench.tables import fmt
from models.choice import choose_decoder
from models.latent import TRAINING, LatentConfig

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results" / "editing"
BEGIN, END = "<!-- card:begin (python -m bench.editing.card) -->", "<!-- card:end -->"


def training_block(cfg: LatentConfig, t: dict, scope_threshold: float) -> str:
    run = t["config"]
    per_step = run["facts_per_step"] if cfg.decoder == "latent" else run["hybrid_facts_per_step"]
    return "\n".join([
        "| | |", "|---|---|",
        f"| decoder | `{cfg.decoder}` (input: the recalled fact's written latent) |",
        f"| base LLM / encoder | `{cfg.llm}` / `{cfg.encoder}` |",
        f"| shape | {cfg.n_layers} layers x {cfg.prefix_len} key/value prefix position(s) of {cfg.n_kv_heads} heads "
        f"x {cfg.head_dim}, embedding bias {cfg.hidden}, bottleneck {cfg.rank} |",
        f"| steps | {t['steps']} (peak lr {run['lr']}, {run['warmup']} warm-up, cosine to a tenth; "
        f"{per_step} facts per step) |",
        f"| training facts | {t.get('facts', '–')} |",
        f"| wall time | {t['seconds'] / 60:.1f} min |",
        f"| machine | {t.get('machine', '–')} |",
        f"| final loss (mean of the last 50 steps) | {t.get('final_loss', {}).get(cfg.decoder, '–')} |",
        f"| scope threshold chosen on dev | {scope_threshold} |",
    ])


def results_block(decoder: str, results: Path) -> str:
    head = "| protocol | N | ES | PS | NS | score | gen. acc. rewrite / paraphrase | scope: paraphrase in / " \
           "neighbour in | time per edit | cases |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    runs = [json.loads(p.read_text()) for p in sorted(results.glob(f"counterfact-report-larimar-{decoder}-*.json"))]
    for r in sorted(runs, key=lambda r: (r["protocol"], facts_in_memory(r))):
        sc = r.get("scope", {})
        t = r.get("edit_s_median")
        lines.append(f"| {r['protocol']} | {n_label(r)} | {fmt(r.get('ES'))} | {fmt(r.get('PS'))} | "
                     f"{fmt(r.get('NS'))} | {fmt(r.get('score'))} | {fmt(r.get('gen_rewrite'))} / "
                     f"{fmt(r.get('gen_paraphrase'))} | {fmt(sc.get('paraphrase'))} / {fmt(sc.get('neighbour'))} | "
                     f"{'–' if t is None else f'{t * 1e3:.1f} ms'} | {r.get('n_cases')} |")
    return "\n".join(lines)


def plot_losses(directory: Path, decoder: str) -> bool:
    """loss.png: the training loss per step and its 20-step running mean."""
    path = directory / "losses.json"
    if not path.exists():
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = json.loads(path.read_text())[decoder]
    mean = [sum(losses[max(0, i - 19) : i + 1]) / len(losses[max(0, i - 19) : i + 1]) for i in range(len(losses))]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(losses, lw=0.6, alpha=0.5, label="per step")
    ax.plot(mean, lw=1.8, label="20-step mean")
    ax.set(xlabel="step", ylabel="target-token cross-entropy", title=f"{directory.name}: training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(directory / "loss.png", dpi=110)
    plt.close(fig)
    return True


def render(directory: Path, results: Path = RESULTS) -> None:
    cfg = LatentConfig.from_pretrained(directory)
    threshold = choose_decoder(cfg.llm, cfg.encoder, cfg.decoder, directory).scope_threshold
    plot = "![training loss](loss.png)" if plot_losses(directory, cfg.decoder) else ""
    block = "\n\n".join([BEGIN, "### Training",
                         training_block(cfg, json.loads((directory / TRAINING).read_text()), threshold), plot,
                         "### CounterFact reported set (case_id < 2000), this adapter in the service",
                         results_block(cfg.decoder, results), END])
    card = directory / "README.md"
    text = card.read_text() if card.exists() else f"# Latent decoder adapter: {directory.name}\n\n{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    card.write_text(head + block + tail)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("adapter", type=Path)
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args()
    render(args.adapter, args.results)


if __name__ == "__main__":
    main()
