"""The read cache alone: what it remembers and what a concurrent write makes it forget."""

from store.cache import ReadCache


def test_a_read_overtaken_by_a_write_is_not_remembered() -> None:
    """The race the read caches guard against: a read sees the old snapshot, a write commits and
    forgets, then the read finishes; remembering its result would revive what the write changed."""
    cache: ReadCache[str, str] = ReadCache()

    def read_overtaken() -> str:
        cache.forget_all()  # a revocation or a settings change committed while the read ran
        return "stale"

    assert cache.get("k", read_overtaken) == "stale"
    assert cache.get("k", lambda: "fresh") == "fresh"  # the stale value was not kept
    assert cache.get("k", lambda: "newer") == "fresh"  # the fresh one was
