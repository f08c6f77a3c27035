"""How recently and how often each tenant's chunks read each KV blob: what `store.budget` ranks
blobs by when it evicts.

Kept in memory only: a dict update per KV read, where an LMDB write per read would cost more than
the read itself (bench/kv_eviction.py measures both). After a restart every blob starts cold and
ties go in blob key order. The figures are hints: a write that aborts may leave them slightly
off, which changes which blob goes first, never what a budget allows.
"""

import itertools
from dataclasses import dataclass
from typing import Literal

Eviction = Literal["lru", "lfu"]
EVICTIONS = ("lru", "lfu")


@dataclass(slots=True)
class Access:
    last: int  # the clock at the last read
    count: int  # reads since the store opened or the tenant first referred to the blob


class AccessStats:
    def __init__(self) -> None:
        self._clock = itertools.count(1)
        self._seen: dict[tuple[str, bytes], Access] = {}

    def touch(self, tenant: str, key: bytes) -> None:
        """Count a read of blob `key` through a chunk of `tenant` (or its first reference)."""
        seen = self._seen.get((tenant, key))
        if seen is None:
            self._seen[(tenant, key)] = Access(next(self._clock), 1)
        else:
            seen.last, seen.count = next(self._clock), seen.count + 1

    def coldness(self, tenant: str, key: bytes, eviction: Eviction) -> tuple[int, int]:
        """A sort key, the coldest lowest. LRU: the last read; LFU: the read count, then the last read."""
        seen = self._seen.get((tenant, key))
        if seen is None:
            return (0, 0)
        return (seen.last, 0) if eviction == "lru" else (seen.count, seen.last)

    def forget(self, tenant: str, key: bytes) -> None:
        self._seen.pop((tenant, key), None)
