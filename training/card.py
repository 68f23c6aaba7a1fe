"""The model card of a shipped adapter, rendered from its config (training facts) and the benchmark summaries.

    python -m training.card models/adapters/smollm2-135m-instruct-hybrid

Rewrites the generated block of the card's README.md (between the markers); the prose around it is kept.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.editing.report import _f
from models.latent import CONFIG

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "editing"
BEGIN, END = "<!-- card:begin (python -m training.card) -->", "<!-- card:end -->"


def training_block(meta: dict) -> str:
    t = meta["training"]
    cfg = t["config"]
    return "\n".join([
        "| | |", "|---|---|",
        f"| form | `{meta['form']}` (input: the recalled fact's written latent) |",
        f"| base LLM / encoder | `{meta['llm']}` / `{meta['encoder']}` |",
        f"| shape | {meta['n_layers']} layers x {meta['slots']} key/value slot(s) of {meta['n_kv_heads']} heads x "
        f"{meta['head_dim']}, embedding bias {meta['hidden']}, bottleneck {meta['rank']} |",
        f"| steps | {t['steps']} (peak lr {cfg['lr']}, {cfg['warmup']} warm-up, cosine to a tenth; "
        f"{cfg['facts_per_step'] if meta['form'] == 'latent' else cfg['hybrid_facts_per_step']} facts per step) |",
        f"| training facts | {t.get('facts', '–')} |",
        f"| wall time | {t['seconds'] / 60:.1f} min |",
        f"| machine | {t.get('machine', '–')} |",
        f"| final loss (mean of the last 50 steps) | {t.get('final_loss', {}).get(meta['form'], '–')} |",
        f"| scope threshold chosen on dev | {meta.get('scope_threshold', 0.3)} |",
    ])


def results_block(kind: str, results: Path) -> str:
    head = "| protocol | N | ES | PS | NS | score | gen. acc. rewrite / paraphrase | scope: paraphrase in / " \
           "neighbour in | time per edit | cases |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    runs = [json.loads(p.read_text()) for p in sorted(results.glob(f"counterfact-report-larimar-{kind}-*.json"))]
    for r in sorted(runs, key=lambda r: (r["protocol"], r["n_edits"])):
        sc = r.get("scope", {})
        t = r.get("edit_s_median")
        lines.append(f"| {r['protocol']} | {r['n_edits']} | {_f(r.get('ES'))} | {_f(r.get('PS'))} | "
                     f"{_f(r.get('NS'))} | {_f(r.get('score'))} | {_f(r.get('gen_rewrite'))} / "
                     f"{_f(r.get('gen_paraphrase'))} | {_f(sc.get('paraphrase'))} / {_f(sc.get('neighbour'))} | "
                     f"{'–' if t is None else f'{t * 1e3:.1f} ms'} | {r.get('n_cases')} |")
    return "\n".join(lines)


def plot_losses(directory: Path, form: str) -> bool:
    """loss.png: the training loss per step and its 20-step running mean."""
    path = directory / "losses.json"
    if not path.exists():
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = json.loads(path.read_text())[form]
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
    meta = json.loads((directory / CONFIG).read_text())
    plot = "![training loss](loss.png)" if plot_losses(directory, meta["form"]) else ""
    block = "\n\n".join([BEGIN, "### Training", training_block(meta), plot,
                         "### CounterFact reported set (case_id < 2000), this adapter in the service",
                         results_block(meta["form"], results), END])
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
