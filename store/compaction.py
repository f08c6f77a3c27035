"""Compaction: what makes a deletion final on disk.

A deleted record's bytes outlive its deletion twice over: LMDB reuses freed pages without
clearing them, and a dropped KV blob stays in its segment file. A compaction rewrites both with
live data only, so no deleted text, vector, token id or KV blob can be read back from the files.

It goes in steps, each of them crash-safe, so that writes go on during most of it and a server
that is stopping can cut it short (`stop`) between two steps:

1. seal the segment appends go to (writes wait for that moment only);
2. copy the live blobs of the sealed segments that hold dead bytes to the newest segment, a
   batch at a time, while writes go on; each batch's records are then re-pointed at the copies
   in one short write transaction, skipping any record a write changed meanwhile;
3. once no read can still be in the old segments, remove them;
4. replace the LMDB file by its compacting copy (`Env.compact`): writes go on while it is
   copied and wait while the copy catches up on the keys they wrote meanwhile and is swapped in.

What a write deletes while a compaction runs may stay in the files until the next compaction.

A crash or a stop between steps leaves every record pointing at bytes that are there: copies no
record points to yet, or old segments not yet removed, are dead bytes the next compaction finds.
"""

import time
from dataclasses import dataclass
from typing import Callable, Iterator

import lmdb

from store.env import Env
from store.errors import Unavailable
from store.kvblobs import KVBlobs
from store.records import KVRef
from store.segments import SegmentLog

# Blob bytes copied and re-pointed in one step. Writers' appends wait for a step's append and
# fsync and their transactions for its re-pointing: at 64 MB a write waited up to 1.5 s, at 8 MB ~0.3 s.
COPY_BATCH_BYTES = 8 << 20


def never() -> bool:
    """The `stop` of a compaction nothing cuts short."""
    return False


@dataclass(frozen=True, slots=True)
class Compaction:
    lmdb_bytes_before: int
    lmdb_bytes_after: int
    segment_bytes_before: int
    segment_bytes_after: int
    seconds: float

    @property
    def bytes_before(self) -> int:
        return self.lmdb_bytes_before + self.segment_bytes_before

    @property
    def bytes_after(self) -> int:
        return self.lmdb_bytes_after + self.segment_bytes_after


def compact(env: Env, blobs: KVBlobs, segments: SegmentLog, stop: Callable[[], bool] = never) -> Compaction:
    """Segments first (moving live blobs rewrites their records), then the LMDB file, so the
    copy holds neither the dropped records nor the old versions of the moved ones.

    Unavailable if `stop()` turns true before the last step: the store is then as a crash
    between two steps would leave it, and the next compaction finishes the work.
    """
    started = time.perf_counter()
    lmdb_before, segments_before = env.file_bytes(), segments.total_bytes()
    _compact_segments(env, blobs, segments, stop)
    _go_on(stop)
    env.compact()
    return Compaction(lmdb_before, env.file_bytes(), segments_before, segments.total_bytes(), time.perf_counter() - started)


def _compact_segments(env: Env, blobs: KVBlobs, segments: SegmentLog, stop: Callable[[], bool]) -> None:
    """Steps 1-3: the sealed segments that hold dead bytes rewritten as copies of their live blobs.

    A blob is copied as it lies, with its record's checksum, so one that was corrupt still reads
    as corrupt.
    """
    with env.write_lock:  # every append made so far has its record committed, or never will
        sealed = segments.seal()
    live = env.read(lambda txn: dict(blobs.live(txn)))  # no new record can point into a sealed segment
    stale = segments.stale(live.values(), through=sealed)
    if not stale:
        return
    moving = [(key, ref) for key, ref in live.items() if ref.segment in stale]
    for batch in _batches(moving, COPY_BATCH_BYTES):
        _go_on(stop)
        copies = segments.append([segments.read(ref, check=False) for _, ref in batch])
        env.write(lambda txn: _move(txn, blobs, batch, copies))
    with env.exclusive():
        pass  # a barrier: the reads that located a blob before its move have ended
    segments.remove(stale)


def _move(txn: lmdb.Transaction, blobs: KVBlobs, batch: list[tuple[bytes, KVRef]], copies: list[KVRef]) -> None:
    for (key, ref), copy in zip(batch, copies):
        blobs.move(txn, key, ref, copy)


def _go_on(stop: Callable[[], bool]) -> None:
    if stop():
        raise Unavailable("the server is stopping: compaction cut short between two steps; run it again")


def _batches(moving: list[tuple[bytes, KVRef]], max_bytes: int) -> Iterator[list[tuple[bytes, KVRef]]]:
    """`moving` cut into runs of about `max_bytes` of blobs (at least one blob each)."""
    batch: list[tuple[bytes, KVRef]] = []
    size = 0
    for item in moving:
        if batch and size + item[1].length > max_bytes:
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += item[1].length
    if batch:
        yield batch
