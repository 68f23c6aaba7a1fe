"""One writer per embedded store: a second ``larimar serve`` on a SQLite store another server holds is refused at
start, naming the holder, and the holder keeps serving; a SIGKILLed holder blocks no restart (the flock goes with
the process). Redis is shared by replicas instead (tests/test_replicas.py). Real processes, on loopback."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from bench.processes import ServiceProcess
from service.store import SqliteStore, StoreError, StoreHeld, open_store

FACTS = "/v1/memories/held/facts"


# --- the stores on their own -------------------------------------------------------------------------


def test_a_second_sqlite_claim_is_refused_naming_the_first_until_it_closes(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'store'}"
    first, second = open_store(url), open_store(url)
    assert isinstance(first, SqliteStore)
    first.claim("host-a pid 101 since 2026-01-01T00:00:00.000Z")
    assert first.lock_path.read_text() == "host-a pid 101 since 2026-01-01T00:00:00.000Z"
    first.claim("host-a pid 101 since 2026-01-01T00:00:00.000Z")  # again: already ours
    with pytest.raises(StoreHeld, match="held by host-a pid 101 since 2026-01-01") as refused:
        second.claim("host-b pid 202 since 2026-01-02T00:00:00.000Z")
    assert not isinstance(refused.value, StoreError), "a held store is not 'unreachable': never retried"
    reader = open_store(url)  # a connection that claims nothing (tools, tests) still reads and writes
    reader.put_document("m", {"id": "d", "status": "ready"})
    assert first.document("m", "d") == {"id": "d", "status": "ready"}
    reader.close()
    first.close()
    assert first.lock_path.read_text() == "", "a clean close leaves no name behind"
    second.claim("host-b pid 202 since 2026-01-02T00:00:00.000Z")
    assert second.lock_path.read_text() == "host-b pid 202 since 2026-01-02T00:00:00.000Z"
    second.close()
    with pytest.raises(StoreError, match="closed"):
        second.claim("late")


# --- real servers ------------------------------------------------------------------------------------


def test_a_second_server_is_refused_naming_the_first_and_a_killed_holder_blocks_no_restart(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'store'}"
    first, second, third = (ServiceProcess(tmp_path / f"{n}.log", LARIMAR_STORE_URL=url)
                            for n in ("first", "second", "third"))
    try:
        started_in = first.start(timeout=240)
        pid = first.proc.pid  # `larimar serve` runs uvicorn in its own process
        assert f" pid {pid} since " in (tmp_path / "store" / "larimar.sqlite3.lock").read_text()
        with httpx.Client(base_url=first.base, timeout=60) as c:
            assert c.post(FACTS, json={"text": "The capital of France is Lyon."}).status_code == 201

        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match="exited with"):  # ServiceProcess.start: it exited, never ready
            second.start(timeout=240)
        refused_after = time.monotonic() - t0
        assert second.proc.returncode != 0
        said = second.log_path.read_text()
        assert "StoreHeld" in said and re.search(rf"is held by \S+ pid {pid} since \S+", said), second.tail()
        assert "loading encoder" not in said, "refused before loading any model"
        assert "run several on Redis (LARIMAR_STORE_URL=redis://" in said, "and pointed at the replica deployment"

        with httpx.Client(base_url=first.base, timeout=60) as c:  # the first goes on serving, writes and all
            assert c.get("/readyz").status_code == 200
            assert c.post(FACTS, json={"text": "Bananas are blue."}).status_code == 201
            listed = c.get(FACTS).json()
        assert listed["total"] == 2

        first.kill()  # SIGKILL: no shutdown hook releases anything
        t0 = time.monotonic()
        third.start(timeout=240)
        restarted_after = time.monotonic() - t0
        assert restarted_after <= started_in + 10, "a start, no wait for the dead holder"
        with httpx.Client(base_url=third.base, timeout=60) as c:
            assert c.get(FACTS).json() == listed, "the restart serves every acknowledged write"
        print(f"first ready after {started_in:.1f} s, second refused after {refused_after:.1f} s, "
              f"restart ready after {restarted_after:.1f} s")

        third.stop()  # a clean stop gives the claim back at once
        assert (tmp_path / "store" / "larimar.sqlite3.lock").read_text() == ""
    finally:
        for p in (first, second, third):
            p.kill()
