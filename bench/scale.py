"""Cost against the number of facts in one memory, both stores: does size stop mattering?

    python -m bench.scale [--sizes 1000 10000 100000 1000000] [--stores sqlite redis] [--out bench/results]

For each store and each N (growing, one memory): the memory is filled to N in process with synthetic facts
("Synthetic fact #i ...", 64 bytes of metadata) and precomputed random unit latents (encoding a million
facts would take an hour on this CPU and measures the encoder, not the memory), then a real ``larimar
serve`` starts on that store and is measured over HTTP with real texts through the real encoder:

- start-up to /readyz 200 (models + restore) and the restore alone, in process;
- single-fact write (POST .../facts) p50 / p99, batch write of 256 facts (facts/s);
- forget (DELETE .../facts/{id}) p50;
- query without the LLM: the /query route's own timings for prompt encoding, scope and readout + lookup;
- the server's RSS, and the bytes the store keeps per fact.

Writes ``<out>/scale.json`` (with the machine) and ``<out>/scale.png`` (log-log). Redis is our own
redis-server with docker/redis.conf's durability (AOF, fsync always).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from tqdm import tqdm

from bench.processes import REPO, RedisServer, ServiceProcess
from bench.service_bench.cpu import stats
from bench.service_bench.servers import http_batches
from bench.tables import fmt, table
from memory_core import MemoryConfig
from models.device import describe_machine
from service.memories import MemoryRegistry
from service.store import open_store
from training.data import DEFAULT_DATA, counterfact

log = logging.getLogger("bench.scale")
MEMORY = "scale"
INDEX_ABOVE = 50_000  # the service's default LARIMAR_INDEX_ABOVE
TARGETS = {"write_p50_ms": 20.0, "forget_p50_ms": 30.0, "lookup_ms_1m": 10.0, "batch_facts_s": 350.0,
           "restore_s_1m": 60.0, "rss_gib_1m": 2.5}


def fill(url: str, start: int, stop: int, batch: int = 256) -> float:
    """Facts start..stop-1 written in process, as the service writes them (store, log, memory update)."""
    reg = MemoryRegistry(open_store(url), MemoryConfig(), "cpu", snapshot_every=100)
    reg.restore()
    g = torch.Generator().manual_seed(start)
    t0 = time.perf_counter()
    for b in tqdm(range(start, stop, batch), desc=f"fill {start}->{stop}", leave=False):
        n = min(batch, stop - b)
        Z = torch.nn.functional.normalize(torch.randn(n, 384, generator=g), dim=-1)  # (n, C) unit latents
        reg.write(MEMORY, [(f"Synthetic fact #{b + i}: item {b + i} is kept on shelf {(b + i) % 997}.",
                            {"source": "bench.scale", "batch": b}) for i in range(n)], Z)
    took = time.perf_counter() - t0
    reg.close()
    return took


def restore_s(url: str) -> float:
    t0 = time.perf_counter()
    reg = MemoryRegistry(open_store(url), MemoryConfig(), "cpu", snapshot_every=100)
    reg.restore()
    took = time.perf_counter() - t0
    reg.close()
    return took


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def index_recall(url: str, encoded_prompts: torch.Tensor, n_queries: int = 1000) -> dict[str, Any]:
    """recall@1 of the approximate index against the exact scan, on this store's latents: queries are stored
    latents with noise (a near duplicate, as a paraphrase is) and real encoded questions (far from any)."""
    reg = MemoryRegistry(open_store(url), MemoryConfig(), "cpu", snapshot_every=100)
    reg.restore()
    exact_reading = reg.reading(MEMORY)  # before the index: exact scans
    t0 = time.perf_counter()
    reg.index_now(MEMORY)
    build = time.perf_counter() - t0
    reading = reg.reading(MEMORY)
    latents = reading.live_latents()  # (N, C)
    g = torch.Generator().manual_seed(1)
    rows = torch.randint(0, reading.live, (n_queries,), generator=g)
    near = torch.nn.functional.normalize(latents[rows].float() + 0.6 * torch.randn(n_queries, 384, generator=g)
                                         / 384**0.5, dim=-1)
    out: dict[str, Any] = {"build_s": build, **(reading.index_params or {})}
    for name, Q in (("near", near), ("questions", encoded_prompts[:n_queries])):
        exact = [row[0] for row in exact_reading.nearest(Q, 1)]
        t0 = time.perf_counter()
        approx = [row[0] for row in reading.nearest(Q, 1)]
        elapsed = time.perf_counter() - t0
        # a hit: the same fact, or one with the very same latent (the measured texts are written at every N,
        # so a question's fact is there several times, and which copy ranks first is a tie)
        same = [a.id == e.id or torch.equal(*reading.latents([a, e])) for a, e in zip(approx, exact, strict=True)]
        s_exact = torch.tensor([e.similarity for e in exact])
        s_approx = torch.tensor([a.similarity for a in approx])
        out[f"recall_at_1_{name}"] = sum(same) / len(same)
        # the decision that matters: in scope or not at the default decoder's threshold (0.45)
        out[f"scope_agreement_{name}"] = float(((1 - s_exact <= 0.45) == (1 - s_approx <= 0.45)).float().mean())
        out[f"best_cos_exact_median_{name}"] = float(s_exact.median())
        out[f"ms_per_query_{name}"] = elapsed / len(Q) * 1e3
    reg.close()
    log.info("index recall@1 vs exact at %d facts: %s", reading.live, out)
    return out


def wait_for_index(c: httpx.Client, base: str, timeout: float = 600) -> float | None:
    """Seconds until the server's approximate index is current (None: it stays exact at this size)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        info = c.get(base).json()
        if info.get("lookup", "exact") == "index":
            return time.perf_counter() - t0
        if info["facts"] <= INDEX_ABOVE:
            return None
        time.sleep(0.5)
    return None


