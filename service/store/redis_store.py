"""Redis backend, shared by any number of servers (replicas): a hash per fact, a sorted set for write order, the
checkpoint in a hash and the operation log in a stream.

Keys, for memory ``m`` under prefix ``p``:
    p:memories              set of memory names
    p:m:m:config            the MemoryConfig (JSON)
    p:m:m:f:<id>            hash: text, metadata, created_at, latent (float32 bytes), seq (the operation that
                            wrote the latent)
    p:m:m:order             sorted set of fact ids, scored by write order (p:m:m:pos counts)
    p:m:m:seq               the memory's head: its last operation's sequence number (kept by a delete)
    p:m:m:checkpoint        hash: seq, state, saved_at
    p:m:m:oplog             stream, one entry per operation, id <seq>-1, fields op (write, forget, replace,
                            meta) and ids; trimmed to LOG_RETAIN entries before the checkpoint
    p:m:m:erased            the last forget's or replace's sequence number: no checkpoint from before it is saved
    p:m:m:documents         hash: document id -> its record (JSON)
    p:documents             set of memory names that have document records
    p:changes               stream of the names of memories changed, capped near CHANGES_KEPT: what replicas
                            block on (``tail``) to follow each other
    p:purge:first, :last    when (Redis's clock, s) the oldest and newest forget, replace or delete not yet
                            purged from the files happened: any replica purges once the oldest is
                            LARIMAR_PURGE_DELAY_S old, so one that dies after a forget leaves no copy behind

Every change is one Lua script or MULTI transaction, and takes its sequence number from ``p:m:m:seq`` inside
it, so concurrent servers are ordered by Redis alone. Durability is the server's: run Redis with
``appendonly yes`` and ``appendfsync always`` (docker/redis.conf). A deleted fact's commands stay in the AOF
and in RDB files until they are rewritten: ``purge`` runs BGREWRITEAOF (and BGSAVE where RDB snapshots are on)
and waits for them. The log and the change stream name facts by id only: no text or latent is in them.

The log is kept LOG_RETAIN entries behind the checkpoint so a replica that lags a little follows on from it;
one further behind finds a gap and reloads the memory from the checkpoint.

Memories in the layout before this one (``p:m:m:snapshot`` and ``p:m:m:log`` as a list) are migrated on start.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import redis
from torch import Tensor

from service.errors import DuplicateFact, NoMemory
from service.store import codec
from service.store.base import Checkpoint, Fact, Op, Stale, Stored, StoreError, entries
from service.store.sqlite_store import import_old

log = logging.getLogger(__name__)
NEW_PARTS = ("config", "order", "pos", "checkpoint", "oplog", "documents", "erased")  # a delete drops; not "seq"
OLD_PARTS = ("snapshot", "log")  # the layout before per-fact records
PARTS = ("memories", "config", "order", "pos", "seq", "checkpoint", "oplog", "changes", "erased")  # scripts' KEYS
LOG_RETAIN = 1000  # log entries kept before the checkpoint, for replicas a little behind
CHANGES_KEPT = 10_000  # p:changes is capped near this many entries (replicas read it within milliseconds)

# Shared by the scripts: KEYS are PARTS (then fact hashes); head() is the memory's last sequence number (a memory
# stored before heads were kept gets its own from its checkpoint and log once); logged() makes op ``seq`` the head,
# logs it, and names the memory on p:changes.
_PRELUDE = """
local ORIGIN = table.remove(ARGV)  -- the server running the script (RedisStore.origin): named on p:changes
local PURGE = table.remove(ARGV)  -- p:purge, the prefix of the erasure marks (RedisStore.erasure_since)
local function head()
    local h = redis.call('get', KEYS[5])
    if h then return tonumber(h) end
    local n = tonumber(redis.call('hget', KEYS[6], 'seq') or '0')
    local last = redis.call('xrevrange', KEYS[7], '+', '-', 'COUNT', 1)[1]
    if last then n = math.max(n, tonumber(string.match(last[1], '^(%d+)'))) end
    if n > 0 then redis.call('set', KEYS[5], n) end
    return n
