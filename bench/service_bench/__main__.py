"""Latency of the service on this machine: writes over HTTP, the memory update, query overhead, start-up.

    python -m bench.service_bench [--out bench/results] [--data ../shared/data] [--md bench/RESULTS.md]

Sections (``--sections``, all by default):

- ``startup``: ``larimar serve`` as a subprocess, launch -> /readyz 200; cold (empty model cache, so the
  GGUF is converted), warm (same cache) twice, and warm with a memory of ~1000 facts to restore.
- ``http``: ~200 single-fact POSTs one by one with httpx against the real server, file store (the warm
  server above) and, if ``redis-server`` is on PATH, a Redis store (our own redis-server, AOF fsync always).
- ``inproc``: in process (``load_models`` + ``build_editor``): where a write's time goes (the editor's own
  timings: encode, store append, memory update, compaction) and a query's overhead over the plain LLM at a
  fixed token count.
- ``update``: ``EpisodicMemory.update`` alone at K = 512..4096 on the CPU and on CUDA when present.

The facts are CounterFact development cases (case_id 2000-9999). Writes ``<out>/service_bench.json``,
``<out>/service_bench.png`` and the report ``--md``. CUDA numbers measured on another machine
(``--sections update`` there) are merged into the report when ``<out>/service_bench_cuda.json`` exists (or
``--cuda-json`` names one). Takes about 3-5 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.processes import REPO
from bench.service_bench.cpu import Quiet
from bench.service_bench.inproc import section_inproc
from bench.service_bench.report import TARGETS, plot, targets, write_markdown
from bench.service_bench.servers import section_startup_http
from bench.service_bench.update import section_update
from models.device import cpu_name
from training.data import DEFAULT_DATA, counterfact

log = logging.getLogger("service_bench")

SECTIONS = ("startup", "http", "inproc", "update")


def machine_info() -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    return {
        "cpu": cpu_name(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "loadavg_start": os.getloadavg(),
        "git": git_state(),
    }


def git_state() -> str:
    """The commit measured, and which tracked files differed from it (others may be editing meanwhile)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    changed = [line[3:] for line in dirty if line.strip()]
    return head + (f" with uncommitted changes to {', '.join(changed)}" if changed else "")


def merged_cuda(args: argparse.Namespace) -> list[dict]:
    """CUDA update rows measured on another machine (``--sections update`` there), for this report."""
    cuda_json = args.cuda_json or (args.out / "service_bench_cuda.json")
    if torch.cuda.is_available() or not cuda_json.exists():
        return []
    other = json.loads(cuda_json.read_text())
    who = other["machine"].get("cuda_device") or "other machine"
    rows = [r | {"machine": who, "date": other["machine"]["date"]} for r in other.get("update", [])
            if r["device"] == "cuda"]
    log.info("merged %d CUDA rows from %s", len(rows), cuda_json)
    return rows


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the benchmark data (default ../shared/data)")
    ap.add_argument("--out", type=Path, default=here / "results")
    ap.add_argument("--md", type=Path, default=here / "RESULTS.md", help="the human-readable report")
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--http-writes", type=int, default=200)
    ap.add_argument("--restore-facts", type=int, default=1000, help="facts in the memory for the restore start")
    ap.add_argument("--contention-writes", type=int, default=30,
                    help="writes per server with one core kept busy by another process (0: skip)")
    ap.add_argument("--breakdown-writes", type=int, default=100)
    ap.add_argument("--query-facts", type=int, default=50)
    ap.add_argument("--query-prompts", type=int, default=20)
    ap.add_argument("--query-tokens", type=int, default=32)
    ap.add_argument("--slots", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    ap.add_argument("--prefill", type=int, default=100)
    ap.add_argument("--update-reps", type=int, default=200)
    ap.add_argument("--batch-reps", type=int, default=10)
    ap.add_argument("--wait-quiet", type=float, default=30.0,
                    help="before each measurement wait up to this many seconds for other processes to go quiet")
    ap.add_argument("--from-json", type=Path, help="measure nothing: re-render the report and plot from a JSON")
    ap.add_argument("--cuda-json", type=Path, help="a service_bench.json with CUDA update rows from another machine")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        res = json.loads(args.from_json.read_text())
        res["cuda_update"] = merged_cuda(args) or res.get("cuda_update", [])
        res["target_verdicts"] = targets(res)
        plot(res, args.out / "service_bench.png")
        write_markdown(res, args.md, args.out)
        return
    quiet = Quiet(args.wait_quiet)
    t_start = time.perf_counter()

    res: dict[str, Any] = {"machine": machine_info(),
                           "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                           "targets": TARGETS}
    log.info("machine: %s", res["machine"])
    needs_data = {"startup", "http", "inproc"} & set(args.sections)
    n_cases = max(args.restore_facts, args.http_writes + 1 + args.contention_writes, args.breakdown_writes + 1,
                  args.query_facts)
    cases = counterfact(args.data, "dev")[:n_cases] if needs_data else []  # CounterFact development range
    with tempfile.TemporaryDirectory(prefix="larimar-bench-") as tmp:
        work = Path(tmp)
        cache = work / "model-cache"
        if {"startup", "http"} & set(args.sections):
            cache = section_startup_http(args, work, cases, res, quiet)
        if "inproc" in args.sections:
            section_inproc(args, work, cases, cache, res, quiet)
    if "update" in args.sections:
        section_update(args, res, quiet)

    res["cuda_update"] = merged_cuda(args)
    res["machine"]["loadavg_end"] = os.getloadavg()
    res["quiet_waits"] = quiet.waits
    res["wall_s"] = time.perf_counter() - t_start
    res["target_verdicts"] = targets(res)
    (args.out / "service_bench.json").write_text(json.dumps(res, indent=1))
    plot(res, args.out / "service_bench.png")
    write_markdown(res, args.md, args.out)
    for t in res["target_verdicts"]:
        log.info("%-45s %-10s (target %s): %s", t["what"], t["measured"], t["target"],
                 "met" if t["met"] else "NOT MET")
    log.info("wrote %s, %s and %s in %.0f s", args.out / "service_bench.json", args.out / "service_bench.png",
             args.md, res["wall_s"])


if __name__ == "__main__":
    main()
