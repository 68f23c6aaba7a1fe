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
    p:writer                the one writer's lease (``claim``): its owner, expiring LEASE_TTL_S after renewal
    p:writer:last           the owner of the last claim, until it closes (no expiry): whether anyone claimed
                            the store since this process's lease lapsed
Every change is one MULTI transaction. Durability is the server's: run Redis with ``appendonly yes`` and
``appendfsync always`` (docker/redis.conf). A deleted fact's commands stay in the AOF and in RDB files until
they are rewritten: ``purge`` runs BGREWRITEAOF (and BGSAVE where RDB snapshots are on) and waits for them.

The one writer holds a lease: ``SET p:writer <owner> NX PX ttl``, renewed every third of the TTL by a
thread while it is still its own (compare-and-pexpire, one Lua script) and deleted by ``close`` if still its
own. A SIGKILLed holder stops renewing, so its lease lapses within the TTL and a restart's ``claim``, which
waits that long for it, goes on. A lease that lapsed while Redis was out of reach is taken again if no one
claimed the store meanwhile; if someone did, this store refuses every change from then on.

Memories in the layout before this one (``p:m:m:snapshot`` and ``p:m:m:log`` as a list) are migrated on start.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
from torch import Tensor

from service.store import codec
from service.store.base import Checkpoint, Fact, Stored, StoreError, StoreHeld, entries
from service.store.sqlite_store import import_old

log = logging.getLogger(__name__)
NEW_PARTS = ("config", "order", "pos", "checkpoint", "oplog", "documents")
OLD_PARTS = ("snapshot", "log")  # the layout before per-fact records
# The writer lease. A restart after a SIGKILL waits up to this long for the dead holder's lease to lapse, so it
# is short; renewals every third of it let a live holder miss two (a slow Redis, a paused process) and keep it.
LEASE_TTL_S = 10.0
LEASE_MARGIN_S = 1.0  # a claim waits TTL + this for a held lease to lapse before it refuses

# KEYS[1] the lease, KEYS[2] the last claim's owner; ARGV[1] owner, ARGV[2] TTL in ms
_CLAIM = """
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    redis.call('set', KEYS[2], ARGV[1])
    return 1
end
return 0
"""
# 1: renewed; 2: it had lapsed and no one claimed since: taken again; 0: someone else claimed it
_RENEW = """
local holder = redis.call('get', KEYS[1])
if holder == ARGV[1] then
    redis.call('pexpire', KEYS[1], ARGV[2])
    return 1
end
if not holder and redis.call('get', KEYS[2]) == ARGV[1] then
    redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 2
end
return 0
"""
# both keys, each only if still ours (a renewal running late then finds nothing to take again)
_RELEASE = """
local n = 0
if redis.call('get', KEYS[1]) == ARGV[1] then
    n = redis.call('del', KEYS[1])
end
if redis.call('get', KEYS[2]) == ARGV[1] then
    redis.call('del', KEYS[2])
end
return n
"""


