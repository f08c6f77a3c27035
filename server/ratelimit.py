"""Per-tenant request rate limits: a token bucket per tenant, refilled continuously.

A tenant limited to r requests per second may burst up to max(1, r) requests, then is held to r.
The bucket's rate follows the tenant's current setting, so an update applies to the next call.
"""

import threading
import time
from dataclasses import dataclass

from store.errors import QuotaExceeded


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def acquire(self, tenant: str, rate: float) -> None:
        """Take one request from the tenant's bucket, or raise QuotaExceeded; rate 0 means unlimited."""
        if rate <= 0:
            return
        burst = max(1.0, rate)
        now = self._clock()
        with self._lock:
            bucket = self._buckets.setdefault(tenant, _Bucket(tokens=burst, updated=now))
            bucket.tokens = min(burst, bucket.tokens + (now - bucket.updated) * rate)
            bucket.updated = now
            if bucket.tokens < 1.0:
                raise QuotaExceeded(f"requests_per_second: tenant {tenant!r} is limited to {rate:g} requests per second")
            bucket.tokens -= 1.0

    def forget(self, tenant: str) -> None:
        with self._lock:
            self._buckets.pop(tenant, None)
