"""Real ``larimar serve`` processes: start-up (cold, warm, with facts to restore) and writes over HTTP."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from bench.processes import RedisServer, ServiceProcess
from bench.service_bench.cpu import CpuWatch, Quiet, burner, stats
from training.data import Case

log = logging.getLogger("service_bench")

ONE_THREAD = "file store, OMP_NUM_THREADS=1"
_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ [\w.]+: (.*)$")


def startup_phases(server: ServiceProcess) -> dict[str, float]:
    """Start-up split by the server's own log lines (millisecond timestamps)."""
    marks: dict[str, float] = {}
    for line in server.log_path.read_text(errors="replace").splitlines():
        m = _LOG_LINE.match(line)
        if not m:
            continue
        t = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        msg = m.group(2)
        if msg.startswith("loading encoder"):
            marks.setdefault("models_start", t)
        elif msg.startswith("converting"):
            marks.setdefault("convert_start", t)
        elif re.match(r"restored \d+ memories", msg):
            marks.setdefault("restored", t)
        elif msg == "larimar ready":
            marks.setdefault("ready_logged", t)
    out: dict[str, float] = {}
    if "models_start" in marks:
        out["python_imports_s"] = marks["models_start"] - server.launched_at
        if "restored" in marks:
            out["models_and_restore_s"] = marks["restored"] - marks["models_start"]
    if "ready_logged" in marks and server.ready_at:
        out["bind_and_first_probe_s"] = server.ready_at - marks["ready_logged"]
    return {k: round(v, 3) for k, v in out.items()}



@contextlib.contextmanager
def running(server: ServiceProcess) -> Iterator[ServiceProcess]:
    try:
        yield server
    finally:
        server.stop()


def server_write_seconds(client: Any) -> tuple[float, float]:
    """(sum, count) of the server's own latency histogram for single-fact POSTs (its middleware's view)."""
    text = client.get("/metrics").text
    total = count = 0.0
    for line in text.splitlines():
        if re.search(r'route="[^"]*/memories/\{memory\}/facts"', line) and 'method="POST"' in line:
            if line.startswith("larimar_http_request_seconds_sum"):
                total = float(line.rsplit(" ", 1)[1])
            elif line.startswith("larimar_http_request_seconds_count"):
                count = float(line.rsplit(" ", 1)[1])
    return total, count


def http_writes(servers: dict[str, ServiceProcess], texts: list[str], memory: str) -> list[dict[str, Any]]:
    """POST each fact alone to every server, interleaved (alternating who goes first) so that load from
    other processes falls on all of them alike. Client-side wall time per request, and the server
    middleware's mean over the same requests."""
    clients = {k: httpx.Client(base_url=s.base, timeout=60.0) for k, s in servers.items()}
    pids = [s.proc.pid for s in servers.values() if s.proc is not None]
    try:
        for c in clients.values():
            for i in range(5):  # warm-up: first requests, first memory creation, thread pool
                c.post("/v1/memories/warmup/facts", json={"text": f"Warm-up fact number {i}."}).raise_for_status()
        floor: dict[str, list[float]] = {k: [] for k in clients}  # the HTTP floor: a route that does nothing
        for _ in range(50):
            for k, c in clients.items():
                t0 = time.perf_counter()
                c.get("/healthz").raise_for_status()
                floor[k].append((time.perf_counter() - t0) * 1e3)
        before = {k: server_write_seconds(c) for k, c in clients.items()}
        lat: dict[str, list[float]] = {k: [] for k in clients}
        with CpuWatch(pids) as cpu:
            for i, t in enumerate(tqdm(texts, desc=f"HTTP writes ({', '.join(clients)})", leave=False)):
                order = list(clients.items())
                for k, c in order if i % 2 == 0 else order[::-1]:
                    t0 = time.perf_counter()
                    r = c.post(f"/v1/memories/{memory}/facts", json={"text": t})
                    lat[k].append((time.perf_counter() - t0) * 1e3)
                    r.raise_for_status()
        after = {k: server_write_seconds(c) for k, c in clients.items()}
    finally:
        for c in clients.values():
            c.close()
    out = []
    for k, xs in lat.items():
        (s0, n0), (s1, n1) = before[k], after[k]
        server_mean = (s1 - s0) / (n1 - n0) * 1e3 if n1 > n0 else float("nan")
        slow = sorted(range(len(xs)), key=lambda i: -xs[i])[:5]
        out.append({"label": k, "latency_ms": xs, "stats": stats(xs), "server_mean_ms": server_mean,
                    "client_minus_server_mean_ms": stats(xs)["mean"] - server_mean,
                    "healthz_ms": stats(floor[k]),
                    "slowest": [{"write": i + 1, "ms": round(xs[i], 2)} for i in slow],
                    "other_processes_cores": cpu.foreign_cores})
        log.info("HTTP write, %s: median %.2f ms, p90 %.2f ms (other processes used %.2f cores meanwhile)", k,
                 out[-1]["stats"]["median"], out[-1]["stats"]["p90"], cpu.foreign_cores)
    return out


