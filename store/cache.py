"""A read cache for values every call needs (verified API keys, tenant settings), kept correct under writes."""

import threading
from typing import Callable, Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class ReadCache(Generic[K, V]):
    """Values read from the store, remembered until a write that may change them forgets them all.

    Each forgetting starts a new generation: a read that began in an earlier one is not
    remembered, since the snapshot it read may still hold what the write changed.
    """

    def __init__(self) -> None:
        self._values: dict[K, V] = {}
        self._lock = threading.Lock()
        self._generation = 0

    def get(self, key: K, read: Callable[[], V]) -> V:
        """The remembered value, else `read()`'s, remembered unless a write forgot everything meanwhile."""
        value = self._values.get(key)
        if value is None:
            generation = self._generation
            value = read()
            with self._lock:
                if generation == self._generation:
                    self._values[key] = value
        return value

    def forget(self, key: K) -> None:
        with self._lock:
            self._values.pop(key, None)

    def forget_all(self) -> None:
        with self._lock:
            self._generation += 1
            self._values.clear()
