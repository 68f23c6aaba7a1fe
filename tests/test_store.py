"""Store backends on their own: the log/snapshot contract, torn writes, and Redis durability across restarts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from service.store import FileStore, RedisStore, Store, StoreError, codec, open_store


@pytest.fixture
def store(store_url: str) -> Store:
    return open_store(store_url)


def test_codec_round_trip_is_exact() -> None:
    t = {"a": torch.randn(3, 4), "b": torch.arange(5, dtype=torch.int64), "c": torch.randn(2, dtype=torch.float64)}
    tensors, meta = codec.decode(codec.encode(t, {"facts": [{"text": "é ü 中"}], "seq": 3}))
    assert meta == {"facts": [{"text": "é ü 中"}], "seq": 3}
    assert all(torch.equal(tensors[k], t[k]) and tensors[k].dtype == t[k].dtype for k in t)


def test_log_snapshot_contract(store: Store) -> None:
    assert store.names() == [] and store.ping()
    store.append("m1", b"e1")
    store.append("m1", b"e2")
    store.append("m2", b"x")
    assert store.names() == ["m1", "m2"]
    loaded = store.load("m1")
    assert loaded.snapshot is None and loaded.log == [b"e1", b"e2"]
    store.replace("m1", b"snap")
    loaded = store.load("m1")
    assert loaded.snapshot == b"snap" and loaded.log == []
    store.append("m1", b"e3")
    assert store.load("m1").log == [b"e3"]
    store.delete("m1")
    assert store.names() == ["m2"] and store.load("m1").snapshot is None and store.load("m1").log == []


def test_file_log_drops_a_torn_tail(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.append("m", b"first")
    store.append("m", b"second")
    log = tmp_path / "m" / "log.bin"
    whole = log.read_bytes()
    log.write_bytes(whole[:-3])  # a crash in the middle of the second append
    assert store.load("m").log == [b"first"]
    assert log.read_bytes() == whole[: len(whole) - len(b"second") - 12], "truncated to the last whole record"
    store.append("m", b"third")
    assert store.load("m").log == [b"first", b"third"]


def test_file_log_rejects_a_corrupt_record(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.append("m", b"first")
    store.append("m", b"second")
    log = tmp_path / "m" / "log.bin"
    data = bytearray(log.read_bytes())
    data[-1] ^= 0xFF
    log.write_bytes(bytes(data))
    assert store.load("m").log == [b"first"]


def test_redis_keeps_acknowledged_data_across_a_server_kill(new_redis_server) -> None:  # noqa: ANN001
    server = new_redis_server()
    server.start()
    store = RedisStore(server.url)
    store.append("m", b"e1")
    store.replace("m", b"snap")
    store.append("m", b"e2")
    server.stop(kill=True)  # SIGKILL: only what appendfsync always put on disk survives
    with pytest.raises(StoreError):
        store.append("m", b"lost")
    assert not store.ping()
    server.start()
    loaded = RedisStore(server.url).load("m")
    assert loaded.snapshot == b"snap" and loaded.log == [b"e2"]


def test_unknown_store_url() -> None:
    with pytest.raises(ValueError, match="LARIMAR_STORE_URL"):
        open_store("s3://bucket")
