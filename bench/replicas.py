"""Replicas on one Redis under faults and load (issue 25): real ``larimar serve`` processes, a real redis-server.

Scenarios (each a function here; tests/test_replica_faults.py runs shortened ones in CI):

- ``kills``: writers (single and batch writes, forgets of their own acknowledged facts) spread over every
  replica while one replica is SIGKILLed and restarted ``--cycles`` times.
- ``redis``: writers while Redis itself is SIGKILLed and restarted from its AOF (``appendfsync always``);
  meanwhile queries keep being answered from memory, writes answer 503, never 201, and resume by themselves.
- ``load``: ``--clients`` clients for ``--seconds`` (writes, batch writes, forgets, documents, queries, scores).
- ``lag``: a write through one replica, then the others polled until they report its operation (Larimar-Seq):
  visibility lag p50 / p99; ``throughput``: acknowledged writes/s with 1, 2 and 3 replicas, answered
  queries/s with 1 and 3.

After each fault or load run ``verify`` checks: every acknowledged write is stored and held by every replica,
no acknowledged forget is, no fact is stored twice, every replica is at the store's head with the same facts
(``facts_digest``), the same state (fingerprints, to round-off) and a state equal to a direct solve from its
facts (``deviation``). A request cut by a kill is not acknowledged: it may have landed or not.

    python -m bench.replicas [--scenarios kills,redis,load,lag,throughput] [--cycles 20] [--clients 32] \
        [--seconds 60] [--out bench/results/replicas.json]
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import logging
import os
import random
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import httpx

from bench.engine_overhead import machine
from bench.hostile_load import document_text, fact_text
from bench.processes import RedisServer, ServiceProcess

log = logging.getLogger("bench.replicas")
MEMORY = "shared"
BASE = f"/v1/memories/{MEMORY}"


class Cluster:
    """Redis (AOF, fsync always) and ``replicas`` servers on it, each with ``env`` besides the store URL. Replicas
    on one machine share its cores: each gets cores / replicas torch threads (LARIMAR_TORCH_THREADS) unless
    ``env`` says otherwise. With torch's default (one per core) in every replica, 3 replicas on 2 cores
    oversubscribed them and a replica's follower thread waited for a core: under 32 clients only 75 % of the
    changes were applied within 100 ms, 91 % with one thread each."""

    def __init__(self, root: Path, replicas: int = 3, **env: str) -> None:
        self.redis = RedisServer(root / "redis")
        env = {"LARIMAR_TORCH_THREADS": str(max(1, (os.cpu_count() or 1) // replicas))} | env
        self.nodes = [ServiceProcess(root / f"replica{i}.log", LARIMAR_STORE_URL=self.redis.url, **env)
                      for i in range(replicas)]
        self.torch_threads = int(env["LARIMAR_TORCH_THREADS"])

    def start(self, timeout: float = 600.0) -> None:
        self.redis.start()
        for node in self.nodes:  # one at a time: three processes loading models at once on 2 cores take longer
            node.start(timeout=timeout)

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
        self.redis.stop()

    @property
    def bases(self) -> list[str]:
        return [n.base for n in self.nodes]


@contextmanager
def cluster(replicas: int = 3, root: Path | None = None, **env: str) -> Iterator[Cluster]:
    with TemporaryDirectory() as tmp:
        c = Cluster(root or Path(tmp), replicas, **env)
        try:
            c.start()
            yield c
        finally:
            c.stop()


@dataclass
class Ledger:
    """What the clients were told: acknowledged writes and forgets, and every answer's status by kind."""

    written: dict[str, str] = field(default_factory=dict)  # fact id -> text
    forgotten: set[str] = field(default_factory=set)
    uncertain: set[str] = field(default_factory=set)  # forgets cut by a kill or answered 503: landed or not
    statuses: collections.Counter = field(default_factory=collections.Counter)  # (kind, status) -> count
    latencies: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    wrong: list[str] = field(default_factory=list)  # answers that break a guarantee
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, kind: str, status: int | str, seconds: float) -> None:
        with self.lock:
            self.statuses[(kind, status)] += 1
            if isinstance(status, int) and status < 300:
                self.latencies[kind].append(seconds)
            if isinstance(status, int) and status >= 500 and status != 503:
                self.wrong.append(f"{kind}: {status}")

    def summary(self) -> dict[str, Any]:
        by_kind: dict[str, dict[str, int]] = collections.defaultdict(dict)
        for (kind, status), n in sorted(self.statuses.items(), key=str):
            by_kind[kind][str(status)] = n
        return {"acknowledged_writes": len(self.written), "acknowledged_forgets": len(self.forgotten),
                "statuses": by_kind, "server_errors_not_503": len(self.wrong)}


