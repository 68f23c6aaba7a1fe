"""In process, on the service's own editor: where a write's time goes, restore, and a query's overhead."""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from bench.processes import RedisServer
from bench.service_bench.cpu import CpuWatch, Quiet, stats
from models.loading import LoadedModels, load_models
from models.sentences import split_sentences
from service.app import build_editor
from service.settings import Settings
from service.store import open_store
from training.data import Case

log = logging.getLogger("service_bench")


def write_breakdown(settings: Settings, models: LoadedModels, stores: dict[str, str],
                    texts: list[str]) -> list[dict[str, Any]]:
    """Single-fact ``Editor.add_facts`` calls split by the editor's own timings; one editor per store, interleaved."""
    editors = {k: build_editor(settings.model_copy(update={"store_url": url}), models) for k, url in stores.items()}
    parts = ("encode", "store_append", "apply", "compaction")
    rows: dict[str, list[dict[str, float]]] = {k: [] for k in editors}
    try:
        for e in editors.values():
            e.add_facts("breakdown", [(texts[0], None)])  # creates the memory
        with CpuWatch() as cpu:
            for i, t in enumerate(tqdm(texts[1:], desc="write breakdown", leave=False)):
                order = list(editors.items())
                for k, e in order if i % 2 == 0 else order[::-1]:
                    timings = e.add_facts("breakdown", [(t, None)]).timings_ms
                    row = {p: timings.get(p, 0.0) for p in parts}
                    row["other"] = timings["total"] - sum(row.values())  # validation, waiting for the lock
                    row["total"] = timings["total"]
                    rows[k].append(row)
    finally:
        for e in editors.values():
            e.close()
    out = []
    for k, rs in rows.items():
        keys = rs[0].keys()
        out.append({"label": k, "median_ms": {p: float(np.median([r[p] for r in rs])) for p in keys},
                    "mean_ms": {p: float(np.mean([r[p] for r in rs])) for p in keys},
                    "compactions": sum(1 for r in rs if r["compaction"] > 0),
                    "max_compaction_ms": max(r["compaction"] for r in rs), "n": len(rs),
                    "other_processes_cores": cpu.foreign_cores})
        log.info("write breakdown (%s), median ms: %s", k, {p: round(v, 2) for p, v in out[-1]["median_ms"].items()})
    return out


