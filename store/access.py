"""How recently and how often each tenant's chunks read each KV blob: what `store.budget` ranks
blobs by when it evicts.

Kept in memory only: a dict update per KV read, where an LMDB write per read would cost more than
the read itself (bench/kv_eviction.py measures both). After a restart every blob starts cold and
ties go in blob key order. The figures are hints: a write that aborts may leave them slightly
off, which changes which blob goes first, never what a budget allows.

An evicted blob's figures are kept for a while (at most MAX_EVICTED of them, the oldest dropped
first), so a chunk whose KV is computed and stored again resumes its count: under LFU a chunk
that keeps coming back displaces colder ones instead of starting at one read each time, and a
new blob colder than every resident is the one that goes (as TinyLFU admits by frequency).
"""

import itertools
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

Eviction = Literal["lru", "lfu"]
EVICTIONS = ("lru", "lfu")
MAX_EVICTED = 65_536  # evicted blobs whose figures are kept, over all tenants (~150 bytes each)


@dataclass(slots=True)
class Access:
    last: int  # the clock at the last read
    count: int  # reads since the store opened or the tenant first referred to the blob


class AccessStats:
    def __init__(self, max_evicted: int = MAX_EVICTED) -> None:
        self._clock = itertools.count(1)
        self._seen: dict[tuple[str, bytes], Access] = {}
        self._evicted: OrderedDict[tuple[str, bytes], Access] = OrderedDict()
        self._max_evicted = max_evicted

    def touch(self, tenant: str, key: bytes) -> None:
        """Count a read of blob `key` through a chunk of `tenant` (or a reference to it, which
        resumes an evicted blob's count)."""
        seen = self._seen.get((tenant, key))
        if seen is None:
            seen = self._seen[(tenant, key)] = self._evicted.pop((tenant, key), None) or Access(0, 0)
        seen.last, seen.count = next(self._clock), seen.count + 1

    def coldness(self, tenant: str, key: bytes, eviction: Eviction) -> tuple[int, int]:
        """A sort key, the coldest lowest. LRU: the last read; LFU: the read count, then the last read."""
        seen = self._seen.get((tenant, key))
        if seen is None:
            return (0, 0)
        return (seen.last, 0) if eviction == "lru" else (seen.count, seen.last)

    def evicted(self, tenant: str, key: bytes) -> None:
        """The tenant's last reference to the blob went to its budget: keep its figures a while."""
        seen = self._seen.pop((tenant, key), None)
        if seen is not None:
            self._evicted[(tenant, key)] = seen
            while len(self._evicted) > self._max_evicted:
                self._evicted.popitem(last=False)

    def forget(self, tenant: str, key: bytes) -> None:
        """The tenant's last reference to the blob went otherwise (deleted, replaced): drop its figures."""
        self._seen.pop((tenant, key), None)
        self._evicted.pop((tenant, key), None)
