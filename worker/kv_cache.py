"""Loaded chunk KV (dense, or packed when its codec quantises) kept in worker memory, bounded by bytes, least recently used out."""

import threading
from collections import OrderedDict
from typing import Hashable

from worker.blend import ChunkKV


class ChunkKVCache:
    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes: must be non-negative, got {max_bytes}")
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, ChunkKV] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> ChunkKV | None:
        with self._lock:
            chunk = self._items.get(key)
            if chunk is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return chunk

    def put(self, key: Hashable, chunk: ChunkKV) -> None:
        """Keep `chunk`, evicting the least recently used; one larger than the whole bound is not kept."""
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            if chunk.nbytes > self.max_bytes:
                return
            self._items[key] = chunk
            self._bytes += chunk.nbytes
            while self._bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= evicted.nbytes