def measure(server: ServiceProcess, texts: list[str], prompts: list[str], writes: int, forgets: int,
            queries: int, mode_field: str = "memory_mode") -> dict[str, Any]:
    base = f"/v1/memories/{MEMORY}"
    out: dict[str, Any] = {}
    with httpx.Client(base_url=server.base, timeout=120) as c:
        if mode_field == "memory_mode":
            out["index_ready_after_start_s"] = wait_for_index(c, base)
        for t in texts[:3]:  # warm-up
            c.post(f"{base}/facts", json={"text": t}).raise_for_status()
        lat, steps = [], []
        for t in texts[3 : 3 + writes]:
            t0 = time.perf_counter()
            r = c.post(f"{base}/facts", json={"text": t})
            lat.append((time.perf_counter() - t0) * 1e3)
            r.raise_for_status()
            timing = r.headers.get("server-timing", "")  # the service's own split (absent in older versions)
            steps.append({p.split(";")[0]: float(p.split("dur=")[1]) for p in timing.split(", ") if "dur=" in p})
        out["write_ms"] = stats(lat)
        if steps and steps[0]:
            out["write_server_ms_p50"] = {k: float(np.median([s.get(k, 0.0) for s in steps])) for k in steps[0]}
        rest = texts[3 + writes :]
        t0, n = time.perf_counter(), 0
        for i in range(0, min(len(rest), 4 * 256), 256):
            body = {"facts": [{"text": t} for t in rest[i : i + 256]]}
            n += len(c.post(f"{base}/facts/batch", json=body).raise_for_status().json()["facts"])
        out["batch_facts_s"] = n / (time.perf_counter() - t0)
        total = c.get(base).raise_for_status().json()["facts"]
        rng = np.random.default_rng(0)
        ids = [c.get(f"{base}/facts", params={"limit": 1, "offset": int(o)}).json()["facts"][0]["id"]
               for o in rng.choice(total, size=forgets, replace=False)]
        lat = []
        for fid in ids:
            t0 = time.perf_counter()
            c.delete(f"{base}/facts/{fid}").raise_for_status()
            lat.append((time.perf_counter() - t0) * 1e3)
        out["forget_ms"] = stats(lat)
        parts: dict[str, list[float]] = {"encode": [], "scope": [], "read": []}
        for p in prompts[:queries]:
            t = c.post(f"{base}/query", json={"prompt": p, "max_new_tokens": 1, mode_field: "on"}).json()
            for k in parts:
                parts[k].append(t["timings_ms"].get(k, 0.0))
        out["query_ms"] = {k: stats(v) for k, v in parts.items()}
        out["lookup_ms_p50"] = float(np.median([s + r for s, r in zip(parts["scope"], parts["read"], strict=True)]))
        out["facts_after"] = c.get(base).json()["facts"]
    out["rss_mib"] = rss_mib(server.proc.pid)
    return out


