"""Loaded chunk KV (dense, or packed when its codec quantises) kept in worker memory, bounded by bytes, least recently used out.

Every entry stored or removed is also an event with a sequence number (as vLLM's KV events
`BlockStored`/`BlockRemoved`), so a router can follow what the cache holds
from the events since the last sequence it saw, or from a snapshot when those are gone.

A blob on its way in is a `Load` (single flight): the first request to want a key fetches it,
and requests wanting that key meanwhile wait for that fetch instead of fetching it again. A load
is listed from its start until the key is put (its KV decoded and kept, or not kept if too
large) or the request that began it ends; one that brought no blob is unlisted at once, so the
next request for the key fetches it anew. Loads are not entries: they hold no bytes against the
bound.
"""

import enum
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Hashable, Iterable

from worker.blend import ChunkKV

KEPT_EVENTS = 4096  # events a follower may be behind before it needs a snapshot


class EventKind(enum.Enum):
    STORED = 1
    REMOVED = 2


@dataclass(frozen=True, slots=True)
class CacheEvent:
    sequence: int
    kind: EventKind
    key: str
    nbytes: int


@dataclass(frozen=True, slots=True)
class CacheView:
    """What the cache holds as of `sequence`: every entry (a snapshot) or the events after a given sequence."""

    sequence: int
    snapshot: dict[str, int] | None  # key -> bytes, when the caller asked from 0 or is too far behind
    events: list[CacheEvent]


class Load:
    """A blob one request is fetching for the cache; others wanting the same key wait on it."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._blob: bytes | None = None
        self.error: BaseException | None = None  # why the fetch failed, once it has

    def wait(self) -> bytes | None:
        """The blob once fetched; None if the store had none or the fetch failed (`error` says why)."""
        self._done.wait()
        return self._blob

    def _settle(self, blob: bytes | None, error: BaseException | None) -> None:
        self._blob, self.error = blob, error
        self._done.set()


@dataclass(slots=True)
class Loads:
    """What `ChunkKVCache.begin_loads` found for each key asked."""

    held: set[Hashable] = field(default_factory=set)  # in the cache now
    joined: dict[Hashable, Load] = field(default_factory=dict)  # another request's load: wait for it
    begun: dict[Hashable, Load] = field(default_factory=dict)  # new: the caller fetches, then `finish_load`s each


class ChunkKVCache:
    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes: must be non-negative, got {max_bytes}")
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, ChunkKV] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._sequence = 0
        self._events: deque[CacheEvent] = deque(maxlen=KEPT_EVENTS)
        self._loads: dict[Hashable, Load] = {}  # keys being fetched, or fetched and not yet put

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        """Held now (unlike `get`, without making it the most recently used)."""
        with self._lock:
            return key in self._items

    def get(self, key: Hashable) -> ChunkKV | None:
        with self._lock:
            chunk = self._items.get(key)
            if chunk is not None:
                self._items.move_to_end(key)
            return chunk

    def put(self, key: Hashable, chunk: ChunkKV) -> None:
        """Keep `chunk`, evicting the least recently used; one larger than the whole bound is not kept."""
        with self._lock:
            self._loads.pop(key, None)  # its waiters have their blob (or will); later requests find the entry
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
                self._record(EventKind.REMOVED, key, old.nbytes)
            if chunk.nbytes > self.max_bytes:
                return
            self._items[key] = chunk
            self._bytes += chunk.nbytes
            self._record(EventKind.STORED, key, chunk.nbytes)
            while self._bytes > self.max_bytes:
                evicted_key, evicted = self._items.popitem(last=False)
                self._bytes -= evicted.nbytes
                self._record(EventKind.REMOVED, evicted_key, evicted.nbytes)

    def begin_loads(self, keys: Iterable[Hashable]) -> Loads:
        """Each key is held, joins the load in flight for it, or begins one (all in one step under the
        cache's lock, so two requests never both begin the same key)."""
        loads = Loads()
        with self._lock:
            for key in keys:
                if key in self._items:
                    loads.held.add(key)
                elif key in self._loads:
                    loads.joined[key] = self._loads[key]
                else:
                    loads.begun[key] = self._loads[key] = Load()
        return loads

    def finish_load(self, key: Hashable, load: Load, blob: bytes | None, error: BaseException | None = None) -> None:
        """Wakes the load's waiters with its blob; one that brought none (not stored, or `error`) is unlisted first."""
        if blob is None:
            self.end_loads({key: load})
        load._settle(blob, error)

    def end_loads(self, begun: dict[Hashable, Load]) -> None:
        """Unlists the loads a request began that are still listed (it ended before putting them)."""
        with self._lock:
            for key, load in begun.items():
                if self._loads.get(key) is load:
                    del self._loads[key]

    def view(self, since: int) -> CacheView:
        """The events after sequence `since`, or a snapshot if `since` is 0, ahead of us, or older than the events kept."""
        with self._lock:
            oldest = self._events[0].sequence if self._events else self._sequence + 1
            if since == 0 or since > self._sequence or since < oldest - 1:
                snapshot = {str(key): chunk.nbytes for key, chunk in self._items.items()}
                return CacheView(self._sequence, snapshot, [])
            return CacheView(self._sequence, None, [e for e in self._events if e.sequence > since])

    def _record(self, kind: EventKind, key: Hashable, nbytes: int) -> None:
        self._sequence += 1
        self._events.append(CacheEvent(self._sequence, kind, str(key), nbytes))
