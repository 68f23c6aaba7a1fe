"""One writer per store: a second ``larimar serve`` on a store another server holds is refused at start, naming
the holder, and the holder keeps serving; a SIGKILLed holder blocks no restart (SQLite's flock goes with the
process, a Redis lease lapses within its TTL). Real processes and a real redis-server of our own, on loopback."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest
import redis

from bench.processes import ServiceProcess
from service.store import RedisStore, SqliteStore, StoreError, StoreHeld, open_store
from service.store.redis_store import LEASE_MARGIN_S, LEASE_TTL_S

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


def test_a_redis_lease_is_renewed_refused_to_others_released_and_lost_to_a_later_claim(redis_url: str) -> None:
    ttl = 1.5  # short, so the cycle takes seconds (renewals every 0.5 s); the served TTL is LEASE_TTL_S
    r = redis.Redis.from_url(redis_url)
    first = RedisStore(redis_url, lease_ttl_s=ttl)
    first.claim("host-a pid 101 since t0")
    assert r.get("larimar:writer") == b"host-a pid 101 since t0" and 0 < r.pttl("larimar:writer") <= 1500
    time.sleep(2 * ttl)  # past its TTL: only renewals keep it
    assert r.get("larimar:writer") == b"host-a pid 101 since t0", "the holder renews its lease"

    second = RedisStore(redis_url, lease_ttl_s=ttl)
    t0 = time.monotonic()
    with pytest.raises(StoreHeld, match="held by host-a pid 101 since t0") as refused:
        second.claim("host-b pid 202 since t1")
    waited = time.monotonic() - t0
    assert ttl <= waited <= ttl + LEASE_MARGIN_S + 1.0, f"waited {waited:.2f} s for a live holder's lease"
    assert not isinstance(refused.value, StoreError)

    first.close()  # compare-and-delete: gone at once, not after the TTL
    assert r.get("larimar:writer") is None and r.get("larimar:writer:last") is None
    t0 = time.monotonic()
    second.claim("host-b pid 202 since t1")
    assert time.monotonic() - t0 < 0.5 and r.get("larimar:writer") == b"host-b pid 202 since t1"
    second.put_document("m", {"id": "d", "status": "ready"})

    r.delete("larimar:writer")  # lapsed (Redis out of reach for a while) and no one claimed since: taken again
    for _ in range(100):
        if r.get("larimar:writer") is not None:
            break
        time.sleep(0.05)
    assert r.get("larimar:writer") == b"host-b pid 202 since t1"

    r.set("larimar:writer", "host-c pid 303 since t2", px=60_000)  # someone else claimed it meanwhile
    r.set("larimar:writer:last", "host-c pid 303 since t2")
    refusing = False
    for _ in range(100):
        try:
            second.put_document("m", {"id": "d", "status": "ready"})
        except StoreError as e:
            assert "host-c pid 303" in str(e)
            refusing = True
            break
        time.sleep(0.05)
    assert refusing, "a store whose lease someone else took refuses changes"
    second.close()
    assert r.get("larimar:writer") == b"host-c pid 303 since t2", "close never deletes another's lease"

    r.set("larimar:writer", "host-d pid 404 since t3", px=400)  # a holder SIGKILLed: its lease lapses
    third = RedisStore(redis_url, lease_ttl_s=ttl)
    t0 = time.monotonic()
    third.claim("host-e pid 505 since t4")
    assert time.monotonic() - t0 < 0.4 + 1.5 and r.get("larimar:writer") == b"host-e pid 505 since t4"
    third.close()
    third.close()  # twice: harmless
    r.close()


# --- real servers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["file", "redis"])
def test_a_second_server_is_refused_naming_the_first_and_a_killed_holder_blocks_no_restart(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("redis_url") if backend == "redis" else f"file://{tmp_path / 'store'}"
    first, second, third = (ServiceProcess(tmp_path / f"{n}.log", LARIMAR_STORE_URL=url)
                            for n in ("first", "second", "third"))
    try:
        started_in = first.start(timeout=240)
        pid = first.proc.pid  # `larimar serve` runs uvicorn in its own process
        if backend == "redis":
            assert f" pid {pid} since ".encode() in redis.Redis.from_url(url).get("larimar:writer")
        else:
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

        with httpx.Client(base_url=first.base, timeout=60) as c:  # the first goes on serving, writes and all
            assert c.get("/readyz").status_code == 200
            assert c.post(FACTS, json={"text": "Bananas are blue."}).status_code == 201
            listed = c.get(FACTS).json()
        assert listed["total"] == 2

        first.kill()  # SIGKILL: no shutdown hook releases anything
        t0 = time.monotonic()
        third.start(timeout=240)
        restarted_after = time.monotonic() - t0
        assert restarted_after <= started_in + LEASE_TTL_S + LEASE_MARGIN_S + 10, "a start, plus a lease at most"
        with httpx.Client(base_url=third.base, timeout=60) as c:
            assert c.get(FACTS).json() == listed, "the restart serves every acknowledged write"
        lapsed = re.search(r"lease of .* lapsed after ([0-9.]+) s", third.log_path.read_text())
        if backend == "redis" and lapsed:
            assert float(lapsed.group(1)) <= LEASE_TTL_S + LEASE_MARGIN_S
        waited = f"{lapsed.group(1)} s" if lapsed else "none"
        print(f"{backend}: first ready after {started_in:.1f} s, second refused after {refused_after:.1f} s, "
              f"restart ready after {restarted_after:.1f} s (lease wait {waited})")

        third.stop()  # a clean stop gives the claim back at once
        if backend == "redis":
            assert redis.Redis.from_url(url).get("larimar:writer") is None
        else:
            assert (tmp_path / "store" / "larimar.sqlite3.lock").read_text() == ""
    finally:
        for p in (first, second, third):
            p.kill()