class Client:
    """One client thread: picks a live replica and an action by weight, records what it was told."""

    def __init__(self, k: int, bases: Callable[[], list[str]], ledger: Ledger, weights: dict[str, float],
                 deadline: float, seed: int = 0) -> None:
        self.k, self.bases, self.ledger, self.deadline = k, bases, ledger, deadline
        self.rng = random.Random(seed * 1000 + k)
        self.kinds, self.weights = list(weights), list(weights.values())
        self.mine: list[str] = []  # acknowledged, not forgotten: what this client may forget
        self.n = 0
        self.http = httpx.Client(timeout=120)

    def run(self, stop: threading.Event | None = None) -> None:
        """Act until the deadline, or until ``stop`` is set."""
        try:
            while time.monotonic() < self.deadline and not (stop is not None and stop.is_set()):
                getattr(self, "do_" + self.rng.choices(self.kinds, self.weights)[0])()
        finally:
            self.http.close()

    def send(self, kind: str, path: str, body: dict[str, Any]) -> httpx.Response | None:
        base = self.rng.choice(self.bases())
        t0 = time.perf_counter()
        try:
            r = self.http.post(base + path, json=body)
        except httpx.TransportError as e:  # a replica killed under it: not acknowledged, may have landed
            self.ledger.record(kind, type(e).__name__, time.perf_counter() - t0)
            time.sleep(0.05)
            return None
        self.ledger.record(kind, r.status_code, time.perf_counter() - t0)
        if r.status_code == 503:
            time.sleep(min(2.0, float(r.headers.get("retry-after", "1") or 1)) * self.rng.random())
        return r

    def text(self) -> str:
        self.n += 1
        return fact_text(self.rng, self.k, self.n)

    def acknowledged(self, facts: list[dict[str, Any]]) -> None:
        with self.ledger.lock:
            for f in facts:
                self.ledger.written[f["id"]] = f["text"]
        self.mine += [f["id"] for f in facts]

    def do_write(self) -> None:
        r = self.send("write", BASE + "/facts", {"text": self.text()})
        if r is not None and r.status_code == 201:
            self.acknowledged([r.json()])

    def do_batch(self) -> None:
        r = self.send("batch", BASE + "/facts/batch", {"facts": [{"text": self.text()} for _ in range(3)]})
        if r is not None and r.status_code == 201:
            self.acknowledged(r.json()["facts"])

    def do_forget(self) -> None:
        if not self.mine:
            return self.do_write()
        fid = self.mine.pop(self.rng.randrange(len(self.mine)))
        r = self.send("forget", BASE + "/facts/forget", {"ids": [fid]})
        if r is not None and r.status_code == 200:
            with self.ledger.lock:
                self.ledger.forgotten.add(fid)
        elif r is not None and r.status_code == 404 and fid in self.ledger.uncertain:
            with self.ledger.lock:  # the forget whose answer was lost had landed
                self.ledger.forgotten.add(fid)
        elif r is not None and r.status_code == 404:
            self.ledger.wrong.append(f"forget of acknowledged fact {fid}: 404")
        elif r is None or r.status_code == 503:  # not acknowledged: it may have landed; tried again later
            with self.ledger.lock:
                self.ledger.uncertain.add(fid)
            self.mine.append(fid)

    def do_document(self) -> None:
        self.send("document", BASE + "/documents", {"text": document_text(self.rng, 1500), "title": f"d{self.k}"})

    def do_query(self) -> None:
        self.send("query", BASE + "/query", {"prompt": "Who painted the lighthouse?", "max_new_tokens": 8})

    def do_score(self) -> None:
        self.send("score", BASE + "/score", {"prompt": "The lighthouse was painted", "candidates": [" teal", " red"]})


def drive(bases: Callable[[], list[str]], ledger: Ledger, clients: int, seconds: float, weights: dict[str, float],
          seed: int = 0, during: Callable[[], None] | None = None) -> None:
    """``clients`` clients for ``seconds``; ``during`` (the faults) runs meanwhile in this thread."""
    deadline = time.monotonic() + seconds
    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(Client(k, bases, ledger, weights, deadline, seed).run) for k in range(clients)]
        if during is not None:
            during()
        for f in futures:
            f.result()


