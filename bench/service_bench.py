"""Latency of the service on this machine: writes over HTTP, the memory update, query overhead, start-up.

    python bench/service_bench.py [--out bench/results] [--data ../shared/data] [--md bench/RESULTS.md]

Sections (``--sections``, all by default):

- ``startup``: ``larimar serve`` as a subprocess, launch -> /readyz 200; cold (empty model cache, so the
  GGUF is converted), warm (same cache) twice, and warm with a memory of ~1000 facts to restore.
- ``http``: ~200 single-fact POSTs one by one with httpx against the real server, file store (the warm
  server above) and, if ``redis-server`` is on PATH, a Redis store (our own redis-server, AOF fsync always).
- ``inproc``: in process (``load_models`` + ``build_editor``): where a write's time goes (encode, store
  append, memory update, compaction) and a query's overhead over the plain LLM at a fixed token count.
- ``update``: ``EpisodicMemory.update`` alone at K = 512..4096 on the CPU and on CUDA when present.

Writes ``<out>/service_bench.json``, ``<out>/service_bench.png`` and the report ``--md``. CUDA numbers
measured on another machine (``--sections update`` there) are merged into the report when
``<out>/service_bench_cuda.json`` exists (or ``--cuda-json`` names one).
Takes about 3-5 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gzip
import json
import logging
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a plain script, also where the package is not installed
    sys.path.insert(0, str(REPO))

log = logging.getLogger("service_bench")

TARGETS = {"update_ms_k512": 1.0, "http_write_ms": 25.0, "query_overhead_pct": 10.0, "warm_start_s": 10.0}
SECTIONS = ("startup", "http", "inproc", "update")
ONE_THREAD = "file store, OMP_NUM_THREADS=1"


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------


def stats(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs, dtype=float)
    return {"n": int(a.size), "median": float(np.median(a)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "min": float(a.min()),
            "max": float(a.max())}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fact_text(r: dict) -> str:
    return f"{r['prompt']} {r['target_new']}."


def load_records(data: Path, n: int) -> list[dict]:
    """CounterFact development range (case_id >= 2000), as bench/capacity.py uses it."""
    with gzip.open(data / "counterfact-train.json.gz", "rt", encoding="utf-8") as f:
        records = [r for r in json.load(f) if r["case_id"] >= 2000]
    if len(records) < n:
        raise SystemExit(f"need {n} CounterFact records with case_id >= 2000, found {len(records)}")
    return records[:n]


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    cuda = torch.cuda.is_available()
    return {
        "cpu": cpu,
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


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def _busy_jiffies() -> int:
    """All CPUs' non-idle time since boot, in clock ticks."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(f) - f[3] - f[4]  # minus idle and iowait


def _pid_jiffies(pid: int) -> int:
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(f[11]) + int(f[12])  # utime + stime


class CpuWatch:
    """How many cores *other* processes kept busy during a block: this machine is shared, and that load
    is what makes tails (and sometimes medians) noisy. Ours = this process, its waited-for children and
    the live ``pids`` given (servers still running at the end of the block)."""

    def __init__(self, pids: list[int] | None = None) -> None:
        self.pids = pids or []
        self.foreign_cores = float("nan")

    def _ours(self) -> float:
        t = os.times()
        tck = os.sysconf("SC_CLK_TCK")
        return t.user + t.system + t.children_user + t.children_system + sum(map(_pid_jiffies, self.pids)) / tck

    def __enter__(self) -> CpuWatch:
        self._t, self._busy, self._own = time.perf_counter(), _busy_jiffies(), self._ours()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._t
        busy = (_busy_jiffies() - self._busy) / os.sysconf("SC_CLK_TCK")
        self.foreign_cores = max(0.0, busy - (self._ours() - self._own)) / max(wall, 1e-9)


QUIET: dict[str, Any] = {"max_s": 0.0, "waits": []}


def wait_quiet(what: str, below: float = 0.3) -> None:
    """Before a measurement, wait (up to ``--wait-quiet`` seconds) for a second in which other processes
    keep fewer than ``below`` cores busy; on 2 shared cores their load changes every number here."""
    t0 = time.perf_counter()
    while True:
        with CpuWatch() as cpu:
            time.sleep(1.0)
        waited = time.perf_counter() - t0
        if cpu.foreign_cores < below or waited >= QUIET["max_s"]:
            QUIET["waits"].append({"before": what, "waited_s": round(waited, 1),
                                   "other_processes_cores": round(cpu.foreign_cores, 2)})
            if cpu.foreign_cores >= below:
                log.warning("other processes still use %.2f cores after %.0f s: measuring %s anyway",
                            cpu.foreign_cores, waited, what)
            return


# ---------------------------------------------------------------------------
# processes: larimar serve and redis-server
# ---------------------------------------------------------------------------

_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ [\w.]+: (.*)$")


