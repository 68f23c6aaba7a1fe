"""Redis backend: a snapshot string and a log list per memory, changed in MULTI transactions.

Durability is the server's: run Redis with ``appendonly yes`` and
``appendfsync always`` (docker/redis.conf) so an acknowledged command is on disk.
"""

from __future__ import annotations

import redis

from service.store.base import StoreError
from service.store.codec import Stored


class RedisStore:
    def __init__(self, url: str, prefix: str = "larimar") -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
        self.prefix = prefix

    def _k(self, name: str, part: str) -> str:
        return f"{self.prefix}:m:{name}:{part}"

    @property
    def _index(self) -> str:
        return f"{self.prefix}:memories"

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def names(self) -> list[str]:
        try:
            return sorted(n.decode() for n in self.client.smembers(self._index))
        except redis.RedisError as e:
            raise StoreError(f"redis: {e}") from e

    def load(self, name: str) -> Stored:
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.get(self._k(name, "snapshot"))
            pipe.lrange(self._k(name, "log"), 0, -1)
            snapshot, log = pipe.execute()
        except redis.RedisError as e:
            raise StoreError(f"redis: {e}") from e
        return Stored(snapshot=snapshot, log=list(log))

    def append(self, name: str, entry: bytes) -> None:
        self._multi(lambda p: (p.sadd(self._index, name), p.rpush(self._k(name, "log"), entry)))

    def replace(self, name: str, snapshot: bytes) -> None:
        self._multi(
            lambda p: (
                p.sadd(self._index, name),
                p.set(self._k(name, "snapshot"), snapshot),
                p.delete(self._k(name, "log")),
            )
        )

    def delete(self, name: str) -> None:
        self._multi(
            lambda p: (p.srem(self._index, name), p.delete(self._k(name, "snapshot"), self._k(name, "log")))
        )

    def _multi(self, build) -> None:  # noqa: ANN001 - a callback filling the pipeline
        try:
            pipe = self.client.pipeline(transaction=True)
            build(pipe)
            pipe.execute()
        except redis.RedisError as e:
            raise StoreError(f"redis: {e}") from e

    def close(self) -> None:
        self.client.close()