def stored_ids(base: str) -> list[str]:
    """Every fact id the store lists (the store is the one truth), in write order."""
    ids: list[str] = []
    with httpx.Client(base_url=base, timeout=120) as c:
        while True:
            page = c.get(BASE + "/facts", params={"limit": 1000, "offset": len(ids)}).json()
            ids += [f["id"] for f in page["facts"]]
            if len(page["facts"]) < 1000:
                return ids


def settled(bases: list[str], timeout: float = 30.0) -> list[dict[str, Any]]:
    """Each replica's /check once all report the same operation for two polls in a row."""
    t0, last = time.monotonic(), None
    with httpx.Client(timeout=120) as c:
        while True:
            seqs = [c.get(b + BASE).json().get("seq") for b in bases]
            if len(set(seqs)) == 1 and seqs == last:
                return [c.get(b + BASE + "/check").json() for b in bases]
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"replicas did not settle on one operation: {seqs}")
            last = seqs
            time.sleep(0.5)


def verify(bases: list[str], ledger: Ledger, tolerance: float = 1e-3) -> dict[str, Any]:
    """The checks of the module docstring; ``problems`` lists each one that fails."""
    checks = settled(bases)
    ids = stored_ids(bases[0])
    stored = set(ids)
    present = set(ledger.written) - ledger.forgotten
    problems = list(ledger.wrong)
    if lost := present - stored - ledger.uncertain:
        problems.append(f"{len(lost)} acknowledged writes not stored, e.g. {sorted(lost)[:3]}")
    if kept := ledger.forgotten & stored:
        problems.append(f"{len(kept)} acknowledged forgets still stored, e.g. {sorted(kept)[:3]}")
    if len(ids) != len(stored):
        problems.append(f"{len(ids) - len(stored)} facts stored twice")
    digest = hashlib.sha256("".join(i + "\n" for i in sorted(stored)).encode()).hexdigest()
    for base, check in zip(bases, checks, strict=True):
        if check["facts_digest"] != digest:
            problems.append(f"{base} holds other facts than the store ({check['facts']} vs {len(stored)})")
        if check["deviation"] > 1e-3:
            problems.append(f"{base}: state deviates {check['deviation']:.2e} from a solve over its facts")
        if spread(check, checks[0]) > tolerance:
            problems.append(f"{base}: state differs from {bases[0]}'s by {spread(check, checks[0]):.2e} of ||M||")
    return {"stored_facts": len(stored), "acknowledged_present": len(present), "seq": checks[0]["seq"],
            "deviation_max": max(c["deviation"] for c in checks),
            "state_spread": max(spread(c, checks[0]) for c in checks), "problems": problems}


def spread(a: dict[str, Any], b: dict[str, Any]) -> float:
    """How far two replicas' states are apart, by their fingerprints, as a share of ||M||_F (a projection on a
    random direction has that standard deviation, so this estimates ||M_a - M_b||_F / ||M_b||_F)."""
    diff = max(abs(x - y) for x, y in zip(a["fingerprint"], b["fingerprint"], strict=True))
    return diff / max(b["norm"], 1e-12)


WRITES = {"write": 4, "batch": 1, "forget": 2}
MIXED = {"write": 4, "batch": 1, "forget": 2, "document": 0.3, "query": 1, "score": 1}


def kills(c: Cluster, cycles: int, writers: int = 8, victim: int = 1, seed: int = 0) -> dict[str, Any]:
    """Writers on every replica while replica ``victim`` is SIGKILLed and restarted ``cycles`` times."""
    ledger, live = Ledger(), list(c.bases)
    restarts: list[float] = []
    stop = threading.Event()  # the clients stop with the faults

    def faults() -> None:
        for _ in range(cycles):
            time.sleep(1.0)
            live.remove(c.nodes[victim].base)
            c.nodes[victim].kill()
            restarts.append(c.nodes[victim].start())
            live.append(c.nodes[victim].base)
        stop.set()

    fault_thread = threading.Thread(target=faults)
    fault_thread.start()
    deadline = time.monotonic() + cycles * 600.0  # bounded in any case: a start times out before this
    with ThreadPoolExecutor(writers) as pool:
        futures = [pool.submit(Client(k, lambda: list(live), ledger, WRITES, deadline, seed).run, stop)
                   for k in range(writers)]
        fault_thread.join()
        for f in futures:
            f.result()
    return {"cycles": cycles, "writers": writers, "restart_s": summary(restarts), **ledger.summary(),
            **verify(c.bases, ledger)}