class RedisStore:
    def __init__(self, url: str, prefix: str = "larimar", lease_ttl_s: float = LEASE_TTL_S) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5)
        self.prefix = prefix
        self.lease_ttl_s = lease_ttl_s
        self._scripts = {name: self.client.register_script(src)
                         for name, src in (("claim", _CLAIM), ("renew", _RENEW), ("release", _RELEASE))}
        self._lease_lock = threading.Lock()
        self._owner: str | None = None  # set while this store holds the lease
        self._renewing = threading.Event()  # set: the renewer stops
        self._renewer: threading.Thread | None = None
        self._lost: str | None = None  # why changes are refused: someone else claimed the store
        self._closed = False

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
        if self._lost:
            raise StoreError(self._lost)

        def run() -> list:
            pipe = self.client.pipeline(transaction=True)
            build(pipe)
            return pipe.execute()

        return self._call(run)

    # --- the one writer -------------------------------------------------------------------

    @property
    def _lease(self) -> list[str]:
        return [f"{self.prefix}:writer", f"{self.prefix}:writer:last"]

    def _where(self) -> str:
        kw = self.client.connection_pool.connection_kwargs  # no password in what is named
        place = kw.get("path") or f"{kw.get('host')}:{kw.get('port')}/{kw.get('db', 0)}"
        return f"redis store {place} prefix {self.prefix!r}"

    def _holder(self) -> str | None:
        raw = self._call(lambda: self.client.get(self._lease[0]))
        return None if raw is None else raw.decode(errors="replace")

    def claim(self, owner: str) -> None:
        """Take the lease ``p:writer`` (SET NX PX) and renew it until ``close``. A lease held by another is waited
        for up to TTL + LEASE_MARGIN_S, as a crashed holder's lapses in that time; then StoreHeld names it."""
        with self._lease_lock:
            if self._closed:
                raise StoreError(f"{self._where()}: closed")
            if self._owner is not None:
                return  # already ours
        ttl_ms = int(self.lease_ttl_s * 1000)
        t0 = time.monotonic()
        deadline = t0 + self.lease_ttl_s + LEASE_MARGIN_S
        seen: str | None = None  # the holder waited for
        while not self._call(lambda: self._scripts["claim"](keys=self._lease, args=[owner, ttl_ms])):
            holder = self._holder()
            if holder is not None and holder != seen:
                seen = holder
                log.warning("%s is held by %s: waiting up to %.0f s for its lease to lapse (a holder that died "
                            "stops renewing it)", self._where(), holder, deadline - time.monotonic())
            if time.monotonic() >= deadline:
                raise StoreHeld(f"{self._where()} is held by {seen}: another larimar server writes it "
                                "(one server per store); stop that one first")
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        with self._lease_lock:
            if self._closed:  # closed while this waited: give the lease straight back
                self._release(owner)
                raise StoreError(f"{self._where()}: closed")
            self._owner, self._lost = owner, None
            self._renewing.clear()
            self._renewer = threading.Thread(target=self._renew, args=(owner, ttl_ms), name="larimar-lease",
                                             daemon=True)
            self._renewer.start()
        if seen is not None:
            log.info("%s: the lease of %s lapsed after %.1f s", self._where(), seen, time.monotonic() - t0)
        log.info("%s: this process (%s) is its one writer", self._where(), owner)

    def _renew(self, owner: str, ttl_ms: int) -> None:
        every = self.lease_ttl_s / 3
        while not self._renewing.wait(every):
            try:
                renewed = self._scripts["renew"](keys=self._lease, args=[owner, ttl_ms])
            except redis.RedisError as e:
                log.warning("%s: writer lease not renewed (%s): trying again in %.1f s", self._where(), e, every)
                continue
            if renewed == 2:
                log.warning("%s: the writer lease had lapsed (Redis out of reach for over %.0f s); no one claimed "
                            "the store since: taken again", self._where(), self.lease_ttl_s)
            elif not renewed:
                try:
                    holder = self._holder()
                except StoreError:
                    holder = None
                self._lost = (f"{self._where()}: the writer lease lapsed and {holder or 'another process'} claimed "
                              "the store since; this server refuses changes: restart it")
                log.critical(self._lost)
                return

    def _release(self, owner: str) -> None:
        try:
            self._scripts["release"](keys=self._lease, args=[owner])
        except redis.RedisError as e:
            log.warning("%s: writer lease not released (%s): it lapses within %.0f s", self._where(), e,
                        self.lease_ttl_s)

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def names(self) -> list[str]:
        return sorted(n.decode() for n in self._call(lambda: self.client.smembers(self._index)))

    # --- changes ---------------------------------------------------------------------

    def write(self, name: str, seq: int, facts: list[Fact], config: dict[str, Any], entry_size: int | None = None
              ) -> None:
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
            for i, op in enumerate(entries(facts, entry_size)):
                p.xadd(self._k(name, "oplog"), {"ids": json.dumps([f.id for f in op])}, id=f"{seq + i}-1")

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
        with self._lease_lock:
            self._closed = True
            owner, self._owner = self._owner, None
            renewer, self._renewer = self._renewer, None
        if owner is not None:
            self._renewing.set()
            if renewer is not None:
                renewer.join(timeout=1.0)  # a renewal under way ends within the socket timeout anyway
            self._release(owner)  # compare-and-delete: a lease someone else took meanwhile stays theirs
        self.client.close()
