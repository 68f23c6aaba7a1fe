"""Store backends on their own: the per-fact contract, migration of the old layout, durability, erasure on disk."""

from __future__ import annotations

import shutil
import struct
import time
import zlib
from pathlib import Path

import pytest
import redis
import torch

from bench.processes import RedisServer
from service.errors import DuplicateFact, NoMemory
from service.store import Checkpoint, Fact, Op, RedisStore, SqliteStore, Stale, Store, StoreError, codec, open_store

CFG = {"slots": 8, "dim": 4, "addressing": "linear", "ridge": 0.001, "gaussian_a": 0.001, "seed": 0}


@pytest.fixture
def store(store_url: str) -> Store:
    return open_store(store_url)


def fact(i: int, text: str | None = None) -> Fact:
    return Fact(f"id{i}", text or f"fact number {i}", {"n": i}, "2026-01-01T00:00:00.000Z",
                torch.full((4,), float(i)))


def test_codec_round_trip_is_exact() -> None:
    t = {"a": torch.randn(3, 4), "b": torch.arange(5, dtype=torch.int64), "c": torch.randn(2, dtype=torch.float64)}
    tensors, meta = codec.decode(codec.encode(t, {"facts": [{"text": "é ü 中"}], "seq": 3}))
    assert meta == {"facts": [{"text": "é ü 中"}], "seq": 3}
    assert all(torch.equal(tensors[k], t[k]) and tensors[k].dtype == t[k].dtype for k in t)
    z = torch.randn(3, 384)
    assert torch.equal(codec.latents_from([codec.latent_bytes(r) for r in z]), z)


def test_facts_checkpoint_and_log_contract(store: Store) -> None:
    assert store.names() == [] and store.ping()
    assert store.write("m1", [fact(0), fact(1)], CFG) == 1, "the store numbers operations"
    assert store.write("m1", [fact(2)], CFG | {"slots": 99}) == 2  # the config is the first write's
    assert store.write("m2", [fact(9)], CFG) == 1, "per memory"
    assert store.names() == ["m1", "m2"]
    with pytest.raises(DuplicateFact):
        store.write("m1", [fact(5), fact(2)], CFG)  # one id taken: nothing written, whoever writes
    assert store.count("m1") == 3 and store.heads(["m1"]) == [2]
    loaded = store.load("m1")
    assert loaded.config == CFG and loaded.checkpoint is None and loaded.head == 2
    assert loaded.log == [Op(1, "write", ["id0", "id1"]), Op(2, "write", ["id2"])]
    assert store.changes("m1", 2) == (2, [Op(2, "write", ["id2"])]) and store.heads(["m1", "m2", "none"]) == [2, 1, 0]
    ids, Z = zip(*store.latents("m1", chunk=2), strict=True)
    assert [i for chunk in ids for i in chunk] == ["id0", "id1", "id2"]
    assert torch.equal(torch.cat(Z), torch.stack([fact(i).latent for i in range(3)]))
    assert [z if z is None else z.tolist() for z in store.latents_of("m1", ["id2", "nope"])] == [[2.0] * 4, None]
    assert [f and f.text for f in store.facts("m1", ["id2", "nope", "id0"])] == ["fact number 2", None,
                                                                               "fact number 0"]
    page, total = store.page("m1", 2, 1), store.count("m1")
    assert total == 3 and [f.as_dict() for f in page] == [fact(1).as_dict(), fact(2).as_dict()]

    store.checkpoint("m1", Checkpoint(2, b"state-2", "t2"))
    assert store.load("m1").log == [] and store.load("m1").checkpoint == Checkpoint(2, b"state-2", "t2")
    store.checkpoint("m1", Checkpoint(1, b"older", "t1"))
    assert store.load("m1").checkpoint == Checkpoint(2, b"state-2", "t2"), "an older checkpoint is ignored"
    with pytest.raises(Stale):
        store.checkpoint("m1", Checkpoint(9, b"ahead", "t9"))  # past the head: the store lost operations
    assert store.write("m1", [fact(3)], CFG) == 3
    assert store.forget("m1", ["id1"], Checkpoint(3, b"state-4", "t4")) == 4, "the state after 3, and the forget"
    after = store.load("m1")
    assert after.checkpoint == Checkpoint(4, b"state-4", "t4") and after.head == 4 and after.log == []
    with pytest.raises(Stale) as stale:
        store.forget("m1", ["id0"], Checkpoint(3, b"x", "t"))  # a state from before the last forget
    assert stale.value.head == 4 and store.count("m1") == 3, "and nothing changed"
    assert not store.forget("m1", ["id1"], Checkpoint(4, b"x", "t5")), "a second forget finds nothing"
    assert store.load("m1").checkpoint.seq == 4, "and changes nothing"
    assert [i for chunk, _ in store.latents("m1") for i in chunk] == ["id0", "id2", "id3"]
    assert not store.forget("m1", ["id0", "nope"], Checkpoint(4, b"x", "t5")), "several: all or none"
    assert [i for chunk, _ in store.latents("m1") for i in chunk] == ["id0", "id2", "id3"]
    assert store.load("m1").checkpoint.seq == 4
    assert store.forget("m1", ["id0", "id3"], Checkpoint(4, b"state-5", "t5")) == 5
    assert [i for chunk, _ in store.latents("m1") for i in chunk] == ["id2"]
    assert store.load("m1").checkpoint == Checkpoint(5, b"state-5", "t5")
    moved = Fact("id2", "moved", {}, "x", torch.full((4,), 7.0))
    with pytest.raises(Stale):
        store.replace("m1", moved, Checkpoint(4, b"state-5b", "t5b"))
    assert store.replace("m1", moved, Checkpoint(5, b"state-6", "t6")) == 6
    assert store.latents_of("m1", ["id2"])[0].tolist() == [7.0] * 4 and store.facts("m1", ["id2"])[0].text == "moved"
    assert store.write("m1", [fact(3)], CFG) == 7
    store.delete("m1")
    assert store.names() == ["m2"] and store.load("m1").checkpoint is None and store.load("m1").config is None
    with pytest.raises(NoMemory):  # a write that may not make its memory finds it deleted: nothing written
        store.write("m1", [fact(9)], CFG, create=False)
    assert store.names() == ["m2"] and store.count("m1") == 0
    assert store.write("m2", [fact(8)], CFG, create=False) == 2
    assert (store.page("m1", 10, 0), store.count("m1")) == ([], 0)


