"""The worker's KV cache: bounded by bytes, LRU out, and every change an event a router can follow."""

import torch

from worker.blend import ChunkKV
from worker.kv_cache import KEPT_EVENTS, ChunkKVCache, EventKind


def entry(tokens: int) -> ChunkKV:
    return ChunkKV(tokens=torch.zeros(tokens, dtype=torch.int64), kv=torch.zeros(tokens, dtype=torch.float32))


SIZE = entry(4).nbytes


def test_least_recently_used_goes_first_and_each_change_is_an_event() -> None:
    cache = ChunkKVCache(max_bytes=2 * SIZE)
    cache.put("a", entry(4))
    cache.put("b", entry(4))
    assert cache.get("a") is not None  # "b" is now the least recently used
    cache.put("c", entry(4))
    assert "b" not in cache and "a" in cache and "c" in cache
    view = cache.view(since=2)
    assert [(e.kind, e.key) for e in view.events] == [(EventKind.STORED, "c"), (EventKind.REMOVED, "b")]
    assert view.snapshot is None and view.sequence == 4


def test_a_follower_from_zero_ahead_or_too_far_behind_gets_a_snapshot() -> None:
    cache = ChunkKVCache(max_bytes=SIZE * 2)
    assert cache.view(0).snapshot == {}
    for i in range(KEPT_EVENTS + 10):
        cache.put(f"k{i}", entry(4))
    newest = cache.view(0)
    assert set(newest.snapshot) == {f"k{KEPT_EVENTS + 8}", f"k{KEPT_EVENTS + 9}"}
    assert cache.view(1).snapshot is not None  # its events were dropped
    assert cache.view(newest.sequence + 5).snapshot is not None  # a restarted worker numbers from 1 again
    assert cache.view(newest.sequence).events == [] and cache.view(newest.sequence).snapshot is None


def test_replaying_events_over_a_snapshot_gives_what_the_cache_holds() -> None:
    cache = ChunkKVCache(max_bytes=SIZE * 3)
    cache.put("a", entry(4))
    first = cache.view(0)
    held = set(first.snapshot)
    for key in "bcdeb":
        cache.put(key, entry(4))
    for event in cache.view(first.sequence).events:
        (held.add if event.kind is EventKind.STORED else held.discard)(event.key)
    assert held == set(cache.view(0).snapshot) == {"b", "d", "e"}


def test_an_entry_larger_than_the_bound_is_not_kept() -> None:
    cache = ChunkKVCache(max_bytes=SIZE - 1)
    cache.put("a", entry(4))
    assert len(cache) == 0 and cache.view(0).snapshot == {}
