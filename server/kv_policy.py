"""Which retrieved chunks' KV is kept after a miss, by their owner's KV policy, and each tenant's KV hits and misses.

A chunk retrieved for an answer either has KV of the workers' model in the store (a hit) or not
(a miss: never computed, evicted by the budget, or computed by another model). The worker computes
a miss within the answer; the owner's policy says whether the store keeps it:

- `eager`: KV is computed at ingestion; a miss (evicted or stale) is kept again;
- `lazy`: no KV at ingestion; every miss is kept;
- `admit_on_reuse`: kept once the chunk has been retrieved `kv_admit_after` times within the window;
- `none`: never kept.
"""

import enum
import threading
from dataclasses import dataclass, field


class MissCause(enum.Enum):
    NEVER_COMPUTED = "never_computed"
    EVICTED = "evicted"
    STALE = "stale"  # KV of another model fingerprint


def keeps(policy: str, retrievals: int, admit_after: int) -> bool:
    """Whether a miss is stored, for a chunk retrieved `retrievals` times within the window (this time included)."""
    if policy == "admit_on_reuse":
        return retrievals >= admit_after
    return policy in ("eager", "lazy")


@dataclass(slots=True)
class KVCounters:
    """One tenant's chunks retrieved for answers, since the server started."""

    hits: int = 0
    misses: dict[MissCause, int] = field(default_factory=lambda: {cause: 0 for cause in MissCause})
    recompute_s: float = 0.0  # workers' time computing misses
    kept: int = 0  # misses whose computed KV was handed to the store


class KVLedger:
    """KVCounters per tenant asking, thread-safe; read by the metrics and the benchmark."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tenants: dict[str, KVCounters] = {}

    def count(self, tenant: str, miss: MissCause | None) -> None:
        """One chunk retrieved for an answer: a hit (None) or a miss and its cause."""
        with self._lock:
            counters = self._counters(tenant)
            if miss is None:
                counters.hits += 1
            else:
                counters.misses[miss] += 1

    def recomputed(self, tenant: str, seconds: float, kept: bool) -> None:
        with self._lock:
            counters = self._counters(tenant)
            counters.recompute_s += seconds
            counters.kept += kept

    def snapshot(self) -> dict[str, KVCounters]:
        with self._lock:
            return {t: KVCounters(c.hits, dict(c.misses), c.recompute_s, c.kept) for t, c in self._tenants.items()}

    def forget(self, tenant: str) -> None:
        with self._lock:
            self._tenants.pop(tenant, None)

    def _counters(self, tenant: str) -> KVCounters:
        counters = self._tenants.get(tenant)
        if counters is None:
            counters = self._tenants[tenant] = KVCounters()
        return counters