def test_a_shared_store_logs_every_kind_and_says_which_memories_changed(redis_url: str) -> None:
    """Redis: forgets, replaces and metadata changes are logged for the other servers, the head survives a
    delete, and ``tail`` names the memories other servers changed from a position on."""
    store, other = RedisStore(redis_url), RedisStore(redis_url)  # two servers
    position, _ = other.tail("", 0)
    store.write("a", [fact(0), fact(1)], CFG)
    store.write("b", [fact(5)], CFG)
    assert store.tail(position, 0.2)[1] == [], "a server's own changes are not named to it"
    position, changed = other.tail(position, 1.0)
    assert [name for name, _ in changed] == ["a", "b"]
    assert all(abs(at - time.time()) < 5 for _, at in changed), "when each changed, by the store's clock"
    mark = position
    assert store.forget("a", ["id0"], Checkpoint(1, b"s2", "t")) == 2
    assert store.replace("a", Fact("id1", "new text", {"k": 1}, "x"), None) == 3  # same latent: meta
    assert store.replace("a", Fact("id1", "newer", {}, "x", torch.zeros(4)), Checkpoint(3, b"s4", "t")) == 4
    assert store.changes("a", 2) == (4, [Op(2, "forget", ["id0"]), Op(3, "meta", ["id1"]),
                                         Op(4, "replace", ["id1"])])
    assert store.load("a").log == [] and store.load("a").head == 4, "the log after the checkpoint is empty"
    assert list(store.latents("a", upto=3)) == [], "a latent written by a later operation is left out"
    assert store.write("a", [fact(8)], CFG) == 5  # another server's write, then a forget computed before it
    assert store.forget("a", ["id1"], Checkpoint(4, b"s4+6", "t")) == 6
    loaded = store.load("a")
    assert loaded.checkpoint == Checkpoint(4, b"s4+6", "t", folded=6), "the forget folded into the state after 4"
    assert loaded.log == [Op(5, "write", ["id8"]), Op(6, "forget", ["id1"])]
    store.checkpoint("a", Checkpoint(5, b"s5", "t"))
    assert store.load("a").checkpoint.folded == 6, "no checkpoint from before the last forget is saved"
    with pytest.raises(Stale):
        store.forget("a", ["id8"], Checkpoint(5, b"x", "t"))
    t0 = time.monotonic()
    assert [n for n, _ in other.tail(mark, 0.3)[1]] == ["a"] and time.monotonic() - t0 < 0.3, "named at once"
    assert other.tail(other.tail("", 0)[0], 0.3)[1] == [], "nothing new: waits, then nothing"
    store.delete("a")
    assert store.heads(["a"]) == [7] and store.changes("a", 7) == (7, []), "a delete moves the head on"
    assert store.write("a", [fact(7)], CFG) == 8
    store.close()
    other.close()


def test_unknown_store_url() -> None:
    with pytest.raises(ValueError, match="LARIMAR_STORE_URL"):
        open_store("s3://bucket")


