"""The token bucket against a hand-driven clock."""

import pytest

from server.ratelimit import RateLimiter
from store.errors import QuotaExceeded


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bursts_then_holds_to_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    for _ in range(3):
        limiter.acquire("acme", 3.0)
    with pytest.raises(QuotaExceeded, match="requests_per_second.*'acme'.*3 requests per second"):
        limiter.acquire("acme", 3.0)
    limiter.acquire("other", 3.0)  # buckets are per tenant
    clock.now += 0.34
    limiter.acquire("acme", 3.0)
    with pytest.raises(QuotaExceeded):
        limiter.acquire("acme", 3.0)


def test_zero_is_unlimited_and_slow_rates_allow_one() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    for _ in range(1000):
        limiter.acquire("acme", 0.0)
    limiter.acquire("slow", 0.5)
    with pytest.raises(QuotaExceeded):
        limiter.acquire("slow", 0.5)
    clock.now += 2.0
    limiter.acquire("slow", 0.5)
