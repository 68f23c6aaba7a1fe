"""Local-directory backend: DIR/<memory>/snapshot.safetensors and DIR/<memory>/log.bin.

The log is a sequence of records ``[u64 length][u32 crc32][entry]``, fsynced
on every append. A record cut short by a crash was never acknowledged, so
loading drops it (and truncates the file to the last whole record).
"""

from __future__ import annotations

import os
import shutil
import struct
import threading
import zlib
from pathlib import Path

from service.store.base import StoreError
from service.store.codec import Stored

_HEAD = struct.Struct("<QI")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # the directory layout changes under one lock

    def _dir(self, name: str) -> Path:
        return self.root / name

    def ping(self) -> bool:
        return self.root.is_dir() and os.access(self.root, os.W_OK)

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def load(self, name: str) -> Stored:
        d = self._dir(name)
        snap_path = d / "snapshot.safetensors"
        snapshot = snap_path.read_bytes() if snap_path.exists() else None
        return Stored(snapshot=snapshot, log=self._read_log(d / "log.bin"))

    def _read_log(self, path: Path) -> list[bytes]:
        if not path.exists():
            return []
        data = path.read_bytes()
        entries, pos = [], 0
        while pos + _HEAD.size <= len(data):
            n, crc = _HEAD.unpack_from(data, pos)
            body = data[pos + _HEAD.size : pos + _HEAD.size + n]
            if len(body) < n or zlib.crc32(body) != crc:
                break
            entries.append(body)
            pos += _HEAD.size + n
        if pos < len(data):  # torn tail from a crash mid-append: never acknowledged
            with open(path, "r+b") as f:
                f.truncate(pos)
                os.fsync(f.fileno())
        return entries

    def append(self, name: str, entry: bytes) -> None:
        d = self._dir(name)
        try:
            with self._lock:
                fresh = not d.exists()
                d.mkdir(parents=True, exist_ok=True)
                with open(d / "log.bin", "ab") as f:
                    f.write(_HEAD.pack(len(entry), zlib.crc32(entry)) + entry)
                    f.flush()
                    os.fsync(f.fileno())
                if fresh:
                    _fsync_dir(self.root)
        except OSError as e:
            raise StoreError(f"file store: {e}") from e

    def replace(self, name: str, snapshot: bytes) -> None:
        d = self._dir(name)
        try:
            with self._lock:
                d.mkdir(parents=True, exist_ok=True)
                tmp = d / "snapshot.safetensors.tmp"
                with open(tmp, "wb") as f:
                    f.write(snapshot)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, d / "snapshot.safetensors")
                # The snapshot now covers the log: drop it. A crash before this line leaves entries the
                # snapshot's sequence number already includes; loading skips and the next compaction drops them.
                with open(d / "log.bin", "wb") as f:
                    os.fsync(f.fileno())
                _fsync_dir(d)
        except OSError as e:
            raise StoreError(f"file store: {e}") from e

    def delete(self, name: str) -> None:
        try:
            with self._lock:
                shutil.rmtree(self._dir(name), ignore_errors=False)
                _fsync_dir(self.root)
        except FileNotFoundError:
            return
        except OSError as e:
            raise StoreError(f"file store: {e}") from e

    def close(self) -> None:
        pass
