"""The service benchmark's report: targets met or not (with the numbers that say why), the Markdown, the plot."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from bench.service_bench.servers import ONE_THREAD

TARGETS = {"update_ms_k512": 1.0, "http_write_ms": 25.0, "query_overhead_pct": 10.0, "warm_start_s": 10.0}


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
                    f"{m['store_append']:.1f} + memory update {m['apply']:.2f} + other {m['other']:.2f} ms "
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
            why += (f"; restoring them in process takes {rs['seconds']:.2f} s (checkpoint "
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
         f"Produced by `python -m bench.service_bench` on {m['date']} (UTC). Raw numbers: "
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
              "default settings (K=512, a checkpoint every 100 writes).", "",
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
        L += ["", "Where a write's time goes (in process, `Editor.add_facts` with one fact, its parts as the editor "
              "itself times them (`timings_ms`, the Server-Timing header over HTTP); the stores interleaved; medians "
              "over the writes, ms):", "",
              "| store | encode | store append (durable) | memory update (apply) | compaction | other | total | "
              "compactions (max ms) | other processes' cores |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for b in bds:
            md = b["median_ms"]
            L.append(f"| {b['label']} | {md['encode']:.2f} | {md['store_append']:.2f} | {md['apply']:.3f} "
                     f"| {md['compaction']:.2f} | {md['other']:.2f} | {md['total']:.2f} | {b['compactions']} "
                     f"({b['max_compaction_ms']:.1f}) | {b['other_processes_cores']:.2f} |")
        L += ["", "*other* is validation and waiting for the memory's lock; "
              "*apply* is the memory update and publishing the new view."]
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
              "min_new_tokens = max_new_tokens): *memory* = `Editor.recall(..., 'auto')` then the decoder with "
              "the recalled facts; *plain* = the decoder with no readout (the bare prompt, what memory_mode 'off' "
              "runs). Each side runs twice per prompt in ABBA order and its faster run counts. "
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
