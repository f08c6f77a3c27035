"""Append-only segment files for KV blobs: framed, checksummed, fsynced before anything points at them.

A frame is `magic (4 bytes) | payload length (u32) | crc32 of payload (u32) | payload`. LMDB keeps
(segment, offset of the payload, length, crc32). A blob whose last reference goes away stays in
its segment until a compaction (`store.compaction`) copies the segment's live blobs into the
newest segment and removes the file.
"""

import os
import struct
import threading
import zlib
from collections import Counter
from pathlib import Path
from typing import Iterable

from store.env import fsync_path
from store.errors import Corrupted
from store.records import KVRef

MAGIC = b"TKVB"
FRAME = struct.Struct("<4sII")


class SegmentLog:
    def __init__(self, directory: Path, max_segment_bytes: int, sync: bool = True) -> None:
        self._dir = directory
        self._dir.mkdir(parents=True, exist_ok=True)
        self._max = max_segment_bytes
        self._sync = sync
        self._lock = threading.Lock()
        self._readers: dict[int, int] = {}
        numbers = sorted(int(p.stem) for p in self._dir.glob("*.seg"))
        self._current = numbers[-1] if numbers else 1
        self._size = self._repair_tail(self._path(self._current))

    def _path(self, number: int) -> Path:
        return self._dir / f"{number:08d}.seg"

    def _repair_tail(self, path: Path) -> int:
        """Walk the frames of the newest segment and cut a torn last frame; returns the valid size."""
        if not path.exists():
            path.touch()
            return 0
        size = path.stat().st_size
        valid = 0
        with path.open("rb") as f:
            while valid + FRAME.size <= size:
                f.seek(valid)
                magic, length, crc = FRAME.unpack(f.read(FRAME.size))
                end = valid + FRAME.size + length
                if magic != MAGIC or end > size:
                    break
                if end == size and zlib.crc32(f.read(length)) != crc:
                    break  # a torn final write: its checksum cannot match
                valid = end
        if valid != size:
            with path.open("r+b") as f:
                f.truncate(valid)
                os.fsync(f.fileno())
        return valid

    def append(self, payloads: list[bytes]) -> list[KVRef]:
        """Append blobs and make them durable (one fsync) before returning where they are."""
        if not payloads:
            return []
        with self._lock:
            if self._size > 0 and self._size + sum(FRAME.size + len(p) for p in payloads) > self._max:
                self._current += 1
                self._size = 0
            refs = []
            with self._path(self._current).open("ab") as f:
                for payload in payloads:
                    crc = zlib.crc32(payload)
                    f.write(FRAME.pack(MAGIC, len(payload), crc))
                    f.write(payload)
                    refs.append(KVRef(self._current, self._size + FRAME.size, len(payload), crc))
                    self._size += FRAME.size + len(payload)
                f.flush()
                if self._sync:
                    os.fsync(f.fileno())
            return refs

    def read(self, ref: KVRef, check: bool = True) -> bytes:
        """The blob at `ref`; Corrupted if its bytes are missing or (when `check`) fail the checksum."""
        fd = self._reader(ref.segment)
        data = os.pread(fd, ref.length, ref.offset)
        if len(data) != ref.length or (check and zlib.crc32(data) != ref.crc32):
            raise Corrupted(f"KV blob in segment {ref.segment} at offset {ref.offset} fails its checksum")
        return data

    @property
    def current(self) -> int:
        """The segment appends go to."""
        return self._current

    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self._dir.glob("*.seg"))

    def stale(self, live: Iterable[KVRef], through: int) -> list[int]:
        """The segments up to number `through` holding bytes that none of the `live` blobs
        occupies: dropped blobs, or copies a stopped or crashed compaction wrote before any record
        pointed to them. Later segments are left out: appends may be filling them."""
        used: Counter[int] = Counter()
        for ref in live:
            used[ref.segment] += FRAME.size + ref.length
        numbers = (int(p.stem) for p in self._dir.glob("*.seg"))
        return sorted(n for n in numbers if n <= through and used[n] < self._path(n).stat().st_size)

    def seal(self) -> int:
        """Send the next append to a new segment unless the current one is empty; returns the
        newest segment no append will go to, so its bytes can be judged and it can be removed."""
        with self._lock:
            if self._size > 0:
                self._current += 1
                self._size = 0
            return self._current - 1

    def remove(self, numbers: list[int]) -> None:
        """Delete segments no record points into any more, once no read located a blob in them
        before (`Env.exclusive`): their open descriptors are closed here."""
        with self._lock:
            closing = [self._readers.pop(number, None) for number in numbers]
        for fd in closing:
            if fd is not None:
                os.close(fd)
        for number in numbers:  # outside the lock: appends go on meanwhile (never into these)
            self._path(number).unlink(missing_ok=True)
        if self._sync:
            fsync_path(self._dir)

    def _reader(self, segment: int) -> int:
        fd = self._readers.get(segment)
        if fd is None:
            with self._lock:
                fd = self._readers.get(segment)
                if fd is None:
                    try:
                        fd = self._readers[segment] = os.open(self._path(segment), os.O_RDONLY)
                    except FileNotFoundError as exc:
                        raise Corrupted(f"KV segment {segment} is missing") from exc
        return fd

    def close(self) -> None:
        with self._lock:
            for fd in self._readers.values():
                os.close(fd)
            self._readers.clear()
