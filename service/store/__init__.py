"""Where memories persist: pick a backend by URL."""

from __future__ import annotations

from pathlib import Path

from service.store.base import Checkpoint, Fact, Op, Stale, Store, Stored, StoreError, StoreHeld, entries
from service.store.redis_store import RedisStore
from service.store.sqlite_store import DB_NAME, SqliteStore


def open_store(url: str) -> Store:
    """``redis://``/``rediss://``/``unix://`` -> Redis; ``file://DIR`` -> SQLite in DIR/larimar.sqlite3;
    ``sqlite://PATH`` -> SQLite in the database file PATH."""
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(url)
    if url.startswith("file://"):
        directory = Path(url.removeprefix("file://"))
        return SqliteStore(directory / DB_NAME, old_layout=directory)
    if url.startswith("sqlite://"):
        return SqliteStore(url.removeprefix("sqlite://"))
    raise ValueError(f"unsupported LARIMAR_STORE_URL {url!r}: use file://DIR, sqlite://FILE or redis://host:port/db")


__all__ = ["Checkpoint", "Fact", "Op", "RedisStore", "SqliteStore", "Stale", "Store", "StoreError", "StoreHeld",
           "Stored", "entries", "open_store"]
