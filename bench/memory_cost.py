"""What memory costs per write, forget and query: the service's episodic memory against the retrieval baseline.

    python -m bench.memory_cost [--sizes 1000 10000 100000] [--ops 100] [--threads 1]

For each size N, each system first holds N facts (``training.data.filler_facts``: CounterFact dev and train
first, the hardest neighbours), written in batches of 256; then ``--ops`` single facts (CounterFact reported
cases' sentences) are written one at a time, the same prompts are recalled (memory auto: everything before
the LLM, which both systems share: the service's scope rule, mention check, relation gate, readout and lookup;
the baseline's encoding and index search), and the facts are forgotten one at a time. The service runs in
process on an embedded store (the quick start's), so a write includes its durable SQLite transaction and a
forget its erasure; the baseline keeps nothing on disk. Medians and p99 in ms; results in
``bench/results/memory_cost.json``. The two systems run one after the other, each timed alone; run it on a
quiet machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from bench.baselines.rag import RAG_THRESHOLD, Rag
from models.device import describe_machine
from models.loading import LoadedModels, load_models
from service.app import build_editor
from service.settings import Settings
from training.data import DEFAULT_DATA, counterfact, filler_facts

RESULTS = Path(__file__).resolve().parent / "results" / "memory_cost.json"
MEMORY = "cost"


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - t0)


def stats(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms)
    return {"p50": round(statistics.median(ms), 2), "p99": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 2)}


def service_cost(models: LoadedModels, filler: list[str], facts: list[str], prompts: list[str]) -> dict:
    settings = Settings(store_url=f"file://{tempfile.mkdtemp(prefix='larimar-cost-')}")
    editor = build_editor(settings, models)
    for i in tqdm(range(0, len(filler), 256), desc="service filler", unit="batch"):
        editor.add_facts(MEMORY, [(t, None) for t in filler[i : i + 256]])
    ids: list[str] = []
    write = [timed(lambda t=t: ids.append(editor.add_facts(MEMORY, [(t, None)]).facts[0].id)) for t in facts]
    recall = [timed(lambda p=p: editor.recall(MEMORY, p, "auto")) for p in prompts]
    forget = [timed(lambda i=i: editor.forget(MEMORY, i)) for i in ids]
    editor.delete_memory(MEMORY)
    return {"write": stats(write), "recall": stats(recall), "forget": stats(forget)}


def rag_cost(models: LoadedModels, filler: list[str], facts: list[str], prompts: list[str]) -> dict:
    rag = Rag(models.encoder, threshold=RAG_THRESHOLD)
    for i in tqdm(range(0, len(filler), 256), desc="rag filler", unit="batch"):
        rag.add(filler[i : i + 256])
    ids: list[int] = []
    write = [timed(lambda t=t: ids.extend(rag.add([t]))) for t in facts]
    recall = [timed(lambda p=p: rag.recall(p)) for p in prompts]
    forget = [timed(lambda i=i: rag.forget(i)) for i in ids]
    return {"write": stats(write), "recall": stats(recall), "forget": stats(forget)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--ops", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = load_models(Settings())
    cases = counterfact(args.data, "report")[: args.ops]
    facts, prompts = [c.fact for c in cases], [c.paraphrases[0] for c in cases]
    rows = []
    for n in args.sizes:
        filler = filler_facts(args.data, n)
        row = {"facts": n, "larimar": service_cost(models, filler, facts, prompts),
               "rag-threshold": rag_cost(models, filler, facts, prompts)}
        print(json.dumps(row))
        rows.append(row)
        args.out.write_text(json.dumps({"machine": describe_machine(), "threads": args.threads, "ops": args.ops,
                                        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows},
                                       indent=1))  # after each size: a long run cut short keeps what it measured


if __name__ == "__main__":
    main()