end
local function logged(seq, name, kind, ids, changes_kept)
    redis.call('set', KEYS[5], seq)
    redis.call('xadd', KEYS[7], seq .. '-1', 'op', kind, 'ids', ids)
    redis.call('xadd', KEYS[8], 'MAXLEN', '~', changes_kept, '*', 'm', name, 'by', ORIGIN)
end
local function checkpointed(seq, folded, state, saved_at, retain)
    redis.call('hset', KEYS[6], 'seq', seq, 'folded', folded, 'state', state, 'saved_at', saved_at)
    redis.call('xtrim', KEYS[7], 'MINID', math.max(0, seq - retain + 1) .. '-0')
end
-- a forget or replace whose state covers operations up to ARGV[3] (this server's): logged as the next operation,
-- and its state saved as the checkpoint, with that operation folded in where others' writes came between.
-- Refused ({-1, head}) when an erasing operation came after ARGV[3]: the state would bring that one back.
local function erasing(kind, name, ids, state, saved_at, retain, changes_kept)
    local h, applied = head(), tonumber(ARGV[3])
    local seq = h + 1
    local now = redis.call('time')[1]  -- erasure pending in the files from now until a purge that began later
    redis.call('set', PURGE .. ':first', now, 'NX')
    redis.call('set', PURGE .. ':last', now)
    logged(seq, name, kind, ids, changes_kept)
    redis.call('set', KEYS[9], seq)
    if applied == h then checkpointed(seq, 0, state, saved_at, retain)
    else checkpointed(applied, seq, state, saved_at, retain) end
    return {1, seq}
end
local function stale()
    local h, applied = head(), tonumber(ARGV[3])
    return applied > h or applied < tonumber(redis.call('get', KEYS[9]) or '0')
end
"""
# ARGV: name, config ('' when the memory must exist already), changes_kept, n ops, (facts, ids JSON) per op, then
# (id, text, metadata, created_at, latent) per fact; returns the first op's seq, 0 when the memory must exist and
# does not, or -k when the k-th fact's id is taken (nothing written: ids are unique however many servers write)
_WRITE = _PRELUDE + """
if ARGV[2] == '' and redis.call('sismember', KEYS[1], ARGV[1]) == 0 then return 0 end
for k = 10, #KEYS do
    if redis.call('exists', KEYS[k]) == 1 then return 9 - k end
end
local nops = tonumber(ARGV[4])
local first = head() + 1
local nfacts = #KEYS - 9
local pos = redis.call('incrby', KEYS[4], nfacts) - nfacts
redis.call('sadd', KEYS[1], ARGV[1])
redis.call('setnx', KEYS[2], ARGV[2])
local base, k = 4 + 2 * nops, 0
for i = 1, nops do
    local seq = first + i - 1
    for _ = 1, tonumber(ARGV[3 + 2 * i]) do
        k = k + 1
        local b = base + (k - 1) * 5
        redis.call('hset', KEYS[9 + k], 'text', ARGV[b + 2], 'metadata', ARGV[b + 3], 'created_at', ARGV[b + 4],
                   'latent', ARGV[b + 5], 'seq', seq)
        redis.call('zadd', KEYS[3], pos + k - 1, ARGV[b + 1])
    end
    logged(seq, ARGV[1], 'write', ARGV[4 + 2 * i], ARGV[3])
end
return first
"""
# ARGV: name, changes_kept, the operation the state covers, ids JSON, state, saved_at, retain, ids...; {1, seq}
# done, {0, head} one is not there, {-1, head} stale
_FORGET = _PRELUDE + """
if stale() then return {-1, head()} end
for i = 10, #KEYS do
    if redis.call('exists', KEYS[i]) == 0 then return {0, head()} end
end
for i = 10, #KEYS do redis.call('del', KEYS[i]) end
for i = 8, #ARGV do redis.call('zrem', KEYS[3], ARGV[i]) end
return erasing('forget', ARGV[1], ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7]), ARGV[2])
"""
# KEYS[10] the fact; ARGV: name, changes_kept, the operation the state covers ('' without a state: a meta op), ids
# JSON, state, saved_at, retain, text, metadata, latent ('' to keep it); answers as _FORGET
_REPLACE = _PRELUDE + """
if ARGV[3] ~= '' and stale() then return {-1, head()} end
if redis.call('exists', KEYS[10]) == 0 then return {0, head()} end
local seq = head() + 1
redis.call('hset', KEYS[10], 'text', ARGV[8], 'metadata', ARGV[9])
if ARGV[10] ~= '' then redis.call('hset', KEYS[10], 'latent', ARGV[10], 'seq', seq) end
if ARGV[3] == '' then
    logged(seq, ARGV[1], 'meta', ARGV[4], ARGV[2])
    return {1, seq}
