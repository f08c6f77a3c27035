"""The worker's KV cache: bounded by bytes, LRU out, every change an event a router can follow, each key loaded once."""

import threading

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


def test_a_key_is_fetched_by_one_request_and_joined_by_the_others_until_it_is_put() -> None:
    cache = ChunkKVCache(max_bytes=SIZE)
    first = cache.begin_loads(["a"])
    second = cache.begin_loads(["a", "b"])
    assert set(first.begun) == {"a"} and second.joined == {"a": first.begun["a"]} and set(second.begun) == {"b"}
    cache.finish_load("a", first.begun["a"], b"blob-a")
    assert second.joined["a"].wait() == b"blob-a"
    assert cache.begin_loads(["a"]).joined["a"].wait() == b"blob-a"  # fetched, not yet decoded: still joined
    cache.put("a", entry(4))
    assert cache.begin_loads(["a"]).held == {"a"}
    cache.put("b", entry(4))  # evicts "a", and the bound holds with loads listed
    assert cache.nbytes <= cache.max_bytes and set(cache.begin_loads(["a"]).begun) == {"a"}


def test_a_failed_load_wakes_every_waiter_with_its_error_and_the_next_request_fetches_anew() -> None:
    cache = ChunkKVCache(max_bytes=SIZE)
    load = cache.begin_loads(["a"]).begun["a"]
    waiters = [cache.begin_loads(["a"]).joined["a"] for _ in range(3)]
    got: list[bytes | None] = []
    threads = [threading.Thread(target=lambda w=w: got.append(w.wait())) for w in waiters]
    for thread in threads:
        thread.start()
    error = ConnectionError("store down")
    cache.finish_load("a", load, None, error)
    for thread in threads:
        thread.join(timeout=10)
    assert not any(t.is_alive() for t in threads) and got == [None] * 3
    assert all(w.error is error for w in waiters)
    again = cache.begin_loads(["a"])
    assert set(again.begun) == {"a"} and again.begun["a"] is not load


def test_a_request_that_ends_before_putting_its_load_unlists_it_but_not_a_later_one() -> None:
    cache = ChunkKVCache(max_bytes=SIZE)
    ended = cache.begin_loads(["a"]).begun
    cache.finish_load("a", ended["a"], b"blob-a")
    cache.end_loads(ended)
    later = cache.begin_loads(["a"]).begun
    assert set(later) == {"a"}
    cache.end_loads(ended)  # the first request's end again: the later load stays listed
    assert cache.begin_loads(["a"]).joined == later
