"""Embedded backend: one SQLite database (stdlib ``sqlite3``), a row per fact.

Why SQLite: a real embedded database with transactions, so a write (its facts and its log entry) or a
forget (the delete and the new checkpoint) is one atomic commit; an index gives facts by id and in write
order without reading the rest; and ``secure_delete`` overwrites deleted rows with zeros. WAL mode lets
readers (queries fetching a recalled fact's text) run beside a writer; ``synchronous=FULL`` makes each commit
durable before it returns. A delete still has old page images in the WAL until a checkpoint copies them
back and the WAL is truncated: ``purge`` does that (``PRAGMA wal_checkpoint(TRUNCATE)``).

The one writer (``claim``) holds an exclusive ``flock`` on ``<db>.lock`` beside the database, with its owner
written in the file so a refusal can name it. The kernel drops the lock with the process, however it ends: a
SIGKILL leaves nothing stale.

Memories kept in the layout before this one (``DIR/<memory>/snapshot.safetensors`` and ``log.bin`` under a
``file://DIR`` store) are migrated into the database when the store opens, then removed.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import sqlite3
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import Tensor

from service.errors import DuplicateFact, NoMemory
from service.store import codec
from service.store.base import Checkpoint, Fact, Op, Stale, Stored, StoreError, StoreHeld, entries
from service.timing import utc_now

log = logging.getLogger(__name__)

DB_NAME = "larimar.sqlite3"
_STALE_UNLESS = "-- the head is args[2]"  # a pseudo-statement of _tx: Stale unless memory args[0]'s head is args[2]
SCHEMA = """
CREATE TABLE IF NOT EXISTS memories (name TEXT PRIMARY KEY, config TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS facts (
    pos INTEGER PRIMARY KEY,  -- write order
    memory TEXT NOT NULL, id TEXT NOT NULL, text TEXT NOT NULL, metadata TEXT NOT NULL, created_at TEXT NOT NULL,
    latent BLOB NOT NULL, UNIQUE (memory, id));
CREATE INDEX IF NOT EXISTS facts_by_memory ON facts (memory, pos);
CREATE TABLE IF NOT EXISTS checkpoints (memory TEXT PRIMARY KEY, seq INTEGER NOT NULL, state BLOB NOT NULL,
    saved_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS log (memory TEXT NOT NULL, seq INTEGER NOT NULL, ids TEXT NOT NULL,
    PRIMARY KEY (memory, seq));
CREATE TABLE IF NOT EXISTS documents (pos INTEGER PRIMARY KEY, memory TEXT NOT NULL, id TEXT NOT NULL,
    status TEXT NOT NULL, record TEXT NOT NULL, UNIQUE (memory, id));
"""


def _connect(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("PRAGMA secure_delete=ON")
    return con


class SqliteStore:
    """The database ``path``; ``old_layout`` is a directory whose memories in the layout before this one
    ``migrate`` moves in (a ``file://DIR`` store's DIR).

    One process writes it (``claim``), so the log holds writes only: a forget or replace saves the checkpoint
    after it, which is all a later start needs, and no other server follows the log. The head is the later of
    the checkpoint's sequence number and the log's last."""

    shared = False

    def __init__(self, path: str | Path, old_layout: Path | None = None) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._w = _connect(self.path)  # the one writer
            self._w.executescript(SCHEMA)
            self._r = _connect(self.path)  # reads, beside the writer (WAL)
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"sqlite store {self.path}: {e}") from e
        self._wlock, self._rlock = threading.Lock(), threading.Lock()
        self._old_layout = old_layout
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._claim_lock = threading.Lock()
        self._lock_fd: int | None = None  # the claim: an fd holding the flock
        self._closed = False

    def migrate(self, default_config: dict[str, Any]) -> list[str]:
        """Memories of a ``file://DIR`` store in the layout before this one, moved into the database."""
        return migrate_file_layout(self._old_layout, self, default_config) if self._old_layout else []

    # --- plumbing -----------------------------------------------------------------

    def _tx(self, statements: list[tuple[str, tuple]], first_must_change: int = 0) -> bool:
        """Run statements in one transaction. With ``first_must_change`` = n, a first statement that changes
        fewer than n rows rolls everything back and returns False."""
        with self._wlock:
            try:
                self._w.execute("BEGIN IMMEDIATE")
                for i, (sql, args) in enumerate(statements):
                    if sql is _STALE_UNLESS and (head := self._head(self._w, args[0])) != args[2]:
                        self._w.execute("ROLLBACK")
                        raise Stale(f"sqlite store {self.path}: memory {args[0]!r} is at operation {head}, not "
                                    f"{args[2]}", head)
                    if sql is _STALE_UNLESS:
                        continue
                    changed = self._w.execute(sql, args).rowcount
                    if i == 0 and changed < first_must_change:
                        self._w.execute("ROLLBACK")
                        return False
                self._w.execute("COMMIT")
                return True
            except sqlite3.Error as e:
                if self._w.in_transaction:
                    self._w.execute("ROLLBACK")
                raise StoreError(f"sqlite store: {e}") from e

    def _head(self, con: sqlite3.Connection, name: str) -> int:
        return int(con.execute("SELECT MAX(COALESCE((SELECT seq FROM checkpoints WHERE memory = ?), 0), "
                               "COALESCE((SELECT MAX(seq) FROM log WHERE memory = ?), 0))", (name, name)).fetchone()[0])

    def _following(self, name: str, checkpoint: Checkpoint | None) -> list[tuple[str, tuple]]:
        """A statement that fails the transaction (Stale) unless ``checkpoint`` is at the head: see _tx (one
        process writes, so nothing else comes between)."""
        if checkpoint is None:
            return []
        return [(_STALE_UNLESS, (name, name, checkpoint.seq))]

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._rlock:
            try:
                return self._r.execute(sql, args).fetchall()
            except sqlite3.Error as e:
                raise StoreError(f"sqlite store: {e}") from e

    # --- the one writer ------------------------------------------------------------------

    def claim(self, owner: str) -> None:
        """An exclusive, non-blocking flock on ``<db>.lock``, held until ``close``; ``owner`` is written into the
        file once locked. Another open file holding it, in this process or another, means StoreHeld."""
        with self._claim_lock:
            if self._closed:
                raise StoreError(f"sqlite store {self.path}: closed")
            if self._lock_fd is not None:
                return  # already ours
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes
            except OSError as e:
                raise StoreError(f"sqlite store {self.lock_path}: {e}") from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise StoreHeld(f"sqlite store {self.path} is held by {holder}: another larimar server writes it "
                                "(one server per SQLite store); stop that one first, or run several on Redis "
                                "(LARIMAR_STORE_URL=redis://...; README \"Replicas\")") from None
            except OSError as e:
                os.close(fd)
                raise StoreError(f"sqlite store {self.lock_path}: {e}") from e
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, owner.encode(), 0)
            except OSError as e:
                os.close(fd)  # drops the lock
                raise StoreError(f"sqlite store {self.lock_path}: {e}") from e
            self._lock_fd = fd
        log.info("sqlite store %s: this process (%s) is its one writer", self.path, owner)

    def _release(self) -> None:
        with self._claim_lock:
            self._closed = True
            fd, self._lock_fd = self._lock_fd, None
            if fd is None:
                return
            try:
                os.ftruncate(fd, 0)  # the name goes before the lock: no later refusal names this process
            except OSError:
                pass
            os.close(fd)  # closing the last fd of the open file drops the flock

    def ping(self) -> bool:
        try:
            self._read("SELECT 1")
            return True
        except StoreError:
            return False

    def names(self) -> list[str]:
        return [n for (n,) in self._read("SELECT name FROM memories ORDER BY name")]

    # --- changes --------------------------------------------------------------------

    def write(self, name: str, facts: list[Fact], config: dict[str, Any], entry_size: int | None = None,
              create: bool = True) -> int:
        with self._wlock:
            try:
                self._w.execute("BEGIN IMMEDIATE")
                if not create and not self._w.execute("SELECT 1 FROM memories WHERE name = ?", (name,)).fetchall():
                    self._w.execute("ROLLBACK")
                    raise NoMemory(f"memory {name!r} does not exist (deleted meanwhile)")
                seq = self._head(self._w, name) + 1
                self._w.execute("INSERT OR IGNORE INTO memories VALUES (?, ?, ?)",
                                (name, json.dumps(config), utc_now()))
                self._w.executemany(
                    "INSERT INTO facts (memory, id, text, metadata, created_at, latent) VALUES (?, ?, ?, ?, ?, ?)",
                    [(name, f.id, f.text, json.dumps(f.metadata), f.created_at, codec.latent_bytes(f.latent))
                     for f in facts])
                self._w.executemany("INSERT INTO log VALUES (?, ?, ?)", [
                    (name, seq + i, json.dumps([f.id for f in op])) for i, op in enumerate(entries(facts, entry_size))])
                self._w.execute("COMMIT")
                return seq
            except sqlite3.IntegrityError as e:  # UNIQUE (memory, id)
                self._w.execute("ROLLBACK")
                raise DuplicateFact(f"memory {name!r} already holds a fact of these ids: {e}") from e
            except sqlite3.Error as e:
                if self._w.in_transaction:
                    self._w.execute("ROLLBACK")
                raise StoreError(f"sqlite store: {e}") from e

    def _checkpoint_stmts(self, name: str, cp: Checkpoint) -> list[tuple[str, tuple]]:
        return [("INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?)", (name, cp.seq, cp.state, cp.saved_at)),
                ("DELETE FROM log WHERE memory = ? AND seq <= ?", (name, cp.seq))]

    def forget(self, name: str, fact_ids: list[str], checkpoint: Checkpoint) -> int:
        marks = ",".join("?" * len(fact_ids))
        after = Checkpoint(checkpoint.seq + 1, checkpoint.state, checkpoint.saved_at)  # this forget, unlogged
        done = self._tx([(f"DELETE FROM facts WHERE memory = ? AND id IN ({marks})", (name, *fact_ids)),
                         *self._following(name, checkpoint), *self._checkpoint_stmts(name, after)],
                        first_must_change=len(fact_ids))
        return after.seq if done else 0

    def replace(self, name: str, fact: Fact, checkpoint: Checkpoint | None) -> int:
        sets, args = "text = ?, metadata = ?", [fact.text, json.dumps(fact.metadata)]
        if fact.latent is not None:
            sets, args = sets + ", latent = ?", [*args, codec.latent_bytes(fact.latent)]
        after = None if checkpoint is None else Checkpoint(checkpoint.seq + 1, checkpoint.state, checkpoint.saved_at)
        done = self._tx([(f"UPDATE facts SET {sets} WHERE memory = ? AND id = ?", (*args, name, fact.id)),
                         *self._following(name, checkpoint),
                         *(self._checkpoint_stmts(name, after) if after else [])], first_must_change=1)
        if not done:
            return 0
        if after is not None:
            return after.seq
        with self._rlock:
            return self._head(self._r, name)

    def checkpoint(self, name: str, checkpoint: Checkpoint) -> None:
        with self._rlock:  # one process writes: nothing moves the head meanwhile
            head = self._head(self._r, name)
        if checkpoint.seq > head:
            raise Stale(f"sqlite store {self.path}: memory {name!r} is at operation {head}, behind checkpoint "
                        f"{checkpoint.seq}", head)
        saved = self._read("SELECT seq FROM checkpoints WHERE memory = ?", (name,))
        if not saved or saved[0][0] < checkpoint.seq:
            self._tx(self._checkpoint_stmts(name, checkpoint))

    def delete(self, name: str) -> None:
        self._tx([(f"DELETE FROM {table} WHERE memory = ?", (name,)) for table in ("facts", "checkpoints", "log",
                                                                                "documents")]
                 + [("DELETE FROM memories WHERE name = ?", (name,))])

    # --- reads -------------------------------------------------------------------------

    def load(self, name: str) -> Stored:
        with self._rlock:  # one read transaction: one instant
            try:
                self._r.execute("BEGIN")
                config = self._r.execute("SELECT config FROM memories WHERE name = ?", (name,)).fetchall()
                cp = self._r.execute("SELECT seq, state, saved_at FROM checkpoints WHERE memory = ?",
                                     (name,)).fetchall()
                ops = self._r.execute("SELECT seq, ids FROM log WHERE memory = ? ORDER BY seq", (name,)).fetchall()
                head = self._head(self._r, name)
                self._r.execute("COMMIT")
            except sqlite3.Error as e:
                if self._r.in_transaction:
                    self._r.execute("ROLLBACK")
                raise StoreError(f"sqlite store: {e}") from e
        return Stored(json.loads(config[0][0]) if config else None, Checkpoint(*cp[0]) if cp else None,
                      [Op(seq, "write", json.loads(ids)) for seq, ids in ops], head)

    def changes(self, name: str, since: int) -> tuple[int, list[Op]]:
        rows = self._read("SELECT seq, ids FROM log WHERE memory = ? AND seq >= ? ORDER BY seq", (name, since))
        with self._rlock:
            head = self._head(self._r, name)
        return head, [Op(seq, "write", json.loads(ids)) for seq, ids in rows]

    def heads(self, names: list[str]) -> list[int]:
        with self._rlock:
            return [self._head(self._r, n) for n in names]

    def tail(self, position: str, block_s: float) -> tuple[str, list[tuple[str, float]]]:
        raise NotImplementedError("an embedded store has one writer: there is nothing to follow")

    def latents(self, name: str, chunk: int = 8192, upto: int | None = None) -> Iterator[tuple[list[str], Tensor]]:
        last = -1
        while True:
            rows = self._read("SELECT pos, id, latent FROM facts WHERE memory = ? AND pos > ? ORDER BY pos LIMIT ?",
                              (name, last, chunk))
            if not rows:
                return
            last = rows[-1][0]
            yield [r[1] for r in rows], codec.latents_from([r[2] for r in rows])

    def latents_of(self, name: str, ids: list[str]) -> list[Tensor | None]:
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = self._read(f"SELECT id, latent FROM facts WHERE memory = ? AND id IN ({marks})", (name, *ids))
        found = dict(zip([r[0] for r in rows], codec.latents_from([r[1] for r in rows]) if rows else [], strict=True))
        return [found.get(i) for i in ids]

    def facts(self, name: str, ids: list[str]) -> list[Fact | None]:
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = self._read(f"SELECT id, text, metadata, created_at FROM facts WHERE memory = ? AND id IN ({marks})",
                          (name, *ids))
        found = {r[0]: Fact(r[0], r[1], json.loads(r[2]), r[3]) for r in rows}
        return [found.get(i) for i in ids]

    def count(self, name: str) -> int:
        return int(self._read("SELECT COUNT(*) FROM facts WHERE memory = ?", (name,))[0][0])

    def page(self, name: str, limit: int, offset: int) -> list[Fact]:
        rows = self._read("SELECT id, text, metadata, created_at FROM facts WHERE memory = ? ORDER BY pos "
                          "LIMIT ? OFFSET ?", (name, limit, offset))
        return [Fact(r[0], r[1], json.loads(r[2]), r[3]) for r in rows]

    # --- documents -----------------------------------------------------------------------

    def put_document(self, name: str, record: dict[str, Any]) -> None:
        self._tx([("INSERT INTO documents (memory, id, status, record) VALUES (?, ?, ?, ?) ON CONFLICT "
                   "(memory, id) DO UPDATE SET status = excluded.status, record = excluded.record",
                   (name, record["id"], record["status"], json.dumps(record)))])

    def documents(self, name: str) -> list[dict[str, Any]]:
        return [json.loads(r) for (r,) in self._read("SELECT record FROM documents WHERE memory = ? ORDER BY pos",
                                                     (name,))]

    def document(self, name: str, doc_id: str) -> dict[str, Any] | None:
        rows = self._read("SELECT record FROM documents WHERE memory = ? AND id = ?", (name, doc_id))
        return json.loads(rows[0][0]) if rows else None

    def delete_document(self, name: str, doc_id: str) -> bool:
        return self._tx([("DELETE FROM documents WHERE memory = ? AND id = ?", (name, doc_id))], first_must_change=1)

    def unfinished_documents(self) -> list[tuple[str, dict[str, Any]]]:
        rows = self._read("SELECT memory, record FROM documents WHERE status IN ('ingesting', 'deleting') ORDER BY pos")
        return [(m, json.loads(r)) for m, r in rows]

    # --- erasure -------------------------------------------------------------------------

    def purge(self) -> None:
        """Copy the WAL into the database and truncate it: deleted rows' old page images go with it."""
        with self._wlock, self._rlock:
            try:
                busy, _, _ = self._w.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except sqlite3.Error as e:
                raise StoreError(f"sqlite store: {e}") from e
        if busy:
            raise StoreError("sqlite store: a reader kept the WAL checkpoint from completing; try again")

    def erasure_since(self) -> float | None:
        return None  # one server: it knows what it deleted

    def close(self) -> None:
        with self._wlock, self._rlock:
            self._r.close()
            self._w.close()
        self._release()  # after the last commit


def _holder(fd: int, tries: int = 20, wait_s: float = 0.025) -> str:
    """The owner written in a lock file someone else holds. Its holder writes it just after locking, so an empty
    file is read again a few times (bounded) before the refusal names no one."""
    for _ in range(tries):
        try:
            name = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        except OSError:
            name = ""
        if name:
            return name
        time.sleep(wait_s)
    return "another process (its name not written yet)"


# --- the layout before per-fact records ---------------------------------------------------------

_HEAD = struct.Struct("<QI")


def _old_log(path: Path) -> list[bytes]:
    """The CRC-framed records of an old log.bin, up to the first torn or corrupt one (never acknowledged)."""
    data = path.read_bytes() if path.exists() else b""
    entries, pos = [], 0
    while pos + _HEAD.size <= len(data):
        n, crc = _HEAD.unpack_from(data, pos)
        body = data[pos + _HEAD.size : pos + _HEAD.size + n]
        if len(body) < n or zlib.crc32(body) != crc:
            break
        entries.append(body)
        pos += _HEAD.size + n
    return entries


def migrate_file_layout(directory: Path, store: SqliteStore, default_config: dict[str, Any]) -> list[str]:
    """Move every memory kept as DIR/<memory>/{snapshot.safetensors, log.bin} into the database, then remove
    its directory. A memory half-migrated by a crash is found again and redone from its files."""
    done = []
    for d in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")):
        snap, log_path = d / "snapshot.safetensors", d / "log.bin"
        if not (snap.exists() or log_path.exists()):
            continue
        log.info("migrating memory %r from %s into %s", d.name, d, store.path)
        store.delete(d.name)
        import_old(store, d.name, snap.read_bytes() if snap.exists() else None, _old_log(log_path), default_config)
        shutil.rmtree(d)
        done.append(d.name)
    if done:
        store.purge()
    return done


def import_old(store: Any, name: str, snapshot: bytes | None, entries: list[bytes],
               default_config: dict[str, Any]) -> None:
    """One memory from an old snapshot and log into a per-fact store (shared by both backends' migrations).

    A memory that never had a snapshot was restored with the settings' configuration, and still is."""
    seq, config = 0, default_config
    if snapshot is not None:
        tensors, meta = codec.decode(snapshot)
        seq, config = int(meta["seq"]), meta["config"]
        facts = [Fact(**f, latent=z) for f, z in zip(meta["facts"], tensors["latents"], strict=True)]
        state = codec.encode({k: tensors[k] for k in ("M", "C_inv", "M_ref", "updates")}, {})
        first = store.write(name, facts, config)  # the memory itself, covered by the checkpoint that follows
        store.checkpoint(name, Checkpoint(first, state, meta.get("snapshot_at") or utc_now()))
    for blob in entries:
        tensors, meta = codec.decode(blob)
        if int(meta["seq"]) <= seq:
            continue  # already inside the snapshot
        facts = [Fact(**f, latent=z) for f, z in zip(meta["facts"], tensors["latents"], strict=True)]
        store.write(name, facts, config)  # the store numbers it: the old numbers only order the entries