def http_batches(server: ServiceProcess, texts: list[str], memory: str, batch: int) -> int:
    t0 = time.perf_counter()
    with httpx.Client(base_url=server.base, timeout=120.0) as c:
        for i in tqdm(range(0, len(texts), batch), desc=f"batch writes to {memory!r}", leave=False):
            body = {"facts": [{"text": t} for t in texts[i : i + batch]]}
            c.post(f"/v1/memories/{memory}/facts/batch", json=body).raise_for_status()
        total = c.get(f"/v1/memories/{memory}/facts", params={"limit": 1}).json()["total"]
    log.info("memory %r now holds %d facts (%.1f s of batch writes)", memory, total, time.perf_counter() - t0)
    return int(total)


def timed_start(server: ServiceProcess) -> tuple[float, dict[str, float], float]:
    """Start a server and stop it: (seconds to ready, phases, cores other processes used meanwhile)."""
    with CpuWatch() as cpu, running(server):
        took = server.start()
    return took, startup_phases(server), cpu.foreign_cores


def section_startup_http(args: argparse.Namespace, work: Path, cases: list[Case], res: dict, quiet: Quiet) -> Path:
    """Start-up (cold, warm, warm + 1000 facts) and HTTP writes on the file store and Redis."""
    cache = work / "model-cache"
    store_dir = work / "store-file"
    texts = [c.fact for c in cases]

    def server(store: str, tag: str, **env: str) -> ServiceProcess:
        return ServiceProcess(work / f"serve-{tag}.log", LARIMAR_STORE_URL=store, LARIMAR_MODEL_CACHE_DIR=str(cache),
                              **env)

    n_http = args.http_writes
    do_startup, do_http = "startup" in args.sections, "http" in args.sections
    startup: dict[str, Any] = {"warm_s": [], "warm_phases": [], "warm_other_cores": []}

    if do_startup:
        quiet.wait("start-up")
        log.info("cold start: empty model cache %s (the GGUF is converted)", cache)
        cold = timed_start(server(f"file://{work / 'store-cold'}", "cold"))
        startup["cold_s"], startup["cold_phases"], startup["cold_other_cores"] = cold
        t = time.perf_counter()
        os.sync()  # the conversion wrote ~0.5 GB: flush it so later fsync timings don't wait on it
        startup["sync_after_cold_s"] = time.perf_counter() - t
        log.info("cold start %.2f s", startup["cold_s"])
        for i in range(2):
            w = timed_start(server(f"file://{work / 'store-cold'}", f"warm{i + 1}"))
            for key, v in zip(("warm_s", "warm_phases", "warm_other_cores"), w, strict=True):
                startup[key].append(v)
        log.info("warm starts %s s", [round(x, 2) for x in startup["warm_s"]])

    with contextlib.ExitStack() as stack:
        file_srv = stack.enter_context(running(server(f"file://{store_dir}", "file")))
        file_srv.start()
        servers = {"file store": file_srv}
        if do_http:
            if shutil.which("redis-server") is None:
                log.warning("redis-server is not on PATH: skipping the Redis store")
            else:
                redis_srv = RedisServer(work / "redis")
                redis_srv.start()
                stack.callback(redis_srv.stop)
                srv = stack.enter_context(running(server(redis_srv.url, "redis")))
                startup["warm_redis_s"] = srv.start()
                servers["redis store"] = srv
            # the same as "file store" but torch limited to one thread: on 2 shared cores, torch's default of
            # one intra-op thread per core is what the write latency hinges on (see the report)
            one = stack.enter_context(running(server(f"file://{work / 'store-1thread'}", "1thread",
                                                     OMP_NUM_THREADS="1")))
            one.start()
            servers[ONE_THREAD] = one
            quiet.wait("HTTP writes")
            res["http"] = http_writes(servers, texts[:n_http], "bench")
            if args.contention_writes:
                # the same two file-store servers while one core is kept busy by another process
                with burner(args.contention_writes * 4.0):
                    res["http_contention"] = http_writes({k: servers[k] for k in ("file store", ONE_THREAD)},
                                                         texts[n_http : n_http + args.contention_writes],
                                                         "contention")
            for k in ("redis store", ONE_THREAD):
                if k in servers:
                    servers[k].stop()
            if "redis store" in servers:
                redis_srv.stop()
        if do_startup:
            startup["restore_facts"] = http_batches(file_srv, texts[n_http : args.restore_facts], "bench", 50)
    if do_startup:
        # the store as the server left it (snapshot + log tail), restored from a fresh copy each time
        shutil.copytree(store_dir, work / "store-restore-copy")  # for the in-process restore timing
        runs = []
        for i in range(2):
            shutil.copytree(store_dir, work / f"store-restore-{i}")
            runs.append(timed_start(server(f"file://{work / f'store-restore-{i}'}", f"restore{i}")))
        startup["warm_restore_s"] = [r[0] for r in runs]
        startup["warm_restore_phases"] = [r[1] for r in runs]
        startup["warm_restore_other_cores"] = [r[2] for r in runs]
        log.info("warm start with %d facts: %s s", startup["restore_facts"], [round(r[0], 2) for r in runs])
        res["startup"] = startup
    return cache
