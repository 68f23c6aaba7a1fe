"""Editing quality and speed of this service and its peers, in one harness (see docs/benchmarks.md).

    python -m bench.editing --system larimar-context --protocol sequential --n 10 100 1000
    python -m bench.editing --system rome --protocol single --n 10 100
    python -m bench.editing --dataset zsre --system grace --protocol sequential --n 10 100 500
    python -m bench.editing --system larimar-context --protocol forgetting --n 512 1024
    python -m bench.editing --url http://localhost:8000 --protocol sequential --n 100   # the live service

Systems: unedited, oracle, larimar-context / -latent / -hybrid (the service in process with each decoder),
ft-l, rome, grace, rag / rag-threshold / rag-bias / rag-threshold-bias (retrieval into the prompt, the pipeline
users would build instead: ``bench.baselines.rag``); --url runs the running service over HTTP. One system per
process, so its peak memory is its own. Runs resume: cases already in a run's .cases.jsonl are skipped.
Reported sets (CounterFact case_id < 2000, zsRE eval 0-499) are the default; --split dev is for tuning.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from statistics import median

import torch

from bench.baselines.rag import SYSTEMS as RAG_SYSTEMS
from bench.baselines.rag import pipeline
from bench.editing.metrics import Reference, reference, summarize
from bench.editing.protocols import CaseLog, forgetting, peak_memory_mib, sequential, single
from bench.editing.systems import Http, Oracle, Retrieval, Service, System, TextSystem, WeightEdited
from models.device import describe_machine
from models.latent import WEIGHTS
from models.loading import load_llm, load_models
from models.scope import MENTION_RULE
from service.settings import Settings
from training import data as data_mod

log = logging.getLogger("bench.editing")
SYSTEMS = ("unedited", "oracle", "larimar-context", "larimar-latent", "larimar-hybrid", "ft-l", "rome", "grace",
           *RAG_SYSTEMS)
RESULTS = Path(__file__).resolve().parents[1] / "results" / "editing"


def make_system(name: str, settings: Settings, batch: int) -> TextSystem:
    """The system under test, with the models it needs (the peers and baselines need no encoder)."""
    if name.startswith("larimar-"):
        return Service(load_models(settings), batch=batch, decoder=name.removeprefix("larimar-"))
    if name in RAG_SYSTEMS:
        models = load_models(settings)
        return Retrieval(models.llm, pipeline(name, models.encoder, settings), batch)
    llm = load_llm(settings)
    if name == "unedited":
        return TextSystem(llm, batch)
    if name == "oracle":
        return Oracle(llm, batch)
    if name == "ft-l":
        from bench.baselines.ft_l import FineTuneL

        # The reported runs used a 2e-3 bound, the best on dev when they started; the module's later dev sweep
        # prefers 5e-3 (its default). Rerunning FT-L with the default is left to the next round.
        return WeightEdited(llm, FineTuneL(llm, layer=2, epsilon=2e-3), batch)
    if name == "rome":
        from bench.baselines.rome import Rome

        return WeightEdited(llm, Rome(llm, settings.model_cache_dir / "rome-stats"), batch)
    if name == "grace":
        from bench.baselines.grace import Grace

        return WeightEdited(llm, Grace(llm), batch)  # defaults chosen on dev: layer 16's MLP output, radius 8
    raise ValueError(name)


def cached_reference(unedited: System, cases: list, gen_tokens: int, tag: str, cache: Path) -> Reference:
    """The unedited model's neighbourhood answers, computed once per (model, prompts, length) and cached."""
    key = hashlib.sha256(json.dumps([tag, gen_tokens, [c.neighbours for c in cases]]).encode()).hexdigest()[:16]
    path = cache / f"reference-{key}.json"
    if path.exists():
        raw = json.loads(path.read_text())
        return Reference(raw["answers"], raw["predicted"])
    ref = reference(unedited, cases, gen_tokens)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # parallel runs may race to fill the same cache entry
    tmp.write_text(json.dumps({"answers": ref.answers, "predicted": ref.predicted}))
    os.replace(tmp, path)
    return ref


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--system", choices=SYSTEMS, default="larimar-context")
    ap.add_argument("--url", help="run the protocol against a running service instead of in process")
    ap.add_argument("--api-key")
    ap.add_argument("--dataset", choices=("counterfact", "zsre"), default="counterfact")
    ap.add_argument("--schema", choices=("flat", "rome"), default="flat",
                    help="CounterFact: flat (all cases, 1 paraphrase + 1 neighbour) or rome (1,129 cases, 2 + 10)")
    ap.add_argument("--split", choices=("report", "dev"), default="report")
    ap.add_argument("--protocol", choices=("single", "sequential", "forgetting"), default="sequential")
    ap.add_argument("--n", type=int, nargs="+", default=[10, 100, 1000], help="edits per run")
    ap.add_argument("--limit", type=int, help="evaluate at most this many cases per run (spread evenly)")
    ap.add_argument("--gen-tokens", type=int, default=16)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--filler", type=int, default=0,
                    help="sequential: facts written before the edits (training.data.filler_facts: never reported "
                         "records), so the edits are evaluated in a memory of N + filler facts")
    ap.add_argument("--forget-sample", type=int, default=100)
    ap.add_argument("--data", type=Path, default=data_mod.DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--budget-s", type=float, default=math.inf,
                    help="stop starting new cases after this many seconds; summaries then say partial")
    args = ap.parse_args()
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    deadline = time.time() + args.budget_s
    settings = Settings(device=args.device)
    if args.url:
        name = "larimar-http"
        client = Http.connect(args.url, args.api_key)
        system: System = Http(client)
        unedited: System = Http(client, memory_mode="off")
        tag = f"http:{args.url}"
    else:
        system = make_system(args.system, settings, args.batch)
        unedited, name, tag = TextSystem(system.llm, args.batch), args.system, settings.llm
    pool = data_mod.load(args.dataset, args.data, args.split, args.schema)
    # Writing more edits than the split holds (the service's N = 10,000) continues into the next split's cases;
    # only cases of the chosen split are ever evaluated.
    extra = data_mod.load(args.dataset, args.data, "dev" if args.split == "report" else "train", args.schema) \
        if max(args.n) > len(pool) and args.dataset == "counterfact" else []
    pool_ids = {c.case_id for c in pool}
    filler = data_mod.filler_facts(args.data, args.filler) if args.filler else []
    if filler and args.protocol != "sequential":
        ap.error("--filler is for the sequential protocol")
    scale = f"-filler{args.filler}" if args.filler else ""
    args.out.mkdir(parents=True, exist_ok=True)
    prefix = f"{args.dataset}{'-rome' if args.schema == 'rome' else ''}-{args.split}-{name}"
    for n in args.n:
        edits = (pool + extra)[:n]
        evaluable = [c for c in edits if c.case_id in pool_ids]
        step = max(1, len(evaluable) // args.limit) if args.limit else 1
        eval_cases = evaluable[::step][: args.limit] if args.limit else evaluable
        log_path = args.out / (f"{prefix}-single.cases.jsonl" if args.protocol == "single"
                               else f"{prefix}-{args.protocol}-n{n}{scale}.cases.jsonl")
        done = CaseLog(log_path).done if args.protocol != "forgetting" else set()
        # Only the cases still to evaluate need the unedited model's answers (a resumed run skips the rest).
        todo = [c for c in eval_cases if c.case_id not in done] if args.protocol != "forgetting" else []
        ref = cached_reference(unedited, todo, args.gen_tokens, tag, settings.model_cache_dir / "bench")
        summary: dict = {"system": name, "dataset": args.dataset, "schema": args.schema, "split": args.split,
                         "protocol": args.protocol, "n_edits": n, "gen_tokens": args.gen_tokens,
                         "case_ids": [edits[0].case_id, edits[-1].case_id], "machine": describe_machine(),
                         "llm": settings.llm if not args.url else args.url,
                         "llm_name": Path(settings.llm).name if not args.url else None}
        if filler:
            summary["filler"] = {"facts": len(filler), "sources": data_mod.FILLER_SOURCES}
        if isinstance(system, WeightEdited | Retrieval):
            summary["method_config"] = system.config()
        elif isinstance(system, Service):
            summary["service_config"] = {"slots": system.settings.memory_slots,
                                         "scope_threshold": system.editor.rule.threshold,
                                         "recalled_facts": system.settings.recalled_facts,
                                         "decoder": system.decoder.name,
                                         "answer_bias": system.settings.answer_bias,
                                         "scope_requires_mention": system.settings.scope_requires_mention,
                                         "mention_rule": MENTION_RULE,
                                         "relation_gate": system.editor.rule.relation.describe()
                                         if system.editor.rule.relation else None,
                                         } | adapter_info(system)
        if args.protocol == "forgetting":
            summary["forgetting"] = forgetting(system, edits, unedited, args.forget_sample)
        elif args.protocol == "single":
            # Single edits are independent, so every N shares one log: N=10 is the first 10 cases of N=1000.
            cases_log = CaseLog(log_path)
            single(system, eval_cases, ref, args.gen_tokens, cases_log, deadline)
            wanted = {c.case_id for c in eval_cases}
            records = [r for r in cases_log.records if r["case_id"] in wanted]
            times = [r["edit_s"] for r in records]
            summary |= summarize(records, args.dataset) | _timing(times)
        else:
            cases_log = CaseLog(log_path)
            times = sequential(system, edits, eval_cases, ref, args.gen_tokens, cases_log, deadline=deadline,
                               filler=filler)
            summary |= summarize(cases_log.records, args.dataset) | _timing(times)
            if len(times) < n:  # the budget ran out: this is the largest N the system reached
                summary |= {"n_edits": len(times), "n_edits_asked": n}
        if args.protocol != "forgetting":  # fewer cases evaluated than were edited (a budget or an interrupt)
            edited = len(eval_cases) if args.protocol == "single" else len(times)
            summary["partial"] = summary["n_cases"] < min(len(eval_cases), edited)
        summary["peak_memory"] = peak_memory_mib()
        stem = f"{prefix}-{args.protocol}-n{n}{scale}"
        (args.out / f"{stem}.json").write_text(json.dumps(summary, indent=1))
        log.info("%s: %s", stem, json.dumps({k: v for k, v in summary.items() if k not in ("machine", "llm")}))


def adapter_info(system: Service) -> dict:
    """Which trained adapter a latent run used (its directory and weights' hash), so a row names its model."""
    path = system.choice.adapter
    if path is None:
        return {}
    return {"adapter": str(path), "adapter_sha256": hashlib.sha256((path / WEIGHTS).read_bytes()).hexdigest()[:12]}


def _timing(times: list[float]) -> dict:
    return {"edit_s_median": round(median(times), 5) if times else None, "edits_timed": len(times)}


if __name__ == "__main__":
    main()
