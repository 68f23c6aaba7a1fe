"""Where memories persist: pick a backend by URL."""

from __future__ import annotations

from service.store.base import Store, StoreError
from service.store.codec import Stored
from service.store.file_store import FileStore
from service.store.redis_store import RedisStore


def open_store(url: str) -> Store:
    """``redis://``/``rediss://``/``unix://`` -> Redis; ``file://DIR`` -> a local directory."""
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(url)
    if url.startswith("file://"):
        return FileStore(url.removeprefix("file://"))
    raise ValueError(f"unsupported LARIMAR_STORE_URL {url!r}: use file://DIR or redis://host:port/db")


__all__ = ["FileStore", "RedisStore", "Store", "StoreError", "Stored", "open_store"]
