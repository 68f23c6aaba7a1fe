"""Three ``larimar serve`` replicas on one real redis-server, under faults and load: the shortened runs of
bench/replicas.py (the full ones, 20 kill cycles and 32 clients for 60 s, are committed in bench/results).

Each run ends with ``bench.replicas.verify``: every acknowledged write stored and held by every replica, no
acknowledged forget, nothing stored twice, every replica at one operation with the same facts and the same
state, equal to a direct solve from its facts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.replicas import BASE, Cluster, applied_lag, kills, lag, load, redis_fault


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(Path(tmp_path_factory.mktemp("replicas")), 3)
    try:
        c.start()
        yield c
    finally:
        c.stop()


def test_a_write_is_seen_everywhere_and_read_through_any_replica_with_its_sequence_number(replicas: Cluster) -> None:
    a, b, c = replicas.bases
    with httpx.Client(timeout=60) as h:
        r = h.post(a + BASE + "/facts", json={"text": "The lighthouse of Kamiro was painted teal by Orla Venn."})
        assert r.status_code == 201
        seq = int(r.headers["larimar-seq"])
        read = h.get(b + BASE, headers={"Larimar-Seq": str(seq)})  # at least that far, whatever b has followed
        assert read.status_code == 200 and read.json()["seq"] >= seq and int(read.headers["larimar-seq"]) >= seq
        found = h.get(c + BASE + "/facts", params={"q": "Who painted the lighthouse of Kamiro?", "limit": 1},
                      headers={"Larimar-Seq": str(seq)}).json()
        assert found["facts"][0]["id"] == r.json()["id"], "found by meaning on another replica"
        ahead = h.get(b + BASE, headers={"Larimar-Seq": str(seq + 10_000)})
        assert ahead.status_code == 503 and ahead.headers["retry-after"] and "not yet" in ahead.json()["detail"]
        assert h.get(b + BASE, headers={"Larimar-Seq": "soon"}).status_code == 422
    seen = lag(replicas, writes=30)
    print("visibility lag across replicas (ms):", seen["lag_ms"])
    assert seen["lag_ms"]["max"] < 2000, "every write seen by every other replica, well within the run"
    applied = applied_lag(replicas.bases)
    assert applied["n"] >= 30, "each replica measures the lag of what it applied from the others (/metrics)"


def test_acknowledged_writes_and_forgets_survive_a_replica_killed_and_restarted(replicas: Cluster) -> None:
    result = kills(replicas, cycles=2, writers=8)
    print({k: v for k, v in result.items() if k != "statuses"})
    assert result["problems"] == []
    assert result["acknowledged_writes"] > 20 and result["acknowledged_forgets"] > 5


def test_with_redis_killed_queries_answer_writes_wait_and_resume_by_themselves(replicas: Cluster) -> None:
    result = redis_fault(replicas, down_s=3.0)
    print(result["outage"], result["statuses"])
    outage = result["outage"]
    assert outage["query"] == 200, "queries answer from memory"
    assert outage["write"] == 503, "a write with the store away is refused, never acknowledged"
    assert outage["readyz"] == ["degraded"] * 3, "readiness says: reads yes, writes no"
    assert outage["writes_back_after_s"] < 15, "writes resume by themselves"
    assert result["problems"] == []


def test_mixed_load_across_replicas_ends_in_one_state(replicas: Cluster) -> None:
    result = load(replicas, clients=8, seconds=15)
    print({k: v for k, v in result.items() if k != "latency_s"})
    assert result["problems"] == []
    assert result["server_errors_not_503"] == 0