class Server:
    """``python -m service.cli serve`` on a free port; ``start`` returns seconds from launch to /readyz 200."""

    def __init__(self, workdir: Path, store_url: str, cache_dir: Path, tag: str, **env: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"serve-{tag}.log"
        self.env = subprocess_env(LARIMAR_STORE_URL=store_url, LARIMAR_MODEL_CACHE_DIR=str(cache_dir), **env)
        self.proc: subprocess.Popen | None = None
        self.launched_at = 0.0  # wall clock, to line up with the server's log timestamps
        self.ready_at = 0.0

    def start(self, timeout: float = 300.0) -> float:
        import httpx

        logf = open(self.log_path, "wb")  # noqa: SIM115 - the child writes it until stop()
        self.launched_at = time.time()
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(self.port)],
                                     cwd=REPO, env=self.env, stdout=logf, stderr=subprocess.STDOUT)
        logf.close()
        with httpx.Client(timeout=2.0) as c:
            while time.perf_counter() - t0 < timeout:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"larimar serve exited with {self.proc.returncode}:\n{self.tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if c.get(self.base + "/readyz").status_code == 200:
                        self.ready_at = time.time()
                        return time.perf_counter() - t0
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"larimar serve not ready after {timeout} s:\n{self.tail()}")

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def phases(self) -> dict[str, float]:
        """Start-up split by the server's own log lines (millisecond timestamps)."""
        marks: dict[str, float] = {}
        for line in self.log_path.read_text(errors="replace").splitlines():
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
            out["python_imports_s"] = marks["models_start"] - self.launched_at
            if "restored" in marks:
                out["models_and_restore_s"] = marks["restored"] - marks["models_start"]
        if "ready_logged" in marks and self.ready_at:
            out["bind_and_first_probe_s"] = self.ready_at - marks["ready_logged"]
        return {k: round(v, 3) for k, v in out.items()}

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown closes the store
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class RedisServer:
    """Our own redis-server: free port, temp dir, AOF with fsync on every write (docker/redis.conf's policy)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.dir = workdir / "redis"
        self.dir.mkdir()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", "always", "--save", "",
             "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        for _ in range(200):
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    client.close()
                    return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer PING")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------------
# HTTP writes
# ---------------------------------------------------------------------------


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


def http_writes(servers: dict[str, Server], texts: list[str], memory: str) -> list[dict[str, Any]]:
    """POST each fact alone to every server, interleaved (alternating who goes first) so that load from
    other processes falls on all of them alike. Client-side wall time per request, and the server
    middleware's mean over the same requests."""
    import httpx

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


def http_batches(server: Server, texts: list[str], memory: str, batch: int) -> int:
    import httpx

    t0 = time.perf_counter()
    with httpx.Client(base_url=server.base, timeout=120.0) as c:
        for i in tqdm(range(0, len(texts), batch), desc="batch writes to ~1000 facts", leave=False):
            body = {"facts": [{"text": t} for t in texts[i : i + batch]]}
            c.post(f"/v1/memories/{memory}/facts/batch", json=body).raise_for_status()
        total = c.get(f"/v1/memories/{memory}/facts", params={"limit": 1}).json()["total"]
    log.info("memory %r now holds %d facts (%.1f s of batch writes)", memory, total, time.perf_counter() - t0)
    return int(total)


@contextlib.contextmanager
def burner(limit_s: float) -> Iterator[None]:
    """A neighbour: another torch process doing float32 GEMMs with its default threads, as a test suite, a
    batch job or a second model server on the same box would. Stops by itself after ``limit_s``."""
    code = ("import time, torch\na = torch.randn(1024, 1024)\nt = time.time()\n"
            f"while time.time() - t < {limit_s:.0f}:\n    a @ a\n")
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(0.5)
        yield
    finally:
        proc.kill()
        proc.wait()


def timed_start(server: Server) -> tuple[float, dict[str, float], float]:
    """Start a server and stop it: (seconds to ready, phases, cores other processes used meanwhile)."""
    with CpuWatch() as cpu, running(server):
        took = server.start()
    return took, server.phases(), cpu.foreign_cores


def section_startup_http(args: argparse.Namespace, work: Path, records: list[dict], res: dict) -> Path:
    """Start-up (cold, warm, warm + 1000 facts) and HTTP writes on the file store and Redis."""
    cache = work / "model-cache"
    store_dir = work / "store-file"
    texts = [fact_text(r) for r in records]
    n_http = args.http_writes
    do_startup, do_http = "startup" in args.sections, "http" in args.sections
    startup: dict[str, Any] = {"warm_s": [], "warm_phases": [], "warm_other_cores": []}

    if do_startup:
        wait_quiet("start-up")
        log.info("cold start: empty model cache %s (the GGUF is converted)", cache)
        cold = timed_start(Server(work, f"file://{work / 'store-cold'}", cache, "cold"))
        startup["cold_s"], startup["cold_phases"], startup["cold_other_cores"] = cold
        t = time.perf_counter()
        os.sync()  # the conversion wrote ~0.5 GB: flush it so later fsync timings don't wait on it
        startup["sync_after_cold_s"] = time.perf_counter() - t
        log.info("cold start %.2f s", startup["cold_s"])
        for i in range(2):
            w = timed_start(Server(work, f"file://{work / 'store-cold'}", cache, f"warm{i + 1}"))
            for key, v in zip(("warm_s", "warm_phases", "warm_other_cores"), w, strict=True):
                startup[key].append(v)
        log.info("warm starts %s s", [round(x, 2) for x in startup["warm_s"]])

    with contextlib.ExitStack() as stack:
        file_srv = stack.enter_context(running(Server(work, f"file://{store_dir}", cache, "file")))
        file_srv.start()
        servers = {"file store": file_srv}
        if do_http:
            if shutil.which("redis-server") is None:
                log.warning("redis-server is not on PATH: skipping the Redis store")
            else:
                redis_srv = RedisServer(work)
                redis_srv.start()
                stack.callback(redis_srv.stop)
                srv = stack.enter_context(running(Server(work, redis_srv.url, cache, "redis")))
                startup["warm_redis_s"] = srv.start()
                servers["redis store"] = srv
            # the same as "file store" but torch limited to one thread: on 2 shared cores, torch's default of
            # one intra-op thread per core is what the write latency hinges on (see the report)
            one = stack.enter_context(running(Server(work, f"file://{work / 'store-1thread'}", cache, "1thread",
                                                     OMP_NUM_THREADS="1")))
            one.start()
            servers[ONE_THREAD] = one
            wait_quiet("HTTP writes")
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
            runs.append(timed_start(Server(work, f"file://{work / f'store-restore-{i}'}", cache, f"restore{i}")))
        startup["warm_restore_s"] = [r[0] for r in runs]
        startup["warm_restore_phases"] = [r[1] for r in runs]
        startup["warm_restore_other_cores"] = [r[2] for r in runs]
        log.info("warm start with %d facts: %s s", startup["restore_facts"], [round(r[0], 2) for r in runs])
        res["startup"] = startup
    return cache


