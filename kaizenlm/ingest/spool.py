"""An fsync'd, size-capped, append-only disk spool for events the broker could not take.

Records live in numbered segment files; each record is
`[u32 length][u32 crc32][topic \\0 key \\0 value]`. Appends are fsync'd before they return,
so an event the gateway acknowledged as spooled survives a crash. Replay reads whole
segments oldest first and deletes a segment only after the caller has delivered it, so a
crash during replay re-sends (the sink is idempotent on event_id) but never drops.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from pathlib import Path

_HEADER = struct.Struct("<II")
SEGMENT_BYTES = 8 * 1024 * 1024

Record = tuple[str, bytes, bytes]  # (topic, key, value)


class SpoolFull(Exception):
    """The spool reached its size cap; callers answer 503 with Retry-After."""


class Spool:
    def __init__(self, directory: Path, max_bytes: int):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.lock = threading.Lock()
        self._active: Path | None = None
        self._size = sum(p.stat().st_size for p in self._segments())

    def _segments(self) -> list[Path]:
        return sorted(self.dir.glob("segment-*.log"))

    def _new_segment(self) -> Path:
        existing = self._segments()
        n = int(existing[-1].stem.split("-")[1]) + 1 if existing else 0
        return self.dir / f"segment-{n:012d}.log"

    @property
    def size_bytes(self) -> int:
        return self._size

    def is_empty(self) -> bool:
        return self._size == 0

    def append(self, records: list[Record]) -> None:
        """Append records durably (one fsync for the whole list) or raise SpoolFull."""
        blob = b"".join(_encode(r) for r in records)
        with self.lock:
            if self._size + len(blob) > self.max_bytes:
                raise SpoolFull(f"spool at {self._size} of {self.max_bytes} bytes")
            if self._active is None or self._active.stat().st_size >= SEGMENT_BYTES:
                self._active = self._new_segment()
            fd = os.open(self._active, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, blob)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._size += len(blob)

    def seal(self) -> list[Path]:
        """Close the active segment so new appends start a new one; return sealed segments in order."""
        with self.lock:
            self._active = None
            return self._segments()

    def read_segment(self, path: Path) -> list[Record]:
        data = path.read_bytes()
        records, pos = [], 0
        while pos + _HEADER.size <= len(data):
            length, crc = _HEADER.unpack_from(data, pos)
            body = data[pos + _HEADER.size: pos + _HEADER.size + length]
            if len(body) < length or zlib.crc32(body) != crc:
                break  # a torn tail from a crash mid-append: that append was never acknowledged
            topic, key, value = body.split(b"\0", 2)
            records.append((topic.decode(), key, value))
            pos += _HEADER.size + length
        return records

    def remove_segment(self, path: Path) -> None:
        with self.lock:
            size = path.stat().st_size
            path.unlink()
            self._size -= size


def _encode(record: Record) -> bytes:
    topic, key, value = record
    body = topic.encode() + b"\0" + key.replace(b"\0", b"") + b"\0" + value
    return _HEADER.pack(len(body), zlib.crc32(body)) + body