def stored_bytes(store: str, url: str, root: Path) -> float:
    if store == "redis":
        import redis

        info = redis.Redis.from_url(url).info("memory")
        return float(info["used_memory"])
    return float(sum(p.stat().st_size for p in root.rglob("*") if p.is_file()))


def run_store(store: str, sizes: list[int], work: Path, cache: Path, texts: list[str], prompts: list[str],
              args: argparse.Namespace, encoded: torch.Tensor) -> list[dict[str, Any]]:
    rows = []
    with contextlib.ExitStack() as stack:
        if store == "redis":
            rs = RedisServer(work / "redis")
            rs.start()
            stack.callback(rs.stop)
            url, root = rs.url, work / "redis"
        else:
            url, root = f"file://{work / 'sqlite'}", work / "sqlite"
        written = 0
        for n in sizes:
            fill_s = fill(url, written, n) if n > written else 0.0
            fill_rate = (n - written) / fill_s if fill_s else None
            written = n
            restore = restore_s(url)
            recall = index_recall(url, encoded) if n > INDEX_ABOVE else None
            server = ServiceProcess(work / f"serve-{store}-{n}.log", LARIMAR_STORE_URL=url,
                                    LARIMAR_MODEL_CACHE_DIR=str(cache), LARIMAR_PURGE_DELAY_S="3600")
            try:
                start = server.start(timeout=1200)
                m = measure(server, texts, prompts, args.writes, args.forgets, args.queries)
            finally:
                server.stop()
            written = m["facts_after"]
            row = {"store": store, "n": n, "fill_facts_s_inproc": fill_rate, "restore_s": restore,
                   "start_s": start, "bytes_per_fact": stored_bytes(store, url, root) / written,
                   "index_recall": recall} | m
            log.info("%s N=%d: write p50 %.1f ms p99 %.1f, forget p50 %.1f, lookup %.1f ms, batch %.0f facts/s, "
                     "restore %.1f s, RSS %.0f MiB", store, n, m["write_ms"]["median"], m["write_ms"]["p99"],
                     m["forget_ms"]["median"], m["lookup_ms_p50"], m["batch_facts_s"], restore, m["rss_mib"])
            rows.append(row)
    return rows


def fill_http(server: ServiceProcess, start: int, stop: int) -> float:
    """Facts start..stop-1 through the routes (any version of the service), in batches of 256; facts/s."""
    t0 = time.perf_counter()
    http_batches(server, [f"Synthetic fact #{i}: item {i} is kept on shelf {i % 997}." for i in range(start, stop)],
                 MEMORY, 256)
    return (stop - start) / (time.perf_counter() - t0)