def test_redis_keeps_acknowledged_data_across_a_server_kill(new_redis_server) -> None:  # noqa: ANN001
    server = new_redis_server()
    server.start()
    store = RedisStore(server.url)
    store.write("m", [fact(1)], CFG)
    store.checkpoint("m", Checkpoint(1, b"snap", "t"))
    store.write("m", [fact(2)], CFG)
    server.stop(kill=True)  # SIGKILL: only what appendfsync always put on disk survives
    with pytest.raises(StoreError):
        store.write("m", [fact(3)], CFG)
    assert not store.ping()
    server.start()
    loaded = RedisStore(server.url).load("m")
    assert loaded.checkpoint == Checkpoint(1, b"snap", "t") and loaded.log == [Op(2, "write", ["id2"])]
    assert loaded.head == 2


# --- erasure on disk ---------------------------------------------------------------------------


def files_holding(root: Path, needles: list[bytes]) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and any(n in p.read_bytes() for n in needles)]


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_purge_leaves_no_copy_in_any_file(backend: str, tmp_path: Path) -> None:
    """A recognisable fact, forgotten and purged, is in no file under the store's data directory."""
    server = None
    if backend == "redis":
        server = RedisServer(tmp_path / "redis")
        server.start()
        redis.Redis.from_url(server.url).config_set("save", "60 1")  # RDB snapshots on too, as docker/redis.conf
        store, root = RedisStore(server.url), tmp_path / "redis"
    else:
        store, root = SqliteStore(tmp_path / "db" / "larimar.sqlite3"), tmp_path / "db"
    try:
        secret = Fact("secret", "The vault code of project Heron is 5309.", {"owner": "Heron team"},
                      "2026-01-01T00:00:00.000Z", torch.randn(384))
        needles = [b"project Heron", b"Heron team", codec.latent_bytes(secret.latent)]
        store.write("m", [fact(i) for i in range(50)] + [secret], CFG)
        store.write("m", [fact(i) for i in range(50, 60)], CFG)
        if backend == "redis":
            store.purge()  # an RDB and an AOF base that hold the secret, not only the AOF's increments
        assert files_holding(root, needles), "the test must see the fact on disk before it is forgotten"
        assert store.forget("m", ["secret"], Checkpoint(2, b"state", "t")) == 3
        store.purge()
        assert files_holding(root, needles) == []
        assert store.facts("m", ["id7"])[0].text == "fact number 7", "the other facts stay"
    finally:
        store.close()
        if server:
            server.stop()


# --- the layout before per-fact records ----------------------------------------------------------


def old_snapshot(facts: list[Fact], seq: int) -> bytes:
    Z = torch.stack([f.latent for f in facts])
    tensors = {"M": torch.zeros(8, 4), "C_inv": torch.eye(8, dtype=torch.float64), "M_ref": torch.ones(8, 4),
               "updates": torch.tensor([1]), "latents": Z}
    meta = {"kind": "snapshot", "seq": seq, "config": CFG, "facts": [f.as_dict() for f in facts],
            "snapshot_at": "2026-01-02T00:00:00.000Z"}
    return codec.encode(tensors, meta)


def old_entry(facts: list[Fact], seq: int) -> bytes:
    return codec.encode({"latents": torch.stack([f.latent for f in facts])},
                        {"kind": "write", "seq": seq, "facts": [f.as_dict() for f in facts]})


def test_an_old_file_store_is_migrated_on_start(tmp_path: Path) -> None:
    old = tmp_path / "data" / "m"
    old.mkdir(parents=True)
    (old / "snapshot.safetensors").write_bytes(old_snapshot([fact(0), fact(1)], seq=2))
    with open(old / "log.bin", "wb") as f:  # two log entries, one already inside the snapshot, and a torn tail
        for entry in (old_entry([fact(1)], 2), old_entry([fact(2)], 3)):
            f.write(struct.pack("<QI", len(entry), zlib.crc32(entry)) + entry)
        f.write(b"\x10\x00")
    store = open_store(f"file://{tmp_path / 'data'}")
    assert store.migrate(CFG) == ["m"] and not old.exists()
    loaded = store.load("m")
    assert loaded.config == CFG and loaded.checkpoint.seq == 1 and loaded.log == [Op(2, "write", ["id2"])]
    assert [i for chunk, _ in store.latents("m") for i in chunk] == ["id0", "id1", "id2"]
    assert store.migrate(CFG) == [], "once"


def test_an_old_redis_store_is_migrated_on_start(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.sadd("larimar:memories", "m")
    client.rpush("larimar:m:m:log", old_entry([fact(0)], 1), old_entry([fact(1)], 2))  # no snapshot yet
    store = RedisStore(redis_url)
    assert store.migrate(CFG) == ["m"]
    loaded = store.load("m")
    assert loaded.config == CFG and loaded.checkpoint is None
    assert loaded.log == [Op(1, "write", ["id0"]), Op(2, "write", ["id1"])]
    assert client.type("larimar:m:m:log") == b"none" and store.migrate(CFG) == []


def test_sqlite_store_refuses_what_it_cannot_open(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("x")
    with pytest.raises(StoreError):
        SqliteStore(tmp_path / "not-a-dir" / "larimar.sqlite3")
    shutil.rmtree(tmp_path)
