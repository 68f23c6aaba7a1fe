"""API keys: who may do what to which memories.

Guarantee: with any key configured, every /v1 call names a key (``Authorization: Bearer <key>``) or gets 401;
a key reaches only the memories its patterns match, with only its role's rights, or gets 403; keys are
compared in constant time against every configured key, and never logged or echoed.

Roles, each holding the one before: ``read`` (list and read facts, export, query, score), ``write`` (write,
import, forget, snapshot, purge), ``admin`` (delete memories; lists every memory whatever its patterns).

Keys come from ``LARIMAR_API_KEYS`` (comma-separated; each is admin over every memory, as before scoped keys
existed) and from ``LARIMAR_API_KEYS_FILE``, a JSON list of
``{"key": "..." | "key_sha256": "<hex>", "role": "read" | "write" | "admin", "memories": ["team-a-*", "shared"]}``
where a pattern ending in ``*`` is a name prefix and ``["*"]`` is every memory; a file holding only hashes
leaks no key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Role = Literal["read", "write", "admin"]
ROLES: tuple[Role, ...] = ("read", "write", "admin")


@dataclass(frozen=True)
class ApiKey:
    name: str  # how errors and logs refer to it: its position in the configuration, never the key
    digest: bytes  # sha256 of the key
    role: Role
    memories: tuple[str, ...]  # names, or prefixes ending in "*"

    def reaches(self, memory: str) -> bool:
        return any(memory.startswith(p[:-1]) if p.endswith("*") else memory == p for p in self.memories)

    def allows(self, needed: Role) -> bool:
        return ROLES.index(self.role) >= ROLES.index(needed)

    @property
    def sees_all(self) -> bool:
        return self.role == "admin"

    def refusal(self, memory: str | None, need: Role) -> str | None:
        """Why this key may not do ``need`` to ``memory`` (None: it may); the reason names the key's label."""
        if memory is not None and not self.reaches(memory):
            return f"API key {self.name} does not reach memory {memory!r}"
        if not self.allows(need):
            return f"API key {self.name} has role {self.role}; this needs {need}"
        return None


def listed(key: ApiKey | None, memory: str) -> bool:
    """Whether a listing shown to ``key`` holds ``memory`` (every one for an admin key, or with no keys)."""
    return key is None or key.sees_all or key.reaches(memory)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def load_keys(plain: list[str], file: Path | None) -> list[ApiKey]:
    """The configured keys; a malformed file raises ValueError naming the entry (and never its key)."""
    keys = [ApiKey(f"LARIMAR_API_KEYS[{i}]", _digest(k), "admin", ("*",)) for i, k in enumerate(plain)]
    if file is None:
        return keys
    entries = json.loads(file.read_text())
    if not isinstance(entries, list):
        raise ValueError(f"{file}: a JSON list of keys is expected")
    for i, e in enumerate(entries):
        where = f"{file}[{i}]"
        if not isinstance(e, dict) or set(e) - {"key", "key_sha256", "role", "memories", "name"}:
            raise ValueError(f"{where}: an object with key or key_sha256, role and memories is expected")
        if ("key" in e) == ("key_sha256" in e):
            raise ValueError(f"{where}: give exactly one of key and key_sha256")
        if e.get("role") not in ROLES:
            raise ValueError(f"{where}: role must be one of {', '.join(ROLES)}")
        memories = e.get("memories")
        if not isinstance(memories, list) or not memories or not all(isinstance(m, str) and m for m in memories):
            raise ValueError(f"{where}: memories must be a non-empty list of names or prefixes ending in *")
        if "key" in e:
            if not isinstance(e["key"], str) or len(e["key"]) < 8:
                raise ValueError(f"{where}: a key has at least 8 characters")
            digest = _digest(e["key"])
        else:
            try:
                digest = bytes.fromhex(e["key_sha256"])
            except (TypeError, ValueError):
                digest = b""
            if len(digest) != 32:
                raise ValueError(f"{where}: key_sha256 must be 64 hex digits")
        keys.append(ApiKey(str(e.get("name") or where), digest, e["role"], tuple(memories)))
    return keys


class Unauthenticated(PermissionError):
    """No key, or one that is not configured: 401."""


class Forbidden(PermissionError):
    """A configured key that may not do this: 403, with the reason."""


def check(keys: list[ApiKey], authorization: str | None, memory: str | None, need: Role) -> ApiKey | None:
    """The key an ``Authorization`` header names, once it may do ``need`` to ``memory`` (None: a call that
    names no memory); None when no keys are configured. REST, chat and MCP all check calls through this."""
    return permit(keys, from_header(authorization, keys) if keys else None, memory, need)


def permit(keys: list[ApiKey], key: ApiKey | None, memory: str | None, need: Role) -> ApiKey | None:
    """``check`` for a key already looked up (``from_header``)."""
    if not keys:
        return None
    if key is None:
        raise Unauthenticated("missing or wrong API key")
    if why := key.refusal(memory, need):
        raise Forbidden(why)
    return key


def from_header(authorization: str | None, keys: list[ApiKey]) -> ApiKey | None:
    """The key an ``Authorization: Bearer <key>`` header names, or None."""
    scheme, _, token = (authorization or "").partition(" ")
    return authenticate(token, keys) if scheme.lower() == "bearer" else None


def authenticate(token: str, keys: list[ApiKey]) -> ApiKey | None:
    """The key ``token`` is, compared in constant time with every configured key (no early exit)."""
    digest = _digest(token)
    found = None
    for k in keys:
        if hmac.compare_digest(digest, k.digest) and found is None:
            found = k
    return found