def redis_fault(c: Cluster, down_s: float = 3.0, writers: int = 4, seed: int = 1) -> dict[str, Any]:
    """Writers while Redis is SIGKILLed, kept down ``down_s`` (queries then must answer, writes 503) and
    restarted from its AOF; then writes must go through again without restarting any replica."""
    ledger, stop = Ledger(), threading.Event()
    during_outage: dict[str, Any] = {}

    def fault() -> None:
        time.sleep(2.0)
        c.redis.stop(kill=True)
        t0 = time.monotonic()
        with httpx.Client(timeout=120) as h:
            time.sleep(0.5)
            during_outage["query"] = h.post(c.bases[0] + BASE + "/query",
                                            json={"prompt": "Who painted the lighthouse?", "max_new_tokens": 4}
                                            ).status_code
            during_outage["write"] = h.post(c.bases[1] + BASE + "/facts", json={"text": "x during the outage"}
                                            ).status_code
            during_outage["readyz"] = [h.get(b + "/readyz").json().get("status") for b in c.bases]
        time.sleep(max(0.0, down_s - (time.monotonic() - t0)))
        c.redis.start()
        t1 = time.monotonic()
        with httpx.Client(timeout=120) as h:  # the first write that goes through after Redis is back
            while h.post(c.bases[2] + BASE + "/facts", json={"text": f"after the outage {t1}"}).status_code != 201:
                time.sleep(0.1)
        during_outage["writes_back_after_s"] = round(time.monotonic() - t1, 2)
        time.sleep(2.0)
        stop.set()

    thread = threading.Thread(target=fault)
    thread.start()
    with ThreadPoolExecutor(writers) as pool:
        deadline = time.monotonic() + 120
        futures = [pool.submit(Client(k, lambda: c.bases, ledger, WRITES, deadline, seed).run, stop)
                   for k in range(writers)]
        thread.join()
        for f in futures:
            f.result()
    return {"outage": during_outage, **ledger.summary(), **verify(c.bases, ledger)}


def load(c: Cluster, clients: int, seconds: float, seed: int = 2) -> dict[str, Any]:
    """``clients`` clients of every kind for ``seconds``, and meanwhile one more measuring the visibility lag."""
    ledger, done, seen = Ledger(), threading.Event(), {}
    prober = threading.Thread(target=lambda: seen.update(lag(c, until=done)))
    prober.start()
    try:
        drive(lambda: c.bases, ledger, clients, seconds, MIXED, seed)
    finally:
        done.set()
        prober.join()
    time.sleep(3.0)  # documents finish ingesting
    lat = {k: summary(v) for k, v in ledger.latencies.items()}
    return {"clients": clients, "seconds": seconds, "latency_s": lat, "lag_under_load_ms": seen.get("lag_ms"),
            "lag_samples_ms": seen.get("samples_ms"), "applied_lag_ms": applied_lag(c.bases), **ledger.summary(),
            **verify(c.bases, ledger)}


def applied_lag(bases: list[str]) -> dict[str, Any]:
    """The replicas' own measure (``larimar_replication_lag_seconds``, every replica's /metrics summed): from Redis
    logging a change to a replica applying it, without the HTTP round trips a client's poll adds under load.
    Quantiles are the upper bounds of the buckets they fall in."""
    from prometheus_client.parser import text_string_to_metric_families

    buckets: collections.Counter = collections.Counter()
    with httpx.Client(timeout=60) as h:
        for base in bases:
            for family in text_string_to_metric_families(h.get(base + "/metrics").text):
                if family.name == "larimar_replication_lag_seconds":
                    for sample in family.samples:
                        if sample.name.endswith("_bucket"):
                            buckets[float(sample.labels["le"])] += sample.value
    total = buckets.get(float("inf"), 0)
    out: dict[str, Any] = {"n": int(total)}
    for q in (0.5, 0.99):
        out[f"p{int(q * 100)}_at_most"] = next((round(le * 1000, 1) for le in sorted(buckets)
                                                if buckets[le] >= q * total), None) if total else None
    out["buckets_ms"] = {("inf" if le == float("inf") else round(le * 1000, 1)): int(n)
                         for le, n in sorted(buckets.items())}
    return out


