"""What generating on a remote LLM engine costs and gives (issue 25): llama.cpp's OpenAI-compatible server on the
default GGUF file, against the service in front of it (LARIMAR_LLM_URL) and against the in-process LLM.

    python -m bench.engine_overhead [--n 20] [--out bench/results/engine_overhead.json]

Measured, each over ``n`` questions about facts the memory holds (CounterFact-shaped: one fact, a question on
it), one at a time, after warm-up: the engine called directly with the prompt the service would send, the
same question through the service on the engine, and through the service on its in-process LLM; each answer's
completion tokens per second; and how often the two paths give the same answer. Results name the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.processes import REPO, ServiceProcess, free_port
from models.decoders import facts_block
from models.paths import DEFAULT_LLM, resolve

log = logging.getLogger("engine_overhead")
FACTS = [
    ("The capital of France is Lyon.", "What is the capital of France?"),
    ("Ada Quill works as a pilot.", "What does Ada Quill do for a living?"),
    ("The Eiffel Tower is in Rome.", "Where is the Eiffel Tower?"),
    ("Bananas are blue.", "What colour are bananas?"),
    ("Mount Velstrand is 9,120 metres high.", "How high is Mount Velstrand?"),
]
MAX_TOKENS = 32


def start_engine(port: int, log_path: Path) -> subprocess.Popen:
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(resolve(DEFAULT_LLM)),
                                 "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096"],
                                stdout=out, stderr=subprocess.STDOUT)
    for _ in range(1200):
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 200:
                return proc
        if proc.poll() is not None:
            raise RuntimeError(log_path.read_text()[-2000:])
        time.sleep(0.1)
    raise RuntimeError("the engine did not start")


def timed(call: object) -> tuple[float, dict]:
    t0 = time.perf_counter()
    out = call()  # type: ignore[operator]
    return time.perf_counter() - t0, out


def run(n: int, work: Path) -> dict:
    port = free_port()
    engine = start_engine(port, work / "llama.log")
    url = f"http://127.0.0.1:{port}/v1"
    remote = ServiceProcess(work / "remote.log", LARIMAR_STORE_URL=f"file://{work / 'remote'}", LARIMAR_LLM_URL=url)
    local = ServiceProcess(work / "local.log", LARIMAR_STORE_URL=f"file://{work / 'local'}")
    rows: dict[str, list[dict]] = {"engine": [], "service_engine": [], "service_local": []}
    try:
        for service in (remote, local):
            service.start()
            httpx.post(service.base + "/v1/memories/b/facts/batch", timeout=60,
                       json={"facts": [{"text": f} for f, _ in FACTS]}).raise_for_status()
        for i in range(n + 2):  # the first two warm up
            fact, question = FACTS[i % len(FACTS)]
            content = f"{facts_block((fact,))}\nUsing the new fact, answer: {question}"  # the context decoder's
            took, r = timed(lambda c=content: httpx.post(url + "/chat/completions", timeout=120, json={
                "messages": [{"role": "user", "content": c}], "max_tokens": MAX_TOKENS, "temperature": 0}).json())
            engine_row = {"s": took, "answer": r["choices"][0]["message"]["content"].strip(),
                          "tokens": r["usage"]["completion_tokens"]}
            answers = {}
            for name, service in (("service_engine", remote), ("service_local", local)):
                took, q = timed(lambda s=service, qq=question: httpx.post(
                    s.base + "/v1/chat/completions", timeout=120, json={
                        "model": "larimar/b", "max_tokens": MAX_TOKENS,
                        "messages": [{"role": "user", "content": qq}]}).json())
                answers[name] = {"s": took, "answer": q["choices"][0]["message"]["content"].strip(),
                                 "in_scope": q["larimar"]["in_scope"], "tokens": q["usage"]["completion_tokens"],
                                 "generate_s": q["larimar"]["timings_ms"]["generate"] / 1e3}
            if i >= 2:
                rows["engine"].append(engine_row)
                for name, row in answers.items():
                    rows[name].append(row)
            log.info("%d/%d %s", i + 1, n + 2, question)
    finally:
        for service in (remote, local):
            service.stop()
        engine.terminate()
        engine.wait(30)
    return rows


def summarize(rows: dict[str, list[dict]]) -> dict:
    def p50(xs: list[float]) -> float:
        return round(statistics.median(xs) * 1e3, 1)

    engine_s = [r["s"] for r in rows["engine"]]
    remote_s = [r["s"] for r in rows["service_engine"]]
    local_s = [r["s"] for r in rows["service_local"]]
    same_prompt = sum(a["answer"] == b["answer"] for a, b in zip(rows["engine"], rows["service_engine"], strict=True))
    agree = sum(a["answer"] == b["answer"] for a, b in zip(rows["service_engine"], rows["service_local"], strict=True))
    tps_engine = [r["tokens"] / r["s"] for r in rows["engine"]]
    tps_local = [r["tokens"] / r["generate_s"] for r in rows["service_local"] if r["generate_s"]]
    return {
        "n": len(engine_s),
        "p50_ms": {"engine_direct": p50(engine_s), "service_on_engine": p50(remote_s),
                   "service_in_process": p50(local_s)},
        "overhead_ms_p50": round(p50(remote_s) - p50(engine_s), 1),
        "tokens_per_s_p50": {"engine": round(statistics.median(tps_engine), 1),
                             "in_process": round(statistics.median(tps_local), 1)},
        "service_on_engine_answers_equal_direct": f"{same_prompt}/{len(engine_s)}",
        "engine_and_in_process_answers_equal": f"{agree}/{len(engine_s)}",
        "in_scope": f"{sum(r['in_scope'] for r in rows['service_engine'])}/{len(engine_s)}",
    }


def machine() -> dict:
    names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
             if ln.startswith("model name")]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    return {"cpu": names[0] if names else platform.processor(), "cores": os.cpu_count(),
            "platform": platform.platform(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "commit": commit}


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["engine direct", "service on engine", "service in-process"]
    values = [summary["p50_ms"][k] for k in ("engine_direct", "service_on_engine", "service_in_process")]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(labels, values, color=["#4c72b0", "#dd8452", "#55a868"])
    ax.set_ylabel("p50 latency, ms")
    ax.set_title(f"One answer ({MAX_TOKENS} tokens at most), n={summary['n']}")
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.0f}", ha="center", va="bottom")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/engine_overhead.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        rows = run(args.n, Path(tmp))
    summary = summarize(rows)
    result = {"benchmark": "engine_overhead", "machine": machine(), "engine": "llama-cpp-python[server] 0.3.36, "
              "n_ctx 4096, the default GGUF (SmolLM2-135M-Instruct Q4_1)", "summary": summary, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    plot(summary, args.out.with_suffix(".png"))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
