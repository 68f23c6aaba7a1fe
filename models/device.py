"""Where the models run, and how to name that machine in a result so a number says what produced it."""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def resolve_device(spec: str) -> str:
    """``auto`` is CUDA when torch sees a GPU, else the CPU; anything else (``cpu``, ``cuda:1``) is kept."""
    if spec != "auto":
        return spec
    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_name() -> str:
    """The CPU's model name and count of logical CPUs, from /proc/cpuinfo where there is one."""
    cpuinfo = Path("/proc/cpuinfo")
    names = []
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
    return f"{names[0]} x{len(names)}" if names else (platform.processor() or platform.machine())


def describe_machine() -> str:
    """One line for results files and model cards: CPU, GPU if any, torch version and threads."""
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu_name()}{gpu}, torch {torch.__version__}, {torch.get_num_threads()} threads"