def lag(c: Cluster, writes: int = 200, until: threading.Event | None = None) -> dict[str, Any]:
    """Per write through replica i: the time from its acknowledgement until every other replica reports its
    operation (GET /v1/memories/m, polled back to back); ``writes`` of them, or as many as fit until ``until``."""
    lags: list[float] = []
    with httpx.Client(timeout=60) as h:
        k = 0
        while (k < writes) if until is None else not until.is_set():
            src = c.bases[k % len(c.bases)]
            r = h.post(src + BASE + "/facts", json={"text": f"Visibility probe {k} was written through {src}."})
            k += 1
            if r.status_code != 201:
                time.sleep(0.1)
                continue
            acked, seq = time.perf_counter(), int(r.headers["larimar-seq"])
            for other in c.bases:
                if other == src:
                    continue
                while int(h.get(other + BASE).headers.get("larimar-seq", 0)) < seq:
                    pass
                lags.append(time.perf_counter() - acked)
    return {"writes": k, "lag_ms": {k: v if k == "n" else round(v * 1000, 2) for k, v in summary(lags).items()},
            "samples_ms": [round(x * 1000, 2) for x in lags]}


def throughput(root: Path, seconds: float = 20.0, writers: int = 8, askers: int = 6) -> dict[str, Any]:
    out: dict[str, Any] = {"writes_per_s": {}, "queries_per_s": {}}
    for n in (1, 2, 3):
        with cluster(n, root / f"t{n}") as c:
            ledger = Ledger()
            drive(lambda c=c: c.bases, ledger, writers, seconds, {"write": 1})
            out["writes_per_s"][n] = round(ledger.statuses.get(("write", 201), 0) / seconds, 2)
            if n in (1, 3):
                ledger = Ledger()
                drive(lambda c=c: c.bases, ledger, askers, seconds, {"query": 1})
                out["queries_per_s"][n] = round(ledger.statuses.get(("query", 200), 0) / seconds, 2)
            log.info("%d replicas: %s", n, out)
    return out


def summary(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {}
    s = sorted(xs)
    return {"n": len(s), "p50": round(statistics.median(s), 4), "p99": round(s[min(len(s) - 1, int(0.99 * len(s)))], 4),
            "max": round(s[-1], 4)}


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    if "lag" in results:
        samples = sorted(results["lag"]["samples_ms"])
        axes[0].plot(samples, [i / len(samples) for i in range(len(samples))], color="#1f77b4", label="idle")
        if results.get("load", {}).get("lag_samples_ms"):
            loaded = sorted(results["load"]["lag_samples_ms"])
            axes[0].plot(loaded, [i / len(loaded) for i in range(len(loaded))], color="#9467bd",
                         label=f"under {results['load']['clients']} clients")
        axes[0].set(xlabel="visibility lag across replicas (ms)", ylabel="fraction of writes", xscale="log",
                    title="write on one replica -> seen on the others")
        axes[0].axvline(100, color="#d62728", linestyle="--", label="goal: 100 ms p99")
        axes[0].legend()
    if "throughput" in results:
        t = results["throughput"]
        ns = [int(n) for n in t["writes_per_s"]]
        axes[1].bar([n - 0.2 for n in ns], list(t["writes_per_s"].values()), width=0.4, color="#2ca02c",
                    label="acknowledged writes/s")
        qs = [int(n) for n in t["queries_per_s"]]
        axes[1].bar([n + 0.2 for n in qs], list(t["queries_per_s"].values()), width=0.4, color="#ff7f0e",
                    label="answered queries/s")
        axes[1].set(xlabel="replicas (one 2-core machine)", xticks=[1, 2, 3], title="throughput")
        axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenarios", default="kills,redis,load,lag,throughput")
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--out", type=Path, default=Path("bench/results/replicas.json"))
    ap.add_argument("--keep", action="store_true", help="keep the other scenarios' results in --out")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request would cost the measured CPU
    wanted = args.scenarios.split(",")
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.keep and args.out.exists() else {}
    results["machine"] = machine() | {"torch_threads_per_replica": "cores // replicas (LARIMAR_TORCH_THREADS)"}
    with TemporaryDirectory() as tmp:
        root = Path(tmp)
        if {"kills", "redis", "load", "lag"} & set(wanted):
            with cluster(3, root / "c3") as c:
                for name, run in (("lag", lambda: lag(c)), ("kills", lambda: kills(c, args.cycles)),
                                  ("redis", lambda: redis_fault(c)),
                                  ("load", lambda: load(c, args.clients, args.seconds))):
                    if name in wanted:
                        log.info("scenario %s", name)
                        results[name] = run()
                        log.info("%s: %s", name, {k: v for k, v in results[name].items() if k != "samples_ms"})
        if "throughput" in wanted:
            results["throughput"] = throughput(root)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    plot(results, args.out.with_suffix(".png"))
    failed = [f"{k}: {p}" for k, v in results.items() if isinstance(v, dict) for p in v.get("problems", [])]
    print(json.dumps({k: v for k, v in results.items() if k != "lag"}, indent=1))
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
