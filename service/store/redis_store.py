"""Redis backend: a hash per fact, a sorted set for write order, the checkpoint in a hash and the log in a stream.

Keys, for memory ``m`` under prefix ``p``:
    p:memories              set of memory names
    p:m:m:config            the MemoryConfig (JSON)
    p:m:m:f:<id>            hash: text, metadata, created_at, latent (float32 bytes)
    p:m:m:order             sorted set of fact ids, scored by write order (p:m:m:pos counts)
    p:m:m:checkpoint        hash: seq, state, saved_at
    p:m:m:oplog             stream, one entry per write since the checkpoint, id <seq>-1, field ids
    p:m:m:documents         hash: document id -> its record (JSON)
    p:documents             set of memory names that have document records
Every change is one MULTI transaction. Durability is the server's: run Redis with ``appendonly yes`` and
``appendfsync always`` (docker/redis.conf). A deleted fact's commands stay in the AOF and in RDB files until
they are rewritten: ``purge`` runs BGREWRITEAOF (and BGSAVE where RDB snapshots are on) and waits for them.

Memories in the layout before this one (``p:m:m:snapshot`` and ``p:m:m:log`` as a list) are migrated on start.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
from torch import Tensor

from service.store import codec
from service.store.base import Checkpoint, Fact, Stored, StoreError
from service.store.sqlite_store import import_old

log = logging.getLogger(__name__)
NEW_PARTS = ("config", "order", "pos", "checkpoint", "oplog", "documents")
OLD_PARTS = ("snapshot", "log")  # the layout before per-fact records


class RedisStore:
    def __init__(self, url: str, prefix: str = "larimar") -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5)
        self.prefix = prefix

    def _k(self, name: str, part: str) -> str:
        return f"{self.prefix}:m:{name}:{part}"

    def _fact(self, name: str, fact_id: str) -> str:
        return self._k(name, f"f:{fact_id}")

    @property
    def _index(self) -> str:
        return f"{self.prefix}:memories"

    @property
    def _with_documents(self) -> str:
        return f"{self.prefix}:documents"

    def _call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except redis.RedisError as e:
            raise StoreError(f"redis: {e}") from e

    def _multi(self, build: Callable[[redis.client.Pipeline], object]) -> list:
        def run() -> list:
            pipe = self.client.pipeline(transaction=True)
            build(pipe)
            return pipe.execute()

        return self._call(run)

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def names(self) -> list[str]:
        return sorted(n.decode() for n in self._call(lambda: self.client.smembers(self._index)))

    # --- changes ---------------------------------------------------------------------

    def write(self, name: str, seq: int, facts: list[Fact], config: dict[str, Any]) -> None:
        first = self._call(lambda: self.client.incrby(self._k(name, "pos"), len(facts))) - len(facts)

        def build(p: redis.client.Pipeline) -> None:
            p.sadd(self._index, name)
            p.setnx(self._k(name, "config"), json.dumps(config))
            for f in facts:
                p.hset(self._fact(name, f.id), mapping={"text": f.text, "metadata": json.dumps(f.metadata),
                                                        "created_at": f.created_at,
                                                        "latent": codec.latent_bytes(f.latent)})
            if facts:
                p.zadd(self._k(name, "order"), {f.id: first + i for i, f in enumerate(facts)})
            p.xadd(self._k(name, "oplog"), {"ids": json.dumps([f.id for f in facts])}, id=f"{seq}-1")

        self._multi(build)

    def _save_checkpoint(self, p: redis.client.Pipeline, name: str, cp: Checkpoint) -> None:
        p.hset(self._k(name, "checkpoint"), mapping={"seq": cp.seq, "state": cp.state, "saved_at": cp.saved_at})
        p.xtrim(self._k(name, "oplog"), minid=f"{cp.seq + 1}-0")

    def forget(self, name: str, fact_ids: list[str], checkpoint: Checkpoint) -> bool:
        keys = [self._fact(name, i) for i in fact_ids]
        if self._call(lambda: self.client.exists(*keys)) < len(keys):
            return False  # writers of one memory are serialised by the service, so nothing re-adds one meanwhile

        def build(p: redis.client.Pipeline) -> None:
            p.delete(*keys)
            p.zrem(self._k(name, "order"), *fact_ids)
            self._save_checkpoint(p, name, checkpoint)

        return bool(self._multi(build)[0])

    def replace(self, name: str, fact: Fact, checkpoint: Checkpoint | None) -> bool:
        if not self._call(lambda: self.client.exists(self._fact(name, fact.id))):
            return False  # writers of one memory are serialised by the service, so nothing removes it meanwhile
        fields = {"text": fact.text, "metadata": json.dumps(fact.metadata)}
        if fact.latent is not None:
            fields["latent"] = codec.latent_bytes(fact.latent)

        def build(p: redis.client.Pipeline) -> None:
            p.hset(self._fact(name, fact.id), mapping=fields)
            if checkpoint is not None:
                self._save_checkpoint(p, name, checkpoint)

        self._multi(build)
        return True

    def checkpoint(self, name: str, checkpoint: Checkpoint) -> None:
        self._multi(lambda p: self._save_checkpoint(p, name, checkpoint))

    def delete(self, name: str) -> None:
        ids = self._ids(name)
        self._multi(lambda p: (p.srem(self._index, name), p.srem(self._with_documents, name),
                               self._drop(p, name, ids, NEW_PARTS + OLD_PARTS)))

    def _ids(self, name: str) -> list[str]:
        return [i.decode() for i in self._call(lambda: self.client.zrange(self._k(name, "order"), 0, -1))]

    def _drop(self, p: redis.client.Pipeline, name: str, ids: list[str], parts: tuple[str, ...]) -> None:
        for part in parts:
            p.delete(self._k(name, part))
        for chunk in range(0, len(ids), 1000):
            p.delete(*[self._fact(name, i) for i in ids[chunk : chunk + 1000]])

    # --- reads ------------------------------------------------------------------------

    def load(self, name: str) -> Stored:
        def build(p: redis.client.Pipeline) -> None:
            p.get(self._k(name, "config"))
            p.hgetall(self._k(name, "checkpoint"))
            p.xrange(self._k(name, "oplog"))

        config, cp, entries = self._multi(build)
        checkpoint = Checkpoint(int(cp[b"seq"]), cp[b"state"], cp[b"saved_at"].decode()) if cp else None
        return Stored(json.loads(config) if config else None, checkpoint,
                      [(int(eid.split(b"-")[0]), json.loads(fields[b"ids"])) for eid, fields in entries])

    def latents(self, name: str, chunk: int = 8192) -> Iterator[tuple[list[str], Tensor]]:
        start = 0
        while True:
            ids = [i.decode() for i in self._call(
                lambda s=start: self.client.zrange(self._k(name, "order"), s, s + chunk - 1))]
            if not ids:
                return
            start += len(ids)

            def build(p: redis.client.Pipeline, ids: list[str] = ids) -> None:
                for i in ids:
                    p.hget(self._fact(name, i), "latent")

            blobs = self._call(lambda ids=ids: self._pipeline(build))
            yield ids, codec.latents_from(blobs)

    def _pipeline(self, build: Callable[[redis.client.Pipeline], object]) -> list:
        pipe = self.client.pipeline(transaction=False)
        build(pipe)
        return pipe.execute()

    def facts(self, name: str, ids: list[str]) -> list[Fact | None]:
        def build(p: redis.client.Pipeline) -> None:
            for i in ids:
                p.hmget(self._fact(name, i), "text", "metadata", "created_at")

        rows = self._call(lambda: self._pipeline(build))
        return [None if text is None else Fact(i, text.decode(), json.loads(meta), created.decode())
                for i, (text, meta, created) in zip(ids, rows, strict=True)]

    def page(self, name: str, limit: int, offset: int) -> list[Fact]:
        ids = [i.decode() for i in self._call(
            lambda: self.client.zrange(self._k(name, "order"), offset, offset + limit - 1))]
        return [f for f in self.facts(name, ids) if f is not None]

    def count(self, name: str) -> int:
        return int(self._call(lambda: self.client.zcard(self._k(name, "order"))))

    # --- documents ---------------------------------------------------------------------

    def put_document(self, name: str, record: dict[str, Any]) -> None:
        self._multi(lambda p: (p.sadd(self._with_documents, name),
                               p.hset(self._k(name, "documents"), record["id"], json.dumps(record))))

    def documents(self, name: str) -> list[dict[str, Any]]:
        records = [json.loads(r) for r in self._call(lambda: self.client.hvals(self._k(name, "documents")))]
        return sorted(records, key=lambda r: (r["created_at"], r["id"]))

    def document(self, name: str, doc_id: str) -> dict[str, Any] | None:
        raw = self._call(lambda: self.client.hget(self._k(name, "documents"), doc_id))
        return None if raw is None else json.loads(raw)

    def delete_document(self, name: str, doc_id: str) -> bool:
        return bool(self._multi(lambda p: p.hdel(self._k(name, "documents"), doc_id))[0])

    def unfinished_documents(self) -> list[tuple[str, dict[str, Any]]]:
        names = sorted(n.decode() for n in self._call(lambda: self.client.smembers(self._with_documents)))
        return [(n, r) for n in names for r in self.documents(n) if r["status"] in ("ingesting", "deleting")]

    # --- erasure ------------------------------------------------------------------------

    def purge(self, timeout_s: float = 300.0) -> None:
        """Rewrite the AOF (and the RDB file where snapshots are on) from what the data set holds now."""
        info = self._call(lambda: self.client.info("persistence"))
        started = []
        if int(info.get("aof_enabled", 0)):
            self._retry_busy(self.client.bgrewriteaof)
            started.append(("aof_rewrite_in_progress", "aof_rewrite_scheduled", "aof_last_bgrewrite_status"))
        if self._rdb_on():
            self._retry_busy(self.client.bgsave)
            started.append(("rdb_bgsave_in_progress", None, "rdb_last_bgsave_status"))
        deadline = time.monotonic() + timeout_s
        for busy, scheduled, status in started:
            while True:
                info = self._call(lambda: self.client.info("persistence"))
                if not int(info.get(busy, 0)) and not (scheduled and int(info.get(scheduled, 0))):
                    break
                if time.monotonic() > deadline:
                    raise StoreError(f"redis: {busy} still set after {timeout_s:.0f} s")
                time.sleep(0.05)
            if info.get(status) not in ("ok", b"ok"):
                raise StoreError(f"redis: {status} is {info.get(status)!r}")

    def _rdb_on(self) -> bool:
        try:
            save = self.client.config_get("save").get("save", "")
        except redis.ResponseError:  # CONFIG renamed away (managed Redis): assume snapshots are on
            return True
        except redis.RedisError as e:
            raise StoreError(f"redis: {e}") from e
        return bool(save and str(save).strip())

    def _retry_busy(self, command: Callable[[], object]) -> None:
        """Start a background rewrite; one already running is waited for and this one started after it."""
        for _ in range(600):
            try:
                command()
                return
            except redis.ResponseError as e:
                if "in progress" not in str(e) and "already" not in str(e):
                    raise StoreError(f"redis: {e}") from e
                time.sleep(0.1)
            except redis.RedisError as e:
                raise StoreError(f"redis: {e}") from e
        raise StoreError("redis: a background save kept running")

    # --- the layout before per-fact records ----------------------------------------------

    def migrate(self, default_config: dict[str, Any]) -> list[str]:
        """Memories kept as one snapshot string and a log list, rewritten as per-fact records. The old keys go
        only once the new ones are written, so a crash midway is redone from them on the next start."""
        done = []
        for name in self.names():
            snap_key, log_key = self._k(name, "snapshot"), self._k(name, "log")
            snapshot, entries = self._multi(lambda p, s=snap_key, lk=log_key: (p.get(s), p.lrange(lk, 0, -1)))
            if snapshot is None and not entries:
                continue
            log.info("migrating memory %r to per-fact records", name)
            self._multi(lambda p, n=name: self._drop(p, n, self._ids(n), NEW_PARTS))
            import_old(self, name, snapshot, entries, default_config)
            self._multi(lambda p, s=snap_key, lk=log_key: (p.delete(s), p.delete(lk)))
            done.append(name)
        if done:
            self.purge()
        return done

    def close(self) -> None:
        self.client.close()