end
return erasing('replace', ARGV[1], ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7]), ARGV[2])
"""
# ARGV: seq, state, saved_at, retain; {1, head} saved, {0, head} ignored (not newer than the saved one, or from
# before the last forget or replace, whose latent it would need again), {-1, head} past the head
_CHECKPOINT = _PRELUDE + """
local h, seq = head(), tonumber(ARGV[1])
if seq > h then return {-1, h} end
if seq <= tonumber(redis.call('hget', KEYS[6], 'seq') or '-1') then return {0, h} end
if seq < tonumber(redis.call('get', KEYS[9]) or '0') then return {0, h} end
checkpointed(seq, 0, ARGV[2], ARGV[3], tonumber(ARGV[4]))
return {1, h}
"""
# KEYS: p:purge:first, p:purge:last; ARGV: when the purge began (Redis's clock, s)
_PURGED = """
if tonumber(redis.call('get', KEYS[2]) or '0') < tonumber(ARGV[1]) then
    redis.call('del', KEYS[1], KEYS[2])
else
    redis.call('set', KEYS[1], ARGV[1])
end
"""
# {config or nil, checkpoint fields, head, log after the checkpoint}
_LOAD = _PRELUDE + """
local h = head()
local cp = redis.call('hgetall', KEYS[6])
local from = tonumber(redis.call('hget', KEYS[6], 'seq') or '0') + 1
return {redis.call('get', KEYS[2]), cp, h, redis.call('xrange', KEYS[7], from .. '-1', '+')}
"""
# ARGV: since; {head, log from it on}
_CHANGES = _PRELUDE + """
return {head(), redis.call('xrange', KEYS[7], ARGV[1] .. '-0', '+')}
"""


class RedisStore:
    shared = True

    def __init__(self, url: str, prefix: str = "larimar") -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5)
        self.prefix = prefix
        self.origin = uuid.uuid4().hex[:12]  # names this server's changes on p:changes, so its tail skips them
        self._scripts = {name: self.client.register_script(src) for name, src in (
            ("write", _WRITE), ("forget", _FORGET), ("replace", _REPLACE), ("checkpoint", _CHECKPOINT),
            ("load", _LOAD), ("changes", _CHANGES), ("purged", _PURGED))}

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

    @property
    def _changes(self) -> str:
        return f"{self.prefix}:changes"

    @property
    def _purge(self) -> str:
        return f"{self.prefix}:purge"

    def _keys(self, name: str) -> list[str]:
        """KEYS[1..9] of every script: PARTS of memory ``name``."""
        return [self._index, *(self._k(name, part) for part in PARTS[1:-2]), self._changes, self._k(name, "erased")]

    def _call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except redis.RedisError as e:
            raise StoreError(f"redis: {e}") from e

    def _run(self, script: str, name: str, facts: list[str], args: list[Any]) -> Any:
        return self._call(lambda: self._scripts[script](keys=self._keys(name) + facts,
                                                         args=[*args, self._purge, self.origin]))

    def _multi(self, build: Callable[[redis.client.Pipeline], object]) -> list:
        def run() -> list:
            pipe = self.client.pipeline(transaction=True)
            build(pipe)
            return pipe.execute()

        return self._call(run)

    def _where(self) -> str:
        kw = self.client.connection_pool.connection_kwargs  # no password in what is named
        place = kw.get("path") or f"{kw.get('host')}:{kw.get('port')}/{kw.get('db', 0)}"
        return f"redis store {place} prefix {self.prefix!r}"

    def claim(self, owner: str) -> None:
        """Shared: any number of servers write it, ordered by the store (nothing to claim)."""
        log.info("%s: %s is one of its replicas", self._where(), owner)

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def names(self) -> list[str]:
        return sorted(n.decode() for n in self._call(lambda: self.client.smembers(self._index)))

    # --- changes ---------------------------------------------------------------------

    def write(self, name: str, facts: list[Fact], config: dict[str, Any], entry_size: int | None = None,
              create: bool = True) -> int:
        ops = entries(facts, entry_size)
        args: list[Any] = [name, json.dumps(config) if create else "", CHANGES_KEPT, len(ops)]
        for op in ops:
            args += [len(op), json.dumps([f.id for f in op])]
        for f in facts:
            args += [f.id, f.text, json.dumps(f.metadata), f.created_at, codec.latent_bytes(f.latent)]
        first = int(self._run("write", name, [self._fact(name, f.id) for f in facts], args))
        if first < 0:
            raise DuplicateFact(f"memory {name!r} already holds fact {facts[-first - 1].id!r}")
        if first == 0:
            raise NoMemory(f"memory {name!r} does not exist (deleted meanwhile)")
        return first

    def _answer(self, name: str, done: list[int], applied: int | None) -> int:
        status, seq = int(done[0]), int(done[1])
        if status < 0:
            raise Stale(f"{self._where()}: memory {name!r} was forgotten from or updated after operation "
                        f"{applied} (it is at {seq})", seq)
        return seq if status > 0 else 0

    def forget(self, name: str, fact_ids: list[str], checkpoint: Checkpoint) -> bool:
        cp = checkpoint
        done = self._run("forget", name, [self._fact(name, i) for i in fact_ids],
                         [name, CHANGES_KEPT, cp.seq, json.dumps(fact_ids), cp.state, cp.saved_at, LOG_RETAIN,
                          *fact_ids])
        return self._answer(name, done, cp.seq)

    def replace(self, name: str, fact: Fact, checkpoint: Checkpoint | None) -> bool:
        cp = checkpoint
        latent = b"" if fact.latent is None else codec.latent_bytes(fact.latent)
        done = self._run("replace", name, [self._fact(name, fact.id)],
                         [name, CHANGES_KEPT, "" if cp is None else cp.seq, json.dumps([fact.id]),
                          b"" if cp is None else cp.state, "" if cp is None else cp.saved_at, LOG_RETAIN, fact.text,
                          json.dumps(fact.metadata), latent])
        return self._answer(name, done, None if cp is None else cp.seq)

    def checkpoint(self, name: str, checkpoint: Checkpoint) -> None:
        cp = checkpoint
        status, head = self._run("checkpoint", name, [], [cp.seq, cp.state, cp.saved_at, LOG_RETAIN])
        if int(status) < 0:
            raise Stale(f"{self._where()}: memory {name!r} is at operation {head}, behind checkpoint {cp.seq}: the "
                        "store lost operations this server applied", int(head))

    def delete(self, name: str) -> None:
        ids = self._ids(name)
        now = int(time.time())
        self._multi(lambda p: (p.srem(self._index, name), p.srem(self._with_documents, name),
                               self._drop(p, name, ids, NEW_PARTS + OLD_PARTS), p.incr(self._k(name, "seq")),
                               p.set(self._purge + ":first", now, nx=True), p.set(self._purge + ":last", now),
                               p.xadd(self._changes, {"m": name, "by": self.origin}, maxlen=CHANGES_KEPT,
                                      approximate=True)))

    def _ids(self, name: str) -> list[str]:
        return [i.decode() for i in self._call(lambda: self.client.zrange(self._k(name, "order"), 0, -1))]

    def _drop(self, p: redis.client.Pipeline, name: str, ids: list[str], parts: tuple[str, ...]) -> None:
        for part in parts:
            p.delete(self._k(name, part))
        for chunk in range(0, len(ids), 1000):
            p.delete(*[self._fact(name, i) for i in ids[chunk : chunk + 1000]])

    # --- reads ------------------------------------------------------------------------

    def load(self, name: str) -> Stored:
        config, cp, head, log_ = self._run("load", name, [], [])
        fields = dict(zip(cp[::2], cp[1::2], strict=True))
        checkpoint = Checkpoint(int(fields[b"seq"]), fields[b"state"], fields[b"saved_at"].decode(),
                                int(fields.get(b"folded", 0))) if fields else None
        return Stored(json.loads(config) if config else None, checkpoint, _ops(log_), int(head))

    def changes(self, name: str, since: int) -> tuple[int, list[Op]]:
        head, log_ = self._run("changes", name, [], [since])
        return int(head), _ops(log_)

    def heads(self, names: list[str]) -> list[int]:
        got = self._call(lambda: self._pipeline(lambda p: [p.get(self._k(n, "seq")) for n in names]))
        return [int(h or 0) for h in got]

    def tail(self, position: str, block_s: float) -> tuple[str, list[tuple[str, float]]]:
        if not position:  # from now on: the newest entry's id
            last = self._call(lambda: self.client.xrevrange(self._changes, count=1))
            return (last[0][0].decode() if last else "0-0"), []
        got = self._call(lambda: self.client.xread({self._changes: position}, block=max(1, int(block_s * 1000))))
        if not got:
            return position, []
        entries_ = got[0][1]
        changed: dict[str, float] = {}  # the earliest change of each memory; an entry's id is Redis's clock in ms
        for eid, f in entries_:
            if f.get(b"by", b"").decode() != self.origin:
                changed.setdefault(f[b"m"].decode(), int(eid.split(b"-")[0]) / 1000)
        return entries_[-1][0].decode(), list(changed.items())

    def latents(self, name: str, chunk: int = 8192, upto: int | None = None) -> Iterator[tuple[list[str], Tensor]]:
        start = 0
        while True:
            ids = [i.decode() for i in self._call(
                lambda s=start: self.client.zrange(self._k(name, "order"), s, s + chunk - 1))]
            if not ids:
                return
            start += len(ids)
            rows = self._call(lambda ids=ids: self._pipeline(
                lambda p: [p.hmget(self._fact(name, i), "latent", "seq") for i in ids]))
            kept = [(i, blob) for i, (blob, seq) in zip(ids, rows, strict=True)
                    if blob is not None and (upto is None or int(seq or 0) <= upto)]
            if kept:
                yield [i for i, _ in kept], codec.latents_from([blob for _, blob in kept])

    def latents_of(self, name: str, ids: list[str]) -> list[Tensor | None]:
        blobs = self._call(lambda: self._pipeline(lambda p: [p.hget(self._fact(name, i), "latent") for i in ids]))
        return [None if b is None else codec.latents_from([b])[0] for b in blobs]

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

    def erasure_since(self) -> float | None:
        first = self._call(lambda: self.client.get(self._purge + ":first"))
        return None if first is None else float(first)

    def purge(self, timeout_s: float = 300.0) -> None:
        """Rewrite the AOF (and the RDB file where snapshots are on) from what the data set holds now; then the
        erasure marks go, unless an erasure came in the second the rewrite began or after (then it is pending
        from then on)."""
        began = int(self._call(self.client.time)[0])
        self._rewrite(timeout_s)
        self._call(lambda: self._scripts["purged"](keys=[self._purge + ":first", self._purge + ":last"],
                                                   args=[began]))

    def _rewrite(self, timeout_s: float) -> None:
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


def _ops(entries_: list) -> list[Op]:
    """Log entries as a script returns them ([id, [field, value, ...]]) as operations."""
    out = []
    for eid, flat in entries_:
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        out.append(Op(int(eid.split(b"-")[0]), fields.get(b"op", b"write").decode(), json.loads(fields[b"ids"])))
    return out
