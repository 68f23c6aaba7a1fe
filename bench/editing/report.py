"""Tables and plots from the run summaries in bench/results/editing (python -m bench.editing.report).

Rewrites the block between the markers in docs/benchmarks.md and draws two PNGs: ES/PS/NS against N for
every system, and median time per edit on a log scale.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bench.tables import fmt, ms, table  # noqa: E402
from models.paths import DEFAULT_LLM  # noqa: E402
from models.scope import DEFAULT_SCOPE_THRESHOLD  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results" / "editing"
DOC = ROOT / "docs" / "benchmarks.md"
DEFAULT_LLM_NAME = Path(DEFAULT_LLM).name  # runs record their LLM's file name as llm_name (older runs: none)
BEGIN, END = "<!-- tables:begin (python -m bench.editing.report) -->", "<!-- tables:end -->"
ORDER = ("unedited", "oracle", "larimar-context", "larimar-latent", "larimar-hybrid", "larimar-http", "rag",
         "rag-threshold", "rag-bias", "rag-threshold-bias", "ft-l", "rome", "grace")


def load(results: Path) -> list[dict]:
    runs = [json.loads(p.read_text()) for p in sorted(results.rglob("*.json"))]
    runs = [r for r in runs if r["protocol"] == "forgetting" or r.get("n_cases")]  # runs cut before any case
    return sorted(runs, key=lambda r: (r["dataset"], r.get("schema", "flat"), r["protocol"],
                                       ORDER.index(r["system"]) if r["system"] in ORDER else 99, facts_in_memory(r)))


def label(r: dict) -> str:
    """The system, with what a run set apart from the paper's service: scope threshold, answer bias, mention
    check, and the LLM where it is not the default."""
    cfg = r.get("service_config", {})
    t, bias, llm = cfg.get("scope_threshold"), cfg.get("answer_bias"), r.get("llm_name") or DEFAULT_LLM_NAME
    return (r["system"] + (f", scope {t}" if t not in (None, DEFAULT_SCOPE_THRESHOLD) else "")
            + (f", answer bias {bias:g}" if bias else "")
            + (f", mention check ({cfg.get('mention_rule', 'any word')})" if cfg.get("scope_requires_mention") else "")
            + (f", relation gate {gate['threshold']:g}" if (gate := cfg.get("relation_gate")) else "")
            + (f" ({llm})" if llm != DEFAULT_LLM_NAME else ""))


def facts_in_memory(r: dict) -> int:
    return r["n_edits"] + r.get("filler", {}).get("facts", 0)


def n_label(r: dict) -> str:
    n = f"{r['n_edits']} of {r['n_edits_asked']} (budget)" if r.get("n_edits_asked") else str(r["n_edits"])
    return n + (f" + {r['filler']['facts']:,} filler" if r.get("filler") else "")


def device(r: dict) -> str:
    return r.get("device") or ("H200" if "cuda_mib" in r.get("peak_memory", {}) else "CPU")


def quality_table(runs: list[dict], dataset: str, schema: str = "flat") -> str:
    if dataset == "zsre":
        head = "| system | protocol | N | rel (src) | gen (rephrase) | loc | score | gen. acc. src / rephrase | " \
               "time per edit | peak RSS | cases | device |"
        cols = ("rel", "gen", "loc", "score")
    else:
        head = "| system | protocol | N | ES | PS | NS | score | ES / PS / NS magnitude | " \
               "gen. acc. rewrite / paraphrase / neighbour same | time per edit | peak RSS | cases | device |"
        cols = ("ES", "PS", "NS", "score")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in runs:
        if r["dataset"] != dataset or r.get("schema", "flat") != schema or r["protocol"] == "forgetting":
            continue
        main = " | ".join(fmt(r.get(c)) for c in cols)
        if dataset == "zsre":
            extra = f"{fmt(r.get('gen_rewrite'))} / {fmt(r.get('gen_paraphrase'))}"
        else:
            extra = f"{fmt(r.get('EM'))} / {fmt(r.get('PM'))} / {fmt(r.get('NM'))} | " \
                    f"{fmt(r.get('gen_rewrite'))} / {fmt(r.get('gen_paraphrase'))} / {fmt(r.get('gen_neighbour_same'))}"
        rss = r.get("peak_memory", {}).get("rss_mib")
        lines.append(f"| {label(r)} | {r['protocol']} | {n_label(r)} | {main} | {extra} | "
                     f"{ms(r.get('edit_s_median'))} | {fmt(rss, 0)} MiB | {r.get('n_cases')}"
                     f"{' (partial)' if r.get('partial') else ''} | {device(r)} |")
    return "\n".join(lines)


def scope_table(runs: list[dict]) -> str:
    head = ["system", "dataset", "protocol", "N", "rewrite in scope", "paraphrase in scope", "neighbour kept out",
            "paraphrase fact retrieved", "paraphrase failures: out of scope / not retrieved / LLM ignored"]
    rows = []
    for r in runs:
        if "scope" not in r:
            continue
        s, f = r["scope"], r.get("paraphrase_failures", {})
        kept_out = None if s.get("neighbour") is None else 100 - s["neighbour"]
        causes = " / ".join(str(f.get(k, "–")) for k in ("out_of_scope", "not_retrieved", "llm_ignored_fact"))
        rows.append([label(r), r["dataset"], r["protocol"], n_label(r), fmt(s.get("rewrite")),
                     fmt(s.get("paraphrase")), fmt(kept_out), fmt(r.get("retrieved", {}).get("paraphrase")),
                     causes if f else "–"])
    return table(head, rows)


def dev_table(dev: Path) -> str:
    """The development runs that chose the default decoder and its scope threshold."""
    head = ["decoder", "scope threshold", "N written / evaluated", "ES", "PS", "NS", "score",
            "gen. acc. rewrite / paraphrase / neighbour same", "paraphrase in scope", "neighbour in scope"]
    runs = [json.loads(p.read_text()) for p in sorted(dev.rglob("*.json"))]
    key = {s: i for i, s in enumerate(ORDER)}
    runs.sort(key=lambda r: (key.get(r["system"], 99), r.get("service_config", {}).get("scope_requires_mention", False),
                             r.get("service_config", {}).get("scope_threshold", 0)))
    rows = [[label(r), r.get("service_config", {}).get("scope_threshold", "–"), f"{r['n_edits']} / {r['n_cases']}",
             *(fmt(r.get(k)) for k in ("ES", "PS", "NS", "score")),
             " / ".join(fmt(r.get(k)) for k in ("gen_rewrite", "gen_paraphrase", "gen_neighbour_same")),
             fmt(r.get("scope", {}).get("paraphrase")), fmt(r.get("scope", {}).get("neighbour"))] for r in runs]
    return table(head, rows)


def forgetting_table(runs: list[dict]) -> str:
    lines = ["| system | N written | before: ES of the to-be-forgotten | forget one: its ES / kept ES | "
             "forget half: forgotten ES / kept ES | unedited ES (same facts) | forget time per fact |",
             "|---|---|---|---|---|---|---|"]
    for r in runs:
        if r["protocol"] != "forgetting":
            continue
        g = r["forgetting"]
        es = "ES"
        lines.append(f"| {r['system']} | {g['n_written']} | {fmt(g['before']['to_forget'][es])} | "
                     f"{fmt(g['forget_one']['forgotten'][es])} / {fmt(g['forget_one']['kept'][es])} | "
                     f"{fmt(g['forget_half']['forgotten'][es])} / {fmt(g['forget_half']['kept'][es])} | "
                     f"{fmt(g['unedited']['forgotten_sample'][es])} | {ms(g['forget_half']['forget_s_per_fact'])} |")
    return "\n".join(lines)


def speed_table(runs: list[dict]) -> str:
    """Median time per edit, per machine, taken from the largest run of each system there."""
    lines = ["| machine | system | median time per edit | from run | peak RSS | peak CUDA |",
             "|---|---|---|---|---|---|"]
    best: dict[tuple[str, str], dict] = {}
    for r in runs:
        if r.get("edit_s_median") and r["system"] not in ("unedited", "oracle"):
            key = (r["machine"], r["system"])
            if key not in best or r.get("edits_timed", 0) > best[key].get("edits_timed", 0):
                best[key] = r
    for (m, system), r in sorted(best.items(), key=lambda kv: (kv[0][0], kv[1]["edit_s_median"])):
        mem = r.get("peak_memory", {})
        lines.append(f"| {m} | {system} | {ms(r['edit_s_median'])} | {r['dataset']} {r['protocol']} "
                     f"N={r['n_edits']} | {fmt(mem.get('rss_mib'), 0)} MiB | {fmt(mem.get('cuda_mib'), 0)} MiB |")
    return "\n".join(lines)


def plot_quality(runs: list[dict], path: Path) -> None:
    series: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in runs:
        if r["dataset"] == "counterfact" and r.get("schema", "flat") == "flat" and r["protocol"] != "forgetting":
            where = "" if device(r) == "CPU" or r["n_edits"] >= 1000 or "N=1000" in device(r) else ", GPU run"
            series[(label(r), r["protocol"] + where)].append(r)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True)
    for ax, metric in zip(axes, ("ES", "PS", "NS"), strict=True):
        for (system, protocol), rs in sorted(series.items()):
            rs = sorted(rs, key=facts_in_memory)
            ax.plot([facts_in_memory(r) for r in rs], [r.get(metric) for r in rs], marker="o",
                    linestyle="-" if protocol == "sequential" else "--", label=f"{system} ({protocol})")
        ax.set_xscale("log")
        ax.set_title(f"CounterFact {metric} (reported set)")
        ax.set_xlabel("facts in memory (N edits, + filler)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("%")
    axes[-1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_speed(runs: list[dict], path: Path) -> None:
    best: dict[str, float] = {}  # "system (machine)" -> median seconds, from its largest run
    size: dict[str, int] = {}
    for r in runs:
        t = r.get("edit_s_median")
        if t and r["system"] not in ("unedited", "oracle"):
            # where the timed edits ran: the process that wrote the summary (a resumed run replays its edits)
            where = "H200" if "cuda_mib" in r.get("peak_memory", {}) else "CPU"
            label = f"{r['system']} ({where}{', shared' if 'sharing' in device(r) else ''})"
            if r.get("edits_timed", 0) > size.get(label, -1):
                best[label], size[label] = t, r.get("edits_timed", 0)
    fig, ax = plt.subplots(figsize=(9, 3.5))
    names = sorted(best, key=lambda s: best[s])
    ax.barh(names, [best[s] * 1e3 for s in names])
    ax.set_xscale("log")
    ax.set_xlabel("median wall time per edit (ms, log scale)")
    for i, s in enumerate(names):
        ax.text(best[s] * 1e3, i, f" {ms(best[s])}", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--doc", type=Path, default=DOC)
    args = ap.parse_args()
    runs = load(args.results)
    machines = sorted({r["machine"] for r in runs})
    block = "\n\n".join([
        "Machines: " + "; ".join(f"`{m}`" for m in machines),
        "### CounterFact (flat schema: 1 paraphrase, 1 neighbourhood prompt per case)",
        quality_table(runs, "counterfact"),
        "### CounterFact (ROME schema: 2 paraphrases, 10 neighbourhood prompts per case)",
        quality_table(runs, "counterfact", "rome"),
        "### zsRE",
        quality_table(runs, "zsre"),
        "### Development runs that chose the default decoder (CounterFact case_id 2000-2999)",
        dev_table(args.results.parent / "editing-dev"),
        "### The service's scope detector on its own",
        scope_table(runs),
        "### Forgetting",
        forgetting_table(runs),
        "### Time per edit",
        speed_table(runs),
        "![ES/PS/NS against N](../bench/results/editing/quality_vs_n.png)\n\n"
        "![time per edit](../bench/results/editing/time_per_edit.png)",
    ])
    doc = args.doc.read_text() if args.doc.exists() else f"# Editing benchmarks\n\n{BEGIN}\n{END}\n"
    head, rest = doc.split(BEGIN)
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    args.doc.write_text(f"{head}{BEGIN}\n{block}\n{END}{rest.split(END, 1)[1]}")
    plot_quality(runs, args.results / "quality_vs_n.png")
    plot_speed(runs, args.results / "time_per_edit.png")


if __name__ == "__main__":
    main()
