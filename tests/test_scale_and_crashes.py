"""The per-fact store at the sizes and crashes the old blob store failed at: past its ceiling, killed mid-write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from bench.processes import ServiceProcess
from memory_core import MemoryConfig
from service.memories import MemoryRegistry
from service.store import open_store

CFG = MemoryConfig(slots=512, dim=384)


def unit_latents(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, CFG.dim, generator=g), dim=-1)


def test_a_memory_past_the_old_ceiling_still_checkpoints_forgets_and_restores(tmp_path: Path) -> None:
    """30,000 facts with 4 KB of metadata each: the old layout's JSON header passed 100 MB near 24,000."""
    url = f"file://{tmp_path / 'store'}"
    reg = MemoryRegistry(open_store(url), CFG, "cpu", snapshot_every=20, purge_delay_s=3600)
    reg.restore()
    meta = {"blob": "x" * 4000}
    ids: list[str] = []
    for b in range(0, 30_000, 256):
        n = min(256, 30_000 - b)
        ids += [f.id for f in reg.write("big", [(f"Fact {b + i} is true.", meta) for i in range(n)],
                                        unit_latents(n, b))]
    info = reg.info("big")
    assert info.facts == 30_000 and info.log_entries < 20, "checkpoints kept happening"
    assert reg.forget("big", ids[123]) and reg.forget("big", ids[29_999])
    reg.purge()
    M = reg.reading("big").state.M.clone()
    reg.close()
    again = MemoryRegistry(open_store(url), CFG, "cpu", snapshot_every=20)
    again.restore()
    reading = again.reading("big")
    assert reading.live == 29_998 and torch.equal(reading.state.M, M)
    assert again.facts("big", [ids[123], ids[124]])[0] is None
    again.close()
    store = open_store(url)
    assert store.count("big") == 29_998
    store.close()


WRITER = textwrap.dedent("""
    import sys, torch
    from memory_core import MemoryConfig
    from service.memories import MemoryRegistry
    from service.store import open_store
    reg = MemoryRegistry(open_store(sys.argv[1]), MemoryConfig(slots=512, dim=384), "cpu", snapshot_every=2)
    reg.restore()
    g = torch.Generator().manual_seed(0)
    for b in range(10_000):
        Z = torch.nn.functional.normalize(torch.randn(64, 384, generator=g), dim=-1)
        facts = reg.write("m", [(f"batch {b} fact {i}", {}) for i in range(64)], Z)
        if b % 3 == 2:
            reg.forget("m", facts[0].id)
        print(" ".join(f.id for f in facts[1:]), flush=True)  # acknowledged (the first may be forgotten)
""")


@pytest.mark.parametrize("backend", ["file", "redis"])
def test_sigkill_in_the_middle_of_writes_and_checkpoints_loses_nothing_acknowledged(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("redis_url") if backend == "redis" else f"file://{tmp_path / 'store'}"
    for kill_after in (5, 16):  # two kills at different points, the second on top of the first's state
        proc = subprocess.Popen([sys.executable, "-c", WRITER, url], stdout=subprocess.PIPE, text=True,
                                cwd=Path(__file__).resolve().parents[1], start_new_session=True)
        lines: list[str] = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < 60 and len(lines) < kill_after:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
        # acknowledged batches keep coming while the kill is sent: it lands mid-write, mid-checkpoint or mid-forget
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert len(lines) == kill_after, "the writer must have acknowledged its writes"
        acknowledged = {i for line in lines for i in line.split()}
        reg = MemoryRegistry(open_store(url), CFG, "cpu", snapshot_every=2)
        reg.restore()
        lost = [i for i, held in zip(acknowledged, reg.holds("m", list(acknowledged)), strict=True) if not held]
        assert not lost, f"{len(lost)} acknowledged facts lost"
        reading = reg.reading("m")
        assert torch.allclose(reading.state.M, reading.rebuilt().M, atol=1e-4), "state and stored facts agree"
        reg.close()
        store = open_store(url)
        assert store.count("m") == reading.live
        store.close()


def test_two_servers_starting_at_once_on_an_empty_model_cache_both_serve(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    procs = [ServiceProcess(tmp_path / f"serve{i}.log", LARIMAR_MODEL_CACHE_DIR=str(cache),
                            LARIMAR_STORE_URL=f"file://{tmp_path / f'store{i}'}") for i in range(2)]
    errors: list[str] = []

    def start(p: ServiceProcess) -> None:
        try:
            p.start(timeout=240)
        except RuntimeError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=start, args=(p,)) for p in procs]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        for p in procs:
            assert httpx.get(p.base + "/readyz", timeout=5).json()["status"] == "ready"
        assert len([d for d in (cache / "llm").iterdir() if not d.name.startswith(".")]) == 1
        assert json.loads((next((cache / "llm").glob("SmolLM2*")) / "config.json").read_text())
    finally:
        for p in procs:
            p.kill()
