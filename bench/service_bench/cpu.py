"""The machine is shared: how busy other processes kept it while we measured, waiting for quiet, and a
deliberate neighbour to measure under contention."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("service_bench")


def stats(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs, dtype=float)
    return {"n": int(a.size), "median": float(np.median(a)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "min": float(a.min()),
            "max": float(a.max())}


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


class Quiet:
    """Before a measurement, wait (up to ``max_s`` seconds) for a second in which other processes keep fewer
    than ``below`` cores busy; on 2 shared cores their load changes every number here. ``waits`` records each."""

    def __init__(self, max_s: float, below: float = 0.3) -> None:
        self.max_s, self.below = max_s, below
        self.waits: list[dict[str, Any]] = []

    def wait(self, what: str) -> None:
        t0 = time.perf_counter()
        while True:
            with CpuWatch() as cpu:
                time.sleep(1.0)
            waited = time.perf_counter() - t0
            if cpu.foreign_cores < self.below or waited >= self.max_s:
                self.waits.append({"before": what, "waited_s": round(waited, 1),
                                   "other_processes_cores": round(cpu.foreign_cores, 2)})
                if cpu.foreign_cores >= self.below:
                    log.warning("other processes still use %.2f cores after %.0f s: measuring %s anyway",
                                cpu.foreign_cores, waited, what)
                return


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