def run_old(rev: str, sizes: list[int], work: Path, cache: Path, texts: list[str], prompts: list[str],
            args: argparse.Namespace) -> list[dict[str, Any]]:
    """The same measurements on an older commit (its one-blob file store), filled over HTTP: the encoder is
    in its fill rate, and its own /query timings have no separate prompt encoding (scope includes it)."""
    tree = work / "old"
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=REPO, check=True,
                   capture_output=True)
    rows, written = [], 0
    try:
        server = ServiceProcess(work / "serve-old.log", cwd=tree, PYTHONPATH=str(tree),
                                LARIMAR_STORE_URL=f"file://{work / 'old-store'}", LARIMAR_MODEL_CACHE_DIR=str(cache))
        server.start(timeout=600)
        try:
            for n in sizes:
                rate = fill_http(server, written, n)
                m = measure(server, texts, prompts, args.writes, args.forgets, args.queries, mode_field="memory")
                written = m["facts_after"]
                rows.append({"store": f"old {rev[:7]} (file)", "n": n, "fill_facts_s_http": rate,
                             "rss_mib": m["rss_mib"]} | m)
                log.info("old %s N=%d: write p50 %.1f ms, forget p50 %.1f, lookup %.1f ms, batch %.0f facts/s", rev,
                         n, m["write_ms"]["median"], m["forget_ms"]["median"], m["lookup_ms_p50"], m["batch_facts_s"])
        finally:
            server.stop()
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, capture_output=True)
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    series = [("write p50", lambda r: r["write_ms"]["median"]), ("forget p50", lambda r: r["forget_ms"]["median"]),
              ("scope + read + lookup p50", lambda r: r["lookup_ms_p50"])]
    colours = {"write p50": "tab:blue", "forget p50": "tab:orange", "scope + read + lookup p50": "tab:green"}
    for store, style in zip(sorted({r["store"] for r in rows}, key=lambda s: (s.startswith("old"), s)),
                            ("-", "--", ":"), strict=False):
        rs = sorted((r for r in rows if r["store"] == store), key=lambda r: r["n"])
        ns = [r["n"] for r in rs]
        for name, get in series:
            axes[0].plot(ns, [get(r) for r in rs], style, color=colours[name], marker="o", label=f"{name} ({store})")
        if "restore_s" in rs[0]:
            axes[1].plot(ns, [r["restore_s"] for r in rs], style, marker="o", label=f"restore ({store})")
        axes[2].plot(ns, [r["rss_mib"] / 1024 for r in rs], style, marker="o", label=f"server RSS ({store})")
    axes[0].axhline(TARGETS["write_p50_ms"], color="grey", lw=0.8, ls=":", label="write target 20 ms")
    axes[0].set(xscale="log", yscale="log", xlabel="facts in the memory", ylabel="ms", title="Latency against N")
    axes[1].set(xscale="log", yscale="log", xlabel="facts in the memory", ylabel="s", title="Restore (in process)")
    axes[2].set(xscale="log", yscale="log", xlabel="facts in the memory", ylabel="GiB", title="Server RSS")
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


BEGIN, END = "<!-- scale:begin (python -m bench.scale) -->", "<!-- scale:end -->"


def recall_cell(rec: dict[str, Any] | None) -> str:
    if not rec:
        return "exact scan"
    return (f"{rec['recall_at_1_near']:.3f} / {rec['recall_at_1_questions']:.3f} (scope decision agrees: "
            f"{rec['scope_agreement_near']:.3f} / {rec['scope_agreement_questions']:.3f})")


def table_md(res: dict[str, Any]) -> str:
    head = ["store", "facts N", "write p50 / p99", "server: encode / store / apply", "forget p50", "batch facts/s",
            "prompt encode p50", "scope + read + lookup p50", "index recall@1 near / questions",
            "restore (in process)", "start to ready", "server RSS", "bytes stored per fact"]
    rows = []
    for r in sorted(res["rows"], key=lambda r: (r["store"].startswith("old"), r["store"], r["n"])):
        sv = r.get("write_server_ms_p50")
        rows.append([r["store"], f"{r['n']:,}", f"{fmt(r['write_ms']['median'])} / {fmt(r['write_ms']['p99'])} ms",
                     " / ".join(fmt(sv.get(k)) for k in ("encode", "store_append", "apply")) + " ms" if sv else "–",
                     f"{fmt(r['forget_ms']['median'])} ms", f"{r['batch_facts_s']:.0f}",
                     f"{fmt(r['query_ms']['encode']['median'])} ms" if r["query_ms"]["encode"]["median"] else "–",
                     f"{fmt(r['lookup_ms_p50'])} ms", recall_cell(r.get("index_recall")),
                     f"{fmt(r.get('restore_s'))} s" if "restore_s" in r else "–",
                     f"{fmt(r.get('start_s'))} s" if "start_s" in r else "–", f"{r['rss_mib'] / 1024:.2f} GiB",
                     f"{r['bytes_per_fact']:.0f}" if "bytes_per_fact" in r else "–"])
    if not any(r.get("write_server_ms_p50") for r in res["rows"]):  # runs before the service reported its split
        head, rows = head[:3] + head[4:], [row[:3] + row[4:] for row in rows]
    return f"Machine: `{res['machine']}`, {res['date']}. Fill: {res['fill']}.\n\n" + table(head, rows)


