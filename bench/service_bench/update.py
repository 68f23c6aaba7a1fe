"""``EpisodicMemory.update`` alone, one fact and batches of 64, at K = 512..4096 on the CPU and CUDA."""

from __future__ import annotations

import argparse
import logging
import time

import torch
from tqdm import tqdm

from bench.service_bench.cpu import CpuWatch, Quiet, stats
from memory_core import EpisodicMemory, MemoryConfig

log = logging.getLogger("service_bench")


def section_update(args: argparse.Namespace, res: dict, quiet: Quiet) -> None:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    quiet.wait("memory update")
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
