"""Processes of our own that the tests and the benchmarks start: a redis-server and ``larimar serve``.

Each listens on a free loopback port and keeps its files in a directory it is given, so nothing of the
machine's own (a Redis on 6379, say) is ever touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import redis

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """redis-server in ``workdir`` with the durability docker/redis.conf sets: AOF, fsync on every write."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (scripts/bootstrap.sh installs it)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        try:
            for _ in range(200):
                with contextlib.suppress(redis.ConnectionError):
                    if client.ping():
                        return
                time.sleep(0.05)
        finally:
            client.close()
        raise RuntimeError("redis-server did not answer PING")

    def stop(self, kill: bool = False) -> None:
        if self.proc is not None:
            self.proc.kill() if kill else self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


class ServiceProcess:
    """``python -m service.cli serve`` on a free port, in a process group of its own, logging to ``log_path``.

    ``env`` is added to this process's environment (LARIMAR_STORE_URL=..., say); the hub stays offline.
    """

    def __init__(self, log_path: Path, cwd: Path = REPO, **env: str) -> None:
        self.cwd = cwd  # another checkout (an older version, for comparisons) runs from its own directory
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"} | env
        self.proc: subprocess.Popen | None = None
        self.launched_at = 0.0  # wall clock, to line up with the server's log timestamps
        self.ready_at = 0.0

    def start(self, timeout: float = 300.0) -> float:
        """Launch and wait for /readyz 200; returns the seconds that took."""
        with open(self.log_path, "ab") as log:
            self.launched_at = time.time()
            t0 = time.perf_counter()
            self.proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(self.port)],
                                         cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        with httpx.Client(timeout=2.0) as c:
            while time.perf_counter() - t0 < timeout:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"larimar serve exited with {self.proc.returncode}:\n{self.tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if c.get(self.base + "/readyz").status_code == 200:
                        self.ready_at = time.time()
                        return time.perf_counter() - t0
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"larimar serve not ready after {timeout} s:\n{self.tail()}")

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        """A graceful stop (uvicorn's shutdown closes the store)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL to the whole group: a crash, no shutdown hook runs."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


@contextlib.contextmanager
def serving(root: Path, keys: list[dict[str, object]], timeout: float = 180.0) -> Iterator[str]:
    """``larimar serve`` with a file store under ``root`` and these scoped API keys (LARIMAR_API_KEYS_FILE);
    yields its base URL once ready, stops it gracefully after."""
    path = root / "keys.json"
    path.write_text(json.dumps(keys))
    proc = ServiceProcess(root / "server.log", LARIMAR_STORE_URL=f"file://{root / 'store'}",
                          LARIMAR_API_KEYS_FILE=str(path))
    try:
        proc.start(timeout=timeout)
        yield proc.base
    finally:
        proc.stop()
