"""Replicas on one Redis: several registries (servers) share every memory through the store's operation log.

Each applies every operation, its own and the others', in the store's order, so their states agree with each
other and with a rebuild from the stored facts; they follow each other by blocking on the change stream; a
forget names ids and is subtracted by every replica from the latents it holds; a replica that falls behind a
trimmed log, or finds the store behind itself, reloads. Fast: random latents, a small memory, a real Redis.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

import service.store.redis_store as redis_store
from memory_core import MemoryConfig
from service.memories import MemoryRegistry
from service.store import RedisStore
from tests.test_store import files_holding

DIM = 32
CFG = MemoryConfig(dim=DIM, slots=64)
Open = Callable[..., MemoryRegistry]


@pytest.fixture
def open_replica(redis_url: str) -> Iterator[Open]:
    opened: list[MemoryRegistry] = []

    def make(follow: bool = True, snapshot_every: int = 50) -> MemoryRegistry:
        reg = MemoryRegistry(RedisStore(redis_url), CFG, "cpu", snapshot_every=snapshot_every)
        reg.restore()
        if follow:
            reg.follow_in_background()
        opened.append(reg)
        return reg

    yield make
    for reg in opened:
        reg.close()


def latents(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, DIM, generator=g), dim=-1)  # (n, C)


def write(reg: MemoryRegistry, name: str, n: int, seed: int) -> list[str]:
    facts = reg.write(name, [(f"fact {seed}.{i}", {"seed": seed}) for i in range(n)], latents(n, seed))
    return [f.id for f in facts]


def held(reg: MemoryRegistry, name: str) -> set[str]:
    reading = reg.reading(name)
    return set() if reading is None else {i for i, d in zip(reading._view.ids, reading._view.dead_buffer.tolist(),
                                                           strict=False) if not d}


def assert_same(*regs: MemoryRegistry, name: str = "m") -> None:
    """Every replica at one operation, holding the same facts, with states equal to each other and to a rebuild
    from the facts they hold (to round-off: replicas apply the same updates, a reload replays fewer)."""
    readings = [r.reading(name) for r in regs]
    assert all(x is not None for x in readings)
    assert len({r.applied(name) for r in regs}) == 1, [r.applied(name) for r in regs]
    assert len({frozenset(held(r, name)) for r in regs}) == 1
    first = readings[0]
    for reading in readings:
        assert torch.allclose(reading.state.M.double(), first.state.M.double(), atol=1e-4)
        assert torch.allclose(reading.state.M, reading.rebuilt().M, atol=1e-4)


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> float:
    t0 = time.monotonic()
    while not condition():
        assert time.monotonic() - t0 < timeout, "not reached in time"
        time.sleep(0.002)
    return time.monotonic() - t0


def test_replicas_follow_each_others_writes_forgets_replaces_and_deletes(open_replica: Open) -> None:
    a, b = open_replica(), open_replica()
    ids = write(a, "m", 5, seed=1)
    seq = a.applied("m")
    lag = wait_for(lambda: (b.applied("m") or 0) >= seq)
    assert held(b, "m") == set(ids) and lag < 1.0, "the other replica follows within the stream's wake-up"
    more = write(b, "m", 3, seed=2)
    wait_for(lambda: a.applied("m") == b.applied("m"))
    assert held(a, "m") == set(ids + more)
    assert b.forget("m", ids[0], more[0]), "a replica forgets a fact another wrote"
    wait_for(lambda: a.applied("m") == b.applied("m"))
    assert held(a, "m") == set(ids[1:] + more[1:])
    assert a.facts("m", [ids[0]]) == [None], "and its text is gone for the other replica too"
    assert a.replace("m", ids[1], "replaced text", None, latents(1, seed=9)[0]) is not None
    wait_for(lambda: a.applied("m") == b.applied("m"))
    assert b.facts("m", [ids[1]])[0].text == "replaced text", "no stale cached text on the other replica"
    assert_same(a, b)
    late = open_replica()  # starts later: restores from the checkpoint and the log
    assert_same(a, b, late)
    assert a.delete("m")
    wait_for(lambda: b.reading("m") is None and late.reading("m") is None)
    write(b, "m", 2, seed=3)  # the name made anew, through another replica
    wait_for(lambda: a.applied("m") == b.applied("m") == late.applied("m"))
    assert_same(a, b, late)


def test_concurrent_writes_and_forgets_through_three_replicas_end_in_one_state(open_replica: Open) -> None:
    regs = [open_replica(snapshot_every=20) for _ in range(3)]
    written: list[list[str]] = [[] for _ in regs]
    forgotten: list[str] = []
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for step in range(25):
                written[k] += write(regs[k], "m", 1 + step % 3, seed=1000 * k + step)
                if step % 4 == 3:  # forget one of its own, and sometimes one another replica wrote
                    other = written[(k + 1) % 3][:1] if step % 8 == 7 else []
                    for fid in [written[k].pop(0), *other]:
                        if regs[k].forget("m", fid):
                            forgotten.append(fid)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for r in regs:
        r.catch_up("m")
    everything = {i for w in written for i in w} - set(forgotten)
    assert held(regs[0], "m") == everything
    assert_same(*regs)
    assert_same(*regs, open_replica(follow=False))


def test_a_replica_behind_a_trimmed_log_reloads(open_replica: Open, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_store, "LOG_RETAIN", 2)
    a, b = open_replica(snapshot_every=3), open_replica(follow=False)  # b does not follow: it falls behind
    ids = write(a, "m", 2, seed=1)
    b.catch_up("m")
    for k in range(12):
        write(a, "m", 1, seed=10 + k)
    a.forget("m", ids[0])  # checkpoints; the log before it is trimmed
    assert b.catch_up("m") == a.applied("m"), "caught up by reloading from the checkpoint"
    assert_same(a, b)


def test_a_replica_ahead_of_a_store_restored_from_an_older_copy_reloads(new_redis_server, tmp_path: Path) -> None:  # noqa: ANN001
    """Redis back from an older copy of its files (a restored backup, a failover) lost an operation a replica had
    applied, and numbered a new one the same: the replica tells them apart and serves what Redis holds."""
    server = new_redis_server()
    server.start()

    def replica() -> MemoryRegistry:
        reg = MemoryRegistry(RedisStore(server.url), CFG, "cpu", snapshot_every=50)
        reg.restore()
        return reg

    a = replica()
    write(a, "m", 2, seed=1)
    older = tmp_path / "older"
    shutil.copytree(server.workdir / "appendonlydir", older)
    lost = write(a, "m", 1, seed=2)  # operation 2: the copy does not have it
    server.stop(kill=True)
    shutil.rmtree(server.workdir / "appendonlydir")
    shutil.copytree(older, server.workdir / "appendonlydir")
    server.start()
    b = replica()
    write(b, "m", 1, seed=3)  # operation 2 again, another fact
    assert a.applied("m") == b.applied("m") == 2
    a.catch_up("m")
    assert lost[0] not in held(a, "m") and held(a, "m") == held(b, "m"), "what the store lost is dropped here too"
    assert_same(a, b)
    a.close()
    b.close()


def test_read_your_writes_across_replicas_with_the_sequence_number(open_replica: Open) -> None:
    a, b = open_replica(), open_replica(follow=False)  # b learns only when asked
    write(a, "m", 2, seed=1)
    seq = a.applied("m")
    assert (b.applied("m") or 0) < seq
    from service.replicas import reach

    reach(b, "m", str(seq))
    assert b.applied("m") >= seq and len(held(b, "m")) == 2
    from service.errors import InvalidInput

    for bad in ("soon", "-1", "²", "1" * 19):  # "²" is a digit to str.isdigit, and latin-1 in a header
        with pytest.raises(InvalidInput):
            reach(b, "m", bad)


def test_a_forget_is_purged_from_the_files_by_another_replica_when_its_own_stops_first(
        new_redis_server, tmp_path: Path) -> None:  # noqa: ANN001
    """The replica that took a forget purges Redis's files LARIMAR_PURGE_DELAY_S later; stopped before that, it
    leaves the forgotten fact in the AOF unless another replica, seeing the erasure marked in Redis, purges."""
    server = new_redis_server()
    server.start()

    def replica(purge_delay_s: float) -> MemoryRegistry:
        reg = MemoryRegistry(RedisStore(server.url), CFG, "cpu", snapshot_every=50, purge_delay_s=purge_delay_s)
        reg.restore()
        return reg

    a = replica(3600.0)  # would purge an hour after its forget
    (secret,) = a.write("m", [("The vault code of project Heron is 5309.", {})], latents(1, seed=7))
    write(a, "m", 3, seed=1)
    a.store.purge()  # an AOF base holding the secret, not only the increments
    assert files_holding(server.workdir, [b"project Heron"]), "the test must see it on disk first"
    assert a.forget("m", secret.id)
    a.close()  # stopped before its purge
    b = replica(0.5)
    b.purge_in_background(every_s=0.1)
    try:
        wait_for(lambda: not files_holding(server.workdir, [b"project Heron"]), timeout=20)
        wait_for(lambda: b.store.erasure_since() is None, timeout=20)  # and the mark goes (a purge that began
        # in the second of the forget, or before it, leaves it for the next)
    finally:
        b.close()
