"""Compaction: what makes a deletion final on disk.

A deleted record's bytes outlive its deletion twice over: LMDB reuses freed pages without
clearing them, and a dropped KV blob stays in its segment file. A compaction rewrites both with
live data only, so no deleted text, vector, token id or KV blob can be read back from the files.
Writes wait while it runs; reads go on, and wait only while a file is swapped or removed.
"""

import time
from dataclasses import dataclass

from store.env import Env
from store.kvblobs import KVBlobs


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


def compact(env: Env, blobs: KVBlobs) -> Compaction:
    """Segments first (moving live blobs rewrites their records), then the LMDB file, so the
    copy holds neither the dropped records nor the old versions of the moved ones."""
    started = time.perf_counter()
    with env.write_lock:
        lmdb_before, segments_before = env.file_bytes(), blobs.segment_bytes()
        blobs.compact_locked()
        env.compact_locked()
        lmdb_after, segments_after = env.file_bytes(), blobs.segment_bytes()
    return Compaction(lmdb_before, lmdb_after, segments_before, segments_after, time.perf_counter() - started)
