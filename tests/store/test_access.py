"""Read figures for eviction: an evicted blob's are kept (bounded) and resume when it is stored again."""

from store.access import AccessStats


def test_an_evicted_blobs_count_resumes_and_a_forgotten_ones_does_not() -> None:
    access = AccessStats(max_evicted=2)
    for _ in range(3):
        access.touch("t", b"hot")
    access.touch("t", b"gone")
    access.evicted("t", b"hot")
    access.evicted("t", b"gone")
    assert access.coldness("t", b"hot", "lfu") == (0, 0)  # not stored: no figure while evicted
    access.touch("t", b"hot")
    assert access.coldness("t", b"hot", "lfu")[0] == 4
    access.forget("t", b"gone")
    access.touch("t", b"gone")
    assert access.coldness("t", b"gone", "lfu")[0] == 1
    assert access.coldness("u", b"hot", "lfu") == (0, 0)  # per tenant


def test_at_most_max_evicted_figures_are_kept_the_oldest_dropped_first() -> None:
    access = AccessStats(max_evicted=2)
    for key in (b"a", b"b", b"c"):
        access.touch("t", key)
        access.touch("t", key)
        access.evicted("t", key)
    for key in (b"a", b"b", b"c"):
        access.touch("t", key)
    assert [access.coldness("t", key, "lfu")[0] for key in (b"a", b"b", b"c")] == [1, 3, 3]
