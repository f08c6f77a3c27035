"""Store configuration."""

from dataclasses import dataclass
from pathlib import Path

from store.access import Eviction


@dataclass(frozen=True, slots=True)
class StoreConfig:
    path: Path
    dim: int = 384  # fixed at creation; reopening with another dim is FailedPrecondition
    map_size: int = 1 << 30  # initial LMDB map size, doubled on MapFullError
    max_segment_bytes: int = 256 << 20
    sync: bool = True
    kv_eviction: Eviction = "lfu"  # which of a tenant's KV blobs go first beyond its budget (bench/kv_eviction.py)
