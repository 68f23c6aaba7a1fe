"""CounterFact editing quality through the service's own editor: ES / PS / NS, sequential edits in one memory.

All N edits go into one memory (the hard, sequential setting), then every record is scored with the memory
("auto": the scope detector decides) and without it (the unedited LLM). Metrics as in larimar.md section 7:
ES / PS = share of rewrite / paraphrase prompts where the new target beats the true one by mean token
log-likelihood; NS = share of neighbourhood prompts where the true answer still beats the new one.

    python bench/counterfact_eval.py --split report --n 500     # case_id < 2000 (the reported range)
    python bench/counterfact_eval.py --split dev --n 200        # case_id >= 2000 (for tuning)
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import platform
import tempfile
import time
from pathlib import Path
from statistics import harmonic_mean

import torch
from tqdm import tqdm

from service.app import build_editor, load_models
from service.settings import Settings

log = logging.getLogger("counterfact_eval")
SPLITS = ("counterfact-edit.json.gz", "counterfact-train.json.gz", "counterfact-val.json.gz")


def load_records(data: Path, split: str, n: int) -> list[dict]:
    records = []
    for name in SPLITS:
        with gzip.open(data / name, "rt", encoding="utf-8") as f:
            records += json.load(f)
    keep = [r for r in records if (r["case_id"] < 2000) == (split == "report")]
    return sorted(keep, key=lambda r: r["case_id"])[:n]


def prefers_first(scores: list) -> bool:  # noqa: ANN001 - ContinuationScore list
    return scores[0].mean_logprob > scores[1].mean_logprob


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--split", choices=("report", "dev"), default="report")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s: %(message)s")

    records = load_records(args.data, args.split, args.n)
    settings = Settings(store_url=f"file://{tempfile.mkdtemp(prefix='cf-eval-')}")
    editor = build_editor(settings, load_models(settings))

    t0 = time.perf_counter()
    for r in tqdm(records, desc="write edits (one at a time)"):
        editor.add_facts("cf", [(f"{r['prompt']} {r['target_new']}.", {"case_id": r["case_id"]})])
    write_s = time.perf_counter() - t0

    hits = {k: 0 for k in ("es", "ps", "ns", "es0", "ps0", "ns0", "scope_rw", "scope_pp", "scope_nb")}
    for r in tqdm(records, desc="score"):
        new, true = r["target_new"], r["ground_truth"]
        for key, prompt, cands, want_first in (
            ("es", r["prompt"], [new, true], True),
            ("ps", r["rephrase_prompt"], [new, true], True),
            ("ns", r["locality_prompt"], [r["locality_ground_truth"], new], True),
        ):
            edited = editor.score("cf", prompt, cands, "auto")
            plain = editor.score("cf", prompt, cands, "off")
            hits[key] += prefers_first(edited.scores) == want_first
            hits[key + "0"] += prefers_first(plain.scores) == want_first
            hits["scope_" + {"es": "rw", "ps": "pp", "ns": "nb"}[key]] += edited.in_scope
    n = len(records)
    pct = {k: round(100 * v / n, 1) for k, v in hits.items()}
    result = {
        "split": args.split, "n": n, "case_ids": [records[0]["case_id"], records[-1]["case_id"]],
        "edited": {"ES": pct["es"], "PS": pct["ps"], "NS": pct["ns"],
                   "score": round(harmonic_mean([max(pct[k], 1e-9) for k in ("es", "ps", "ns")]), 1)},
        "unedited": {"ES": pct["es0"], "PS": pct["ps0"], "NS": pct["ns0"]},
        "in_scope_pct": {"rewrite": pct["scope_rw"], "paraphrase": pct["scope_pp"], "neighbourhood": pct["scope_nb"]},
        "write_ms_per_edit": round(1e3 * write_s / n, 2),
        "settings": {"llm": settings.llm, "encoder": settings.encoder, "slots": settings.memory_slots,
                     "scope_threshold": settings.scope_threshold},
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads, device {settings.resolved_device()}",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"counterfact_{args.split}_{n}.json"
    path.write_text(json.dumps(result, indent=1))
    log.info("%s", json.dumps(result))


if __name__ == "__main__":
    main()