def encode_threads(encoder: Any, texts: list[str], reps: int = 40) -> dict[str, Any]:
    """Encoding one fact with torch's default intra-op threads vs one, on the main thread and on a worker thread
    of anyio's pool (where FastAPI runs sync routes such as the write)."""
    import anyio
    import anyio.to_thread

    default = torch.get_num_threads()
    variants = [(n, where) for n in (default, 1) for where in ("main", "worker")]
    lat: dict[tuple[int, str], list[float]] = {v: [] for v in variants}

    def one(text: str) -> float:
        t0 = time.perf_counter()
        encoder.encode([text])
        return (time.perf_counter() - t0) * 1e3

    async def loop() -> None:
        # in blocks, as a server sees them (calls in a row, from worker threads only), not call by call:
        # what runs in between changes which OpenMP threads are awake. Two rounds, the second reversed.
        for rnd in range(2):
            for n, where in variants if rnd == 0 else variants[::-1]:
                torch.set_num_threads(n)
                for i in range(reps // 2 + 3):
                    text = texts[i % len(texts)]
                    ms = one(text) if where == "main" else await anyio.to_thread.run_sync(one, text)
                    if i >= 3:
                        lat[(n, where)].append(ms)

    try:
        with CpuWatch() as cpu:
            anyio.run(loop)
    finally:
        torch.set_num_threads(default)
    out = {"default_threads": default, "other_processes_cores": cpu.foreign_cores,
           "default": stats(lat[(default, "main")]), "one": stats(lat[(1, "main")]),
           "default_worker": stats(lat[(default, "worker")]), "one_worker": stats(lat[(1, "worker")])}
    log.info("encode one fact, median ms: %d threads %.2f (main) / %.2f (worker); 1 thread %.2f / %.2f", default,
             out["default"]["median"], out["default_worker"]["median"], out["one"]["median"],
             out["one_worker"]["median"])
    return out


def restore_time(settings: Settings, models: LoadedModels, store_dir: Path) -> dict[str, Any]:
    store = open_store(f"file://{store_dir}")
    stored = store.load("bench")
    store.close()
    t0 = time.perf_counter()
    editor = build_editor(settings.model_copy(update={"store_url": f"file://{store_dir}"}), models)
    took = time.perf_counter() - t0
    facts = editor.memory("bench").facts
    editor.close()
    return {"seconds": took, "facts": facts, "log_entries_replayed": len(stored.log),
            "snapshot_bytes": len(stored.checkpoint.state) if stored.checkpoint else 0}


def query_overhead(settings: Settings, models: LoadedModels, work: Path, cases: list[Case], n_facts: int,
                   n_prompts: int, tokens: int) -> dict[str, Any]:
    """Memory "auto" vs the plain LLM on the bare prompt, both generating exactly ``tokens`` tokens.

    The paraphrases of the written facts are the queries. The first ``n_prompts`` that the scope detector
    takes in scope are measured in full (recall, both generations, both prefills); an out-of-scope query
    runs the plain LLM unchanged, so its overhead is the scope decision alone. Generation goes through the
    decoder's batched path with a batch of one, as the service answers a query.
    """
    editor = build_editor(settings.model_copy(update={"store_url": f"file://{work / 'store-query'}"}), models)
    editor.add_facts("query", [(c.fact, None) for c in cases[:n_facts]])
    llm, decoder = editor.llm, editor.decoder

    def prefill_ms(text: str) -> float:
        ids = llm.ids(text)
        ts = []
        with torch.inference_mode():
            for _ in range(3):
                t0 = time.perf_counter()
                llm.model(input_ids=ids, attention_mask=torch.ones_like(ids))
                ts.append((time.perf_counter() - t0) * 1e3)
        return float(np.median(ts))

    def gen_ms(prompt: str, readout: Any) -> tuple[float, int, str]:
        t0 = time.perf_counter()
        (g,) = decoder.generate_batch(llm, [(prompt, readout)], tokens, tokens)
        return (time.perf_counter() - t0) * 1e3, g.new_tokens, g.text

    warm = cases[0].paraphrases[0]  # warm-up: first forward passes of both models
    gen_ms(warm, editor.recall("query", warm, "auto").readout)
    gen_ms(warm, None)

    # the scope decision for every paraphrase (cheap), timed
    scoped = []
    for r in cases[:n_facts]:
        prompt = r.paraphrases[0]
        t0 = time.perf_counter()
        editor.encoder.encode(split_sentences(prompt))
        encode_ms = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        rec = editor.recall("query", prompt, "auto")
        scoped.append((r, rec, encode_ms, (time.perf_counter() - t0) * 1e3))
    out_recall = [ms for _, rec, _, ms in scoped if not rec.in_scope]

    rows = []
    chosen = [s for s in scoped if s[1].in_scope][:n_prompts]
    with CpuWatch() as cpu:
        for i, (r, rec, encode_ms, recall_ms) in enumerate(tqdm(chosen, desc="query overhead", leave=False)):
            prompt = r.paraphrases[0]
            plain_text = decoder.generation_text(llm, prompt, None)
            mem_text = decoder.generation_text(llm, prompt, rec.readout)
            order = [("plain", None), ("memory", rec.readout)]
            if i % 2:
                order.reverse()
            runs: dict[str, list[tuple[float, int, str]]] = {"plain": [], "memory": []}
            for k, ro in order + order[::-1]:  # ABBA: neither side always runs first or on a warmer cache
                runs[k].append(gen_ms(prompt, ro))
            gen = {k: min(v) for k, v in runs.items()}  # the least disturbed of the two runs of each side
            assert all(g[1] == tokens for v in runs.values() for g in v), "every run must generate the same count"
            pre_plain, pre_mem = prefill_ms(plain_text), prefill_ms(mem_text)
            extra = recall_ms + gen["memory"][0] - gen["plain"][0]
            rows.append({
                "right_fact_first": bool(rec.facts) and rec.facts[0].text == r.fact,
                "answer_has_new_target": r.request.target_new.lower() in gen["memory"][2].lower(),
                "plain_answer_has_new_target": r.request.target_new.lower() in gen["plain"][2].lower(),
                "facts_in_prompt": len(rec.facts),
                "prompt_tokens_plain": int(llm.ids(plain_text).shape[1]),
                "prompt_tokens_memory": int(llm.ids(mem_text).shape[1]),
                "encode_ms": encode_ms,
                "scope_ms": rec.timings_ms.get("encode", 0.0) + rec.timings_ms.get("scope", 0.0),
                "read_ms": rec.timings_ms.get("read", 0.0),
                "recall_ms": recall_ms,
                "gen_plain_ms": gen["plain"][0],
                "gen_memory_ms": gen["memory"][0],
                "prefill_plain_ms": pre_plain,
                "prefill_memory_ms": pre_mem,
                "extra_prefill_ms": pre_mem - pre_plain,
                "extra_decode_ms": gen["memory"][0] - gen["plain"][0] - (pre_mem - pre_plain),
                "overhead_ms": extra,
                "overhead_pct": 100.0 * extra / gen["plain"][0],
            })
    editor.close()
    if not rows:
        raise RuntimeError("no paraphrase was in scope: nothing to measure")
    med = {k: float(np.median([r[k] for r in rows])) for k, v in rows[0].items() if not isinstance(v, bool)}
    pooled = 100.0 * sum(r["overhead_ms"] for r in rows) / sum(r["gen_plain_ms"] for r in rows)
    out_of_scope = None
    if out_recall:
        out_of_scope = {"n": len(out_recall), "recall_ms": float(np.median(out_recall)),
                        "overhead_pct": 100.0 * float(np.median(out_recall)) / med["gen_plain_ms"]}
    q = {"facts_written": n_facts, "paraphrases": len(scoped), "in_scope": len(scoped) - len(out_recall),
         "prompts": len(rows), "tokens": tokens, "median": med, "pooled_overhead_pct": pooled,
         "out_of_scope": out_of_scope, "other_processes_cores": cpu.foreign_cores,
         "right_fact_first": sum(r["right_fact_first"] for r in rows),
         "answer_has_new_target": sum(r["answer_has_new_target"] for r in rows),
         "plain_answer_has_new_target": sum(r["plain_answer_has_new_target"] for r in rows), "rows": rows}
    log.info("query overhead (in scope): median %.1f %%, pooled %.1f %%; %d/%d paraphrases in scope",
             med["overhead_pct"], pooled, q["in_scope"], q["paraphrases"])
    return q


def section_inproc(args: argparse.Namespace, work: Path, cases: list[Case], cache: Path, res: dict,
                   quiet: Quiet) -> None:
    settings = Settings(model_cache_dir=cache, store_url=f"file://{work / 'unused'}")
    t0 = time.perf_counter()
    models = load_models(settings)
    log.info("in-process models loaded in %.1f s", time.perf_counter() - t0)
    texts = [c.fact for c in cases]
    out: dict[str, Any] = {"device": settings.resolved_device()}
    stores = {"file store": f"file://{work / 'store-breakdown'}"}
    quiet.wait("in-process write breakdown")
    with contextlib.ExitStack() as stack:
        if shutil.which("redis-server"):  # the HTTP section's redis-server is gone: a fresh one
            rs = RedisServer(work / "inproc")
            rs.start()
            stack.callback(rs.stop)
            stores["redis store"] = rs.url
        out["write_breakdown"] = write_breakdown(settings, models, stores, texts[: args.breakdown_writes + 1])
    out["encode_threads"] = encode_threads(models.encoder, texts[:50])
    if (work / "store-restore-copy").exists():
        out["restore"] = restore_time(settings, models, work / "store-restore-copy")
        log.info("in-process restore: %s", out["restore"])
    quiet.wait("query overhead")
    out["query"] = query_overhead(settings, models, work, cases, args.query_facts, args.query_prompts,
                                  args.query_tokens)
    res["inproc"] = out