# ---------------------------------------------------------------------------
# in process: write breakdown, restore, query overhead
# ---------------------------------------------------------------------------


class Probe:
    """Times calls of chosen methods of live objects, summing into ``marks`` until ``undo``."""

    def __init__(self) -> None:
        self.marks: dict[str, float] = {}
        self._undo: list[Callable[[], None]] = []

    def wrap(self, obj: object, name: str, key: str) -> None:
        orig = getattr(obj, name)
        had = name in vars(obj)

        def timed(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return orig(*a, **k)
            finally:
                self.marks[key] = self.marks.get(key, 0.0) + (time.perf_counter() - t) * 1e3

        setattr(obj, name, timed)
        self._undo.append(lambda: setattr(obj, name, orig) if had else delattr(obj, name))

    def undo(self) -> None:
        while self._undo:
            self._undo.pop()()


def write_breakdown(settings: Any, models: Any, stores: dict[str, str], texts: list[str]) -> list[dict[str, Any]]:
    """Single-fact ``Editor.add_facts`` calls, timed by component; one editor per store, interleaved."""
    from service.app import build_editor

    editors = {k: build_editor(settings.model_copy(update={"store_url": url}), models) for k, url in stores.items()}
    probe = Probe()
    rows: dict[str, list[dict[str, float]]] = {k: [] for k in editors}
    try:
        probe.wrap(models.encoder, "encode", "encode")  # shared by the editors: only one runs at a time
        for e in editors.values():
            e.add_facts("breakdown", [(texts[0], None)])  # creates the memory
            probe.wrap(e.registry.store, "append", "store_append")
            probe.wrap(e.registry, "_compact_logged", "compaction")
            probe.wrap(e.registry.get("breakdown").mem, "update", "memory_update")
        with CpuWatch() as cpu:
            for i, t in enumerate(tqdm(texts[1:], desc="write breakdown", leave=False)):
                order = list(editors.items())
                for k, e in order if i % 2 == 0 else order[::-1]:
                    probe.marks.clear()
                    t0 = time.perf_counter()
                    e.add_facts("breakdown", [(t, None)])
                    total = (time.perf_counter() - t0) * 1e3
                    row = {p: probe.marks.get(p, 0.0) for p in ("encode", "store_append", "memory_update",
                                                                "compaction")}
                    row["other"] = total - sum(row.values())
                    row["total"] = total
                    rows[k].append(row)
    finally:
        probe.undo()
        for e in editors.values():
            e.registry.store.close()
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


def restore_time(settings: Any, models: Any, store_dir: Path) -> dict[str, Any]:
    from service.app import build_editor
    from service.store import open_store

    stored = open_store(f"file://{store_dir}").load("bench")
    t0 = time.perf_counter()
    editor = build_editor(settings.model_copy(update={"store_url": f"file://{store_dir}"}), models)
    took = time.perf_counter() - t0
    facts = len(editor.registry.get("bench").view.ids)
    editor.registry.store.close()
    return {"seconds": took, "facts": facts, "log_entries_replayed": len(stored.log),
            "snapshot_bytes": len(stored.snapshot or b"")}


def query_overhead(settings: Any, models: Any, work: Path, records: list[dict], n_facts: int, n_prompts: int,
                   tokens: int) -> dict[str, Any]:
    """Memory "auto" vs the plain LLM on the bare prompt, both generating exactly ``tokens`` tokens.

    The paraphrases of the written facts are the queries. The first ``n_prompts`` that the scope detector
    takes in scope are measured in full (recall, both generations, both prefills); an out-of-scope query
    runs the plain LLM unchanged, so its overhead is the scope decision alone.
    """
    from models.scope import split_sentences
    from service.app import build_editor

    editor = build_editor(settings.model_copy(update={"store_url": f"file://{work / 'store-query'}"}), models)
    editor.add_facts("query", [(fact_text(r), None) for r in records[:n_facts]])
    h = editor.memory("query")
    llm, cond = editor.llm, editor.conditioner

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
        answer, n = cond.generate(llm, prompt, readout, tokens, tokens)
        return (time.perf_counter() - t0) * 1e3, n, answer

    warm = records[0]["rephrase_prompt"]  # warm-up: first forward passes of both models
    cond.generate(llm, warm, editor.recall(h, warm, "auto").readout, 4, 4)
    cond.generate(llm, warm, None, 4, 4)

    # the scope decision for every paraphrase (cheap), timed
    scoped = []
    for r in records[:n_facts]:
        prompt = r["rephrase_prompt"]
        t0 = time.perf_counter()
        editor.encoder.encode(split_sentences(prompt))
        encode_ms = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        rec = editor.recall(h, prompt, "auto")
        scoped.append((r, rec, encode_ms, (time.perf_counter() - t0) * 1e3))
    out_recall = [ms for _, rec, _, ms in scoped if not rec.in_scope]

    rows = []
    chosen = [s for s in scoped if s[1].in_scope][:n_prompts]
    with CpuWatch() as cpu:
        for i, (r, rec, encode_ms, recall_ms) in enumerate(tqdm(chosen, desc="query overhead", leave=False)):
            prompt = r["rephrase_prompt"]
            plain_text = cond.generation_text(llm, prompt, None)
            mem_text = cond.generation_text(llm, prompt, rec.readout)
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
                "right_fact_first": bool(rec.facts) and rec.facts[0].text == fact_text(r),
                "answer_has_new_target": r["target_new"].lower() in gen["memory"][2].lower(),
                "plain_answer_has_new_target": r["target_new"].lower() in gen["plain"][2].lower(),
                "facts_in_prompt": len(rec.facts),
                "prompt_tokens_plain": int(llm.ids(plain_text).shape[1]),
                "prompt_tokens_memory": int(llm.ids(mem_text).shape[1]),
                "encode_ms": encode_ms,
                "scope_ms": rec.timings_ms.get("scope", 0.0),
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
    editor.registry.store.close()
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


def section_inproc(args: argparse.Namespace, work: Path, records: list[dict], cache: Path, res: dict) -> None:
    from service.app import load_models
    from service.settings import Settings

    settings = Settings(model_cache_dir=cache, store_url=f"file://{work / 'unused'}")
    t0 = time.perf_counter()
    models = load_models(settings)
    log.info("in-process models loaded in %.1f s", time.perf_counter() - t0)
    texts = [fact_text(r) for r in records]
    out: dict[str, Any] = {"device": settings.resolved_device()}
    stores = {"file store": f"file://{work / 'store-breakdown'}"}
    wait_quiet("in-process write breakdown")
    with contextlib.ExitStack() as stack:
        if shutil.which("redis-server"):  # the HTTP section's redis-server is gone: a fresh one
            (work / "inproc").mkdir()
            rs = RedisServer(work / "inproc")
            rs.start()
            stack.callback(rs.stop)
            stores["redis store"] = rs.url
        out["write_breakdown"] = write_breakdown(settings, models, stores, texts[: args.breakdown_writes + 1])
    out["encode_threads"] = encode_threads(models.encoder, texts[:50])
    if (work / "store-restore-copy").exists():
        out["restore"] = restore_time(settings, models, work / "store-restore-copy")
        log.info("in-process restore: %s", out["restore"])
    wait_quiet("query overhead")
    out["query"] = query_overhead(settings, models, work, records, args.query_facts, args.query_prompts,
                                  args.query_tokens)
    res["inproc"] = out


# ---------------------------------------------------------------------------
# the memory update alone
# ---------------------------------------------------------------------------


def section_update(args: argparse.Namespace, res: dict) -> None:
    from memory_core import EpisodicMemory, MemoryConfig

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    wait_quiet("memory update")
    g = torch.Generator().manual_seed(0)
    dim = 384
    pool = torch.nn.functional.normalize(torch.randn(4096, dim, generator=g), dim=-1)  # unit latents, as the encoder's
    rows = []
    for device in devices:
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        cpu = CpuWatch().__enter__()
        first = len(rows)
        for K in tqdm(args.slots, desc=f"memory update ({device})", leave=False):
            mem = EpisodicMemory(MemoryConfig(slots=K, dim=dim), device=device)
            state = mem.update(mem.empty(), pool[: args.prefill].to(device), +1.0, inplace=True)  # pre-fill
            reps = args.update_reps if (device == "cuda" or K <= 1024) else max(10, args.update_reps // 8)
            singles = [pool[args.prefill + i : args.prefill + i + 1].to(device) for i in range(reps + 5)]
            lat = []
            for i, z in enumerate(singles):
                sync()
                t0 = time.perf_counter()
                state = mem.update(state, z, +1.0, inplace=True)
                sync()
                if i >= 5:  # the first few are warm-up
                    lat.append((time.perf_counter() - t0) * 1e3)
            batch_lat = []
            for i in range(args.batch_reps + 1):
                Z = pool[(i * 64) % 4000 : (i * 64) % 4000 + 64].to(device)
                sync()
                t0 = time.perf_counter()
                state = mem.update(state, Z, +1.0, inplace=True)
                sync()
                if i:
                    batch_lat.append((time.perf_counter() - t0) * 1e3)
            assert torch.isfinite(state.M).all()
            rows.append({"device": device, "K": K, "single_ms": stats(lat), "batch64_ms": stats(batch_lat),
                         "facts_in_memory": args.prefill + reps + 5 + 64 * (args.batch_reps + 1)})
            log.info("update %s K=%d: single median %.3f ms, batch of 64 median %.2f ms", device, K,
                     rows[-1]["single_ms"]["median"], rows[-1]["batch64_ms"]["median"])
            del mem, state
            if device == "cuda":
                torch.cuda.empty_cache()
        cpu.__exit__()
        for r in rows[first:]:
            r["other_processes_cores"] = cpu.foreign_cores
    res["update"] = rows


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def targets(res: dict) -> list[dict[str, Any]]:
    """One row per target: measured value, met or not, and why in numbers."""
    out = []
    upd = {(r["device"], r["K"]): r for r in res.get("update", [])}
    if ("cpu", 512) in upd:
        r = upd[("cpu", 512)]["single_ms"]
        why = (f"median {r['median']:.3f} ms, p90 {r['p90']:.3f} ms for one (1,384) latent into a memory pre-filled "
               f"with {res['args']['prefill']} facts; the K x K float64 C^-1 it updates is 2 MiB")
        if r["p90"] > TARGETS["update_ms_k512"] >= r["median"]:
            why += "; the median meets it, the tail (other processes on 2 shared cores) does not"
        out.append({"what": "memory update, K=512, CPU", "measured": f"{r['median']:.3f} ms",
                    "target": "<= 1 ms", "met": r["median"] <= TARGETS["update_ms_k512"], "why": why})
    for h in res.get("http", []):
        s = h["stats"]
        bd = next((b for b in res.get("inproc", {}).get("write_breakdown", []) if b["label"] == h["label"]), None)
        why = (f"median {s['median']:.1f} ms, p90 {s['p90']:.1f} ms, max {s['max']:.1f} ms (other processes kept "
               f"{h['other_processes_cores']:.1f} of the cores busy meanwhile)")
        if bd:
            m = bd["median_ms"]
            why += (f"; in process the write is encode {m['encode']:.1f} + store append (fsync) "
                    f"{m['store_append']:.1f} + memory update {m['memory_update']:.2f} + other {m['other']:.2f} ms "
                    f"= {m['total']:.1f} ms, so HTTP/ASGI/client add ~{s['median'] - m['total']:.1f} ms")
            if "healthz_ms" in h:
                why += f" (GET /healthz alone: {h['healthz_ms']['median']:.1f} ms)"
        hc = {c["label"]: c["stats"]["median"] for c in res.get("http_contention", [])}
        if h["label"] in hc:
            why += f"; with one core taken by another process: median {hc[h['label']]:.0f} ms"
        if h["label"] == ONE_THREAD:
            why = f"median {s['median']:.1f} ms, p90 {s['p90']:.1f} ms, max {s['max']:.1f} ms: the same server with " \
                  "torch on one thread, measured interleaved with the others; the service does not set this itself"
            if h["label"] in hc:
                why += f"; with one core taken by another process: median {hc[h['label']]:.0f} ms"
        out.append({"what": f"single fact write over HTTP ({h['label']})", "measured": f"{s['median']:.1f} ms",
                    "target": "<= 25 ms", "met": s["median"] <= TARGETS["http_write_ms"], "why": why})
    q = res.get("inproc", {}).get("query")
    if q:
        m = q["median"]
        why = (f"median over {q['prompts']} in-scope paraphrase prompts (pooled {q['pooled_overhead_pct']:.1f} %). "
               f"Per prompt (medians): scope {m['scope_ms']:.1f} ms (encoding the prompt, timed alone: "
               f"{m['encode_ms']:.1f} ms), read {m['read_ms']:.2f} ms, extra prefill {m['extra_prefill_ms']:.1f} ms "
               f"for {m['prompt_tokens_memory'] - m['prompt_tokens_plain']:.0f} more prompt tokens, extra decode "
               f"{m['extra_decode_ms']:.1f} ms, against plain generation {m['gen_plain_ms']:.0f} ms for "
               f"{q['tokens']} tokens")
        if q["out_of_scope"]:
            why += f"; out of scope the overhead is the scope decision alone, {q['out_of_scope']['overhead_pct']:.1f} %"
        out.append({"what": "query overhead over the plain LLM (in scope)", "measured": f"{m['overhead_pct']:.1f} %",
                    "target": "<= 10 %", "met": m["overhead_pct"] <= TARGETS["query_overhead_pct"], "why": why})
    st = res.get("startup", {})
    if st.get("warm_s"):
        w = float(np.median(st["warm_s"]))
        ph = st["warm_phases"][-1]
        why = (f"runs {', '.join(f'{x:.2f}' for x in st['warm_s'])} s; python imports "
               f"{ph.get('python_imports_s', float('nan')):.1f} s, models (+ restore) "
               f"{ph.get('models_and_restore_s', float('nan')):.1f} s, bind + first probe "
               f"{ph.get('bind_and_first_probe_s', float('nan')):.2f} s")
        out.append({"what": "warm start, empty store", "measured": f"{w:.2f} s", "target": "<= 10 s",
                    "met": w <= TARGETS["warm_start_s"], "why": why})
    if "warm_restore_s" in st:
        w = float(np.median(st["warm_restore_s"]))
        ph = st["warm_restore_phases"][int(np.argmin(st["warm_restore_s"]))]
        why = (f"runs {', '.join(f'{x:.2f}' for x in st['warm_restore_s'])} s, each from a fresh copy of the store; "
               f"fastest: python imports {ph.get('python_imports_s', float('nan')):.1f} s, models + restore "
               f"{ph.get('models_and_restore_s', float('nan')):.1f} s")
        rs = res.get("inproc", {}).get("restore")
        if rs:
            why += (f"; restoring them in process takes {rs['seconds']:.2f} s (snapshot "
                    f"{rs['snapshot_bytes'] / 2**20:.1f} MiB + {rs['log_entries_replayed']} log entries replayed, "
                    f"then compacted)")
        out.append({"what": f"warm start, {st['restore_facts']} facts to restore", "measured": f"{w:.2f} s",
                    "target": "<= 10 s", "met": w <= TARGETS["warm_start_s"], "why": why})
    return out


def fmt_stats(s: dict[str, float], nd: int = 2) -> str:
    return (f"{s['median']:.{nd}f} | {s['p90']:.{nd}f} | {s['p99']:.{nd}f} | {s['max']:.{nd}f} | {s['n']}")


def write_markdown(res: dict, path: Path, out_dir: Path) -> None:
    m = res["machine"]
    L = ["# Service benchmark", "",
         f"Produced by `python bench/service_bench.py` on {m['date']} (UTC). Raw numbers: "
         f"`{os.path.relpath(out_dir / 'service_bench.json', path.parent)}`, plot: "
         f"`{os.path.relpath(out_dir / 'service_bench.png', path.parent)}`.", "",
         "## Machine", "",
         f"- CPU: {m['cpu']} (/proc/cpuinfo model name), {m['cores']} cores usable, torch threads "
         f"{m['torch_threads']}",
         f"- torch {m['torch']}, Python {m['python']}, {m['platform']}",
         f"- code measured: {m.get('git', 'unknown')}",
         f"- device: {'CUDA ' + m['cuda_device'] if m['cuda_device'] else 'CPU only (no CUDA here)'}; the service "
         f"ran on `{res.get('inproc', {}).get('device', 'cpu')}`",
         f"- load average at start {', '.join(f'{x:.2f}' for x in m['loadavg_start'])}, at end "
         f"{', '.join(f'{x:.2f}' for x in m.get('loadavg_end', ()))}: the 2 cores are shared with other work, "
         "so tails (p90/p99/max) are noisier than medians", "",
         f"Whole run: {res.get('wall_s', 0):.0f} s. Before each measurement the script waited (up to "
         f"{res['args'].get('wait_quiet', 0):.0f} s) for a quiet second: "
         + "; ".join(f"{w['before']}: waited {w['waited_s']:.0f} s, then other processes used "
                     f"{w['other_processes_cores']:.2f} cores" for w in res.get("quiet_waits", [])) + ".", "",
         "## Targets", "", "| what | measured | target | verdict | why |", "| --- | --- | --- | --- | --- |"]
    for t in targets(res):
        L.append(f"| {t['what']} | {t['measured']} | {t['target']} | {verdict(t['met'])} | {t['why']} |")

    if res.get("http"):
        L += ["", "## 1. One fact written over HTTP, end to end", "",
              "`larimar serve` as a subprocess; httpx client with keep-alive on the same machine; each POST "
              "`/v1/memories/bench/facts` with one CounterFact fact (case_id >= 2000) after 5 warm-up writes; "
              "default settings (K=512, snapshot every 100 log entries).", "",
              "Stores are measured interleaved (one POST to each in turn), so load from other processes falls "
              "on both alike. *server mean* is the server's own middleware histogram over the same requests; "
              "*client+transport* is the client mean minus it.", "",
              "| store | median ms | p90 | p99 | max | n | server mean ms | client+transport mean ms | "
              "other processes' cores |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for h in res["http"]:
            L.append(f"| {h['label']} | {fmt_stats(h['stats'])} | {h['server_mean_ms']:.2f} | "
                     f"{h['client_minus_server_mean_ms']:.2f} | {h['other_processes_cores']:.2f} |")
        if all("healthz_ms" in h for h in res["http"]):
            floors = ", ".join(f"{h['label']} {h['healthz_ms']['median']:.2f} ms" for h in res["http"])
            L += ["", "The HTTP floor, `GET /healthz` (a sync route like the write: same thread-pool hop and "
                  f"middleware), median: {floors}."]
        for h in res["http"]:
            L.append(f"\nSlowest writes ({h['label']}): " + ", ".join(f"#{s['write']} {s['ms']} ms"
                                                                       for s in h["slowest"]))
    hc = res.get("http_contention")
    if hc:
        L += ["", "### With one core taken by another process", "",
              f"The same file-store servers, {hc[0]['stats']['n']} more writes each, interleaved, while a neighbour "
              "started by the script runs 1024x1024 float32 matrix products in a loop with torch's default threads "
              "(what a test suite, a batch job or a second model server on the box does). torch's default is one "
              "intra-op (OpenMP) thread per visible core, so with a neighbour like that each of the service's "
              "parallel regions waits for a thread that has no core; with one thread it has none to wait for.", "",
              "| server | median ms | p90 | p99 | max | n | other processes' cores |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
        for h in hc:
            L.append(f"| {h['label']} | {fmt_stats(h['stats'])} | {h['other_processes_cores']:.2f} |")
    bds = res.get("inproc", {}).get("write_breakdown", [])
    if bds:
        L += ["", "Where a write's time goes (in process, `Editor.add_facts` with one fact, its parts timed by "
              "wrapping them; the stores interleaved; medians over the writes, ms):", "",
              "| store | encode | store append (durable) | memory update | compaction | other | total | "
              "compactions (max ms) | other processes' cores |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for b in bds:
            md = b["median_ms"]
            L.append(f"| {b['label']} | {md['encode']:.2f} | {md['store_append']:.2f} | {md['memory_update']:.3f} "
                     f"| {md['compaction']:.2f} | {md['other']:.2f} | {md['total']:.2f} | {b['compactions']} "
                     f"({b['max_compaction_ms']:.1f}) | {b['other_processes_cores']:.2f} |")
        L += ["", "*other* is validation, the log entry's safetensors encoding and building the new view."]
    et = res.get("inproc", {}).get("encode_threads")
    if et:
        L += ["", "Encoding one fact (the write's biggest part), median (p90) ms, each way in blocks of calls, two "
              "rounds in ABBA order. The worker thread is anyio's pool, where FastAPI runs the sync write route:",
              "",
              "| torch intra-op threads | main thread | worker thread |", "| --- | --- | --- |"]
        for key, name in (("default", f"{et['default_threads']} (torch's default)"), ("one", "1")):
            w = et.get(f"{key}_worker")
            L.append(f"| {name} | {et[key]['median']:.2f} ({et[key]['p90']:.2f}) | "
                     + (f"{w['median']:.2f} ({w['p90']:.2f}) |" if w else "|"))
    if res.get("update"):
        L += ["", "## 2. The memory update alone", "",
              f"`EpisodicMemory.update(state, z, +1.0, inplace=True)`, memory pre-filled with "
              f"{res['args']['prefill']} random unit latents (timing does not depend on their content); one (1,384) "
              "latent per update, then batches of 64 in one update. CUDA timings synchronize before and after.", "",
              "| device | K | single median ms | p90 | p99 | max | n | batch of 64 median ms | per fact ms | "
              "other processes' cores |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in res["update"] + res.get("cuda_update", []):
            dev = r["device"] + (f" ({r['machine']})" if r.get("machine") else "")
            b = r["batch64_ms"]["median"]
            L.append(f"| {dev} | {r['K']} | {fmt_stats(r['single_ms'], nd=3)} | {b:.2f} | {b / 64:.3f} | "
                     f"{r.get('other_processes_cores', float('nan')):.2f} |")
        if res.get("cuda_update"):
            c = res["cuda_update"][0]
            L += ["", f"CUDA rows: measured on {c['machine']} on {c['date']} with `--sections update` there, merged "
                  "from `service_bench_cuda.json`; the CPU rows above are this machine's."]
        if not res.get("cuda_update") and not m["cuda_device"]:
            L += ["", "No CUDA here; `--sections update` on a CUDA machine (then `--cuda-json`) adds those rows."]
    q = res.get("inproc", {}).get("query")
    if q:
        md = q["median"]
        oos = q["out_of_scope"]
        L += ["", "## 3. Query overhead over the plain LLM", "",
              f"{q['facts_written']} facts written (one batch); their paraphrases (`rephrase_prompt`) are the "
              f"queries. The scope detector took {q['in_scope']} of the {q['paraphrases']} in scope; the first "
              f"{q['prompts']} of those are measured. Both sides generate exactly {q['tokens']} tokens (greedy, "
              "min_new_tokens = max_new_tokens): *memory* = `Editor.recall(..., 'auto')` then the conditioner with "
              "the recalled facts in the prompt; *plain* = the conditioner with no readout (the bare prompt, what "
              "memory 'off' runs). Each side runs twice per prompt in ABBA order and its faster run counts. "
              "Overhead = recall time + (memory generation - plain generation), per prompt. Extra prefill = one "
              "forward pass over each prompt (median of 3); extra decode = the rest of the generation difference. "
              f"Other processes kept {q['other_processes_cores']:.2f} cores busy meanwhile.", "",
              "| part (in scope) | median ms |", "| --- | --- |",
              f"| scope decision (encode prompt + similarity to all facts) | {md['scope_ms']:.2f} |",
              f"| of which encoding the prompt (timed alone) | {md['encode_ms']:.2f} |",
              f"| memory read + nearest facts | {md['read_ms']:.3f} |",
              f"| extra prefill ({md['prompt_tokens_plain']:.0f} -> {md['prompt_tokens_memory']:.0f} prompt tokens) "
              f"| {md['extra_prefill_ms']:.1f} |",
              f"| extra decode (rest of the generation difference: longer KV cache) | {md['extra_decode_ms']:.1f} |",
              f"| **overhead** | **{md['overhead_ms']:.1f} ({md['overhead_pct']:.1f} % median, "
              f"{q['pooled_overhead_pct']:.1f} % pooled)** |",
              f"| plain generation, {q['tokens']} tokens | {md['gen_plain_ms']:.0f} |",
              f"| memory generation, {q['tokens']} tokens | {md['gen_memory_ms']:.0f} |", ""]
        if oos:
            L += [f"Out of scope ({oos['n']} paraphrases) a query runs the plain LLM unchanged after the scope "
                  f"decision: {oos['recall_ms']:.1f} ms median, {oos['overhead_pct']:.1f} % of plain generation.", ""]
        L += [f"Sanity of what was measured (in-scope prompts): the right fact recalled first for "
              f"{q['right_fact_first']}/{q['prompts']}; the new target in the answer for "
              f"{q['answer_has_new_target']}/{q['prompts']} with memory, {q['plain_answer_has_new_target']}/"
              f"{q['prompts']} without."]
    st = res.get("startup", {})
    if st:
        L += ["", "## 4. Start-up", "",
              "Launch of `python -m service.cli serve` to the first `/readyz` 200 (polled every 50 ms). Phases from "
              "the server's log timestamps.", "",
              "| start | seconds | python imports | models (+ restore) | bind + first probe | other processes' cores |",
              "| --- | --- | --- | --- | --- | --- |"]

        def row(name: str, s: float, ph: dict, cores: float) -> str:
            return (f"| {name} | {s:.2f} | {ph.get('python_imports_s', float('nan')):.2f} | "
                    f"{ph.get('models_and_restore_s', float('nan')):.2f} | "
                    f"{ph.get('bind_and_first_probe_s', float('nan')):.2f} | {cores:.2f} |")

        if "cold_s" in st:
            L.append(row("cold (empty model cache: GGUF converted)", st["cold_s"], st["cold_phases"],
                         st["cold_other_cores"]))
        for i, (s, ph, c) in enumerate(zip(st["warm_s"], st["warm_phases"], st["warm_other_cores"], strict=True)):
            L.append(row(f"warm #{i + 1}, empty store", s, ph, c))
        for i, (s, ph, c) in enumerate(zip(st.get("warm_restore_s", []), st.get("warm_restore_phases", []),
                                           st.get("warm_restore_other_cores", []), strict=True)):
            L.append(row(f"warm #{i + 1}, {st['restore_facts']} facts to restore", s, ph, c))
        if "warm_redis_s" in st:
            L.append(f"| warm, Redis store (empty; started beside the file-store server) | {st['warm_redis_s']:.2f} "
                     "| | | | |")
        if "sync_after_cold_s" in st:
            L += ["", f"After the cold start the script runs `sync` ({st['sync_after_cold_s']:.1f} s) so the "
                  "converted weights' writeback does not slow the fsyncs measured next. *Cold* means an empty model "
                  "cache, not a cold OS page cache."]
    L += ["", "![latency](" + os.path.relpath(out_dir / "service_bench.png", path.parent) + ")", ""]
    path.write_text("\n".join(L))


def plot(res: dict, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    ax = axes[0]
    rows = res.get("update", []) + res.get("cuda_update", [])
    for dev in sorted({r["device"] + (f" ({r['machine']})" if r.get("machine") else "") for r in rows}):
        rs = sorted((r for r in rows if r["device"] + (f" ({r['machine']})" if r.get("machine") else "") == dev),
                    key=lambda r: r["K"])
        Ks = [r["K"] for r in rs]
        med = np.array([r["single_ms"]["median"] for r in rs])
        p90 = np.array([r["single_ms"]["p90"] for r in rs])
        ax.errorbar(Ks, med, yerr=[np.zeros_like(med), p90 - med], marker="o", capsize=3,
                    label=f"{dev}: 1 fact (median, bar to p90)")
        ax.plot(Ks, [r["batch64_ms"]["median"] for r in rs], marker="s", ls="--", label=f"{dev}: batch of 64")
    ax.axhline(TARGETS["update_ms_k512"], color="red", lw=0.8, ls=":", label="target 1 ms (K=512)")
    ax.set(xscale="log", yscale="log", xlabel="slots K", ylabel="ms per update", title="EpisodicMemory.update")
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xticks([512, 1024, 2048, 4096], ["512", "1024", "2048", "4096"])
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")

    ax = axes[1]
    for h in res.get("http", []):
        lat = np.sort(h["latency_ms"])
        ax.plot(lat, np.arange(1, len(lat) + 1) / len(lat), label=f"{h['label']} (median {np.median(lat):.1f} ms)")
    for h in res.get("http_contention", []):
        lat = np.sort(h["latency_ms"])
        ax.plot(lat, np.arange(1, len(lat) + 1) / len(lat), ls="--",
                label=f"{h['label']}, one core busy elsewhere (median {np.median(lat):.0f} ms)")
    ax.axvline(TARGETS["http_write_ms"], color="red", lw=0.8, ls=":", label="target 25 ms")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set(xlabel="ms per POST (client side)", ylabel="fraction of writes",
           title="One fact written over HTTP")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")

    ax = axes[2]
    q = res.get("inproc", {}).get("query")
    if q:
        md = q["median"]
        parts = {"scope (encode)": md["scope_ms"], "read": md["read_ms"], "extra prefill": md["extra_prefill_ms"],
                 "extra decode": md["extra_decode_ms"]}
        ax.barh(["plain generation"], [md["gen_plain_ms"]], color="grey")
        left = 0.0
        for name, v in parts.items():
            ax.barh(["memory overhead"], [max(v, 0.0)], left=left, label=f"{name} {v:.1f} ms")
            left += max(v, 0.0)
        ax.axvline(md["gen_plain_ms"] * TARGETS["query_overhead_pct"] / 100, color="red", lw=0.8, ls=":",
                   label="10 % of plain")
        ax.set(xlabel="ms (medians)", title=f"Query: overhead {md['overhead_pct']:.1f} % of plain, "
               f"{q['tokens']} tokens")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------


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
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data",
                    help="folder with counterfact-train.json.gz (default: the repo's ../shared/data)")
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
    QUIET["max_s"] = args.wait_quiet
    t_start = time.perf_counter()

    res: dict[str, Any] = {"machine": machine_info(),
                           "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                           "targets": TARGETS}
    log.info("machine: %s", res["machine"])
    needs_data = {"startup", "http", "inproc"} & set(args.sections)
    records = load_records(args.data, max(args.restore_facts, args.http_writes + 1, args.breakdown_writes + 1,
                                          args.query_facts)) if needs_data else []
    with tempfile.TemporaryDirectory(prefix="larimar-bench-") as tmp:
        work = Path(tmp)
        cache = work / "model-cache"
        if {"startup", "http"} & set(args.sections):
            cache = section_startup_http(args, work, records, res)
        if "inproc" in args.sections:
            section_inproc(args, work, records, cache, res)
    if "update" in args.sections:
        section_update(args, res)

    res["cuda_update"] = merged_cuda(args)
    res["machine"]["loadavg_end"] = os.getloadavg()
    res["quiet_waits"] = QUIET["waits"]
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