def write_doc(res: dict[str, Any], doc: Path) -> None:
    text = doc.read_text() if doc.exists() else f"# Scale\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN)
    doc.write_text(f"{head}{BEGIN}\n{table_md(res)}\n{END}{rest.split(END, 1)[1]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000, 1_000_000])
    ap.add_argument("--stores", nargs="+", choices=("sqlite", "redis"), default=["sqlite", "redis"])
    ap.add_argument("--writes", type=int, default=60)
    ap.add_argument("--forgets", type=int, default=30)
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "larimar",
                    help="the model cache (warm: the GGUF is converted once)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--old-rev", help="also measure this older commit (e.g. 821b610, the one-blob store)")
    ap.add_argument("--old-sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--only-old", action="store_true", help="measure the old commit alone, adding to scale.json")
    ap.add_argument("--doc", type=Path, default=REPO / "docs" / "scale.md", help="the table goes here")
    ap.add_argument("--from-json", action="store_true", help="measure nothing: redraw the plot and table")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.from_json:
        res = json.loads((args.out / "scale.json").read_text())
        plot(res["rows"], args.out / "scale.png")
        write_doc(res, args.doc)
        return
    cases = counterfact(args.data, "dev")[:4000]  # real texts for the measured writes and queries
    texts, prompts = [c.fact for c in cases], [c.paraphrases[0] for c in cases]
    encoded = torch.empty(0)
    if not args.only_old and max(args.sizes) > INDEX_ABOVE:
        from models.encoder import TextEncoder
        from models.paths import DEFAULT_ENCODER

        enc = TextEncoder(DEFAULT_ENCODER)
        encoded = torch.cat([enc.encode(prompts[i : i + 256]) for i in range(0, 1000, 256)])[:1000]
    res: dict[str, Any] = {"machine": describe_machine(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "targets": TARGETS, "args": {k: str(v) for k, v in vars(args).items()},
                           "fill": "synthetic facts with precomputed random unit latents, written in process "
                                   "through MemoryRegistry in batches of 256; measured calls use CounterFact dev "
                                   "texts through the real encoder", "rows": []}
    args.out.mkdir(parents=True, exist_ok=True)
    previous = json.loads((args.out / "scale.json").read_text()) if (args.out / "scale.json").exists() else None
    if args.only_old:
        res = previous
        res["rows"] = [r for r in res["rows"] if not r["store"].startswith("old")]
    elif previous and not args.old_rev and "old" in previous:  # keep the old commit's rows of an earlier run
        res["rows"] += [r for r in previous["rows"] if r["store"].startswith("old")]
        res["old"] = previous["old"]
    for store in [] if args.only_old else args.stores:
        with tempfile.TemporaryDirectory(prefix=f"larimar-scale-{store}-") as tmp:
            res["rows"] += run_store(store, args.sizes, Path(tmp), args.cache, texts, prompts, args, encoded)
            (args.out / "scale.json").write_text(json.dumps(res, indent=1))
    if args.old_rev:
        with tempfile.TemporaryDirectory(prefix="larimar-scale-old-") as tmp:
            res["rows"] += run_old(args.old_rev, args.old_sizes, Path(tmp), args.cache, texts, prompts, args)
        res["old"] = {"rev": args.old_rev, "fill": "over HTTP, batches of 256 synthetic texts (encoded)"}
        (args.out / "scale.json").write_text(json.dumps(res, indent=1))
    plot(res["rows"], args.out / "scale.png")
    write_doc(res, args.doc)
    log.info("wrote %s, %s and %s", args.out / "scale.json", args.out / "scale.png", args.doc)


if __name__ == "__main__":
    main()
