"""How often each chunk was retrieved for answers lately, per tenant, in a few KB: count-min sketches.

`admit_on_reuse` stores a chunk's KV once the chunk has been retrieved N times within a window.
Exact counts would cost a dictionary entry per chunk ever retrieved; a count-min sketch (Cormode
and Muthukrishnan) costs `depth x width` counters per tenant and never under-counts, so a chunk is
at worst admitted early, when it collides with hotter ones. The window is two generations of half
its length: a retrieval counts for between half a window and a whole window, then is forgotten.
"""

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

PRIME = (1 << 61) - 1  # a Mersenne prime above any chunk id: (a*x + b) mod p is pairwise independent


@dataclass(frozen=True, slots=True)
class SketchShape:
    width: int = 2048  # counters a row: with depth 4, over-counts stay small for ~1,000 hot chunks a window
    depth: int = 4
    window_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.width < 1 or self.depth < 1:
            raise ValueError(f"width, depth: must be positive, got {self.width}, {self.depth}")
        if not self.window_s > 0:
            raise ValueError(f"window_s: must be positive, got {self.window_s}")


@dataclass(slots=True)
class _Sketch:
    """One tenant's counters: this half-window's and the previous one's, [depth, width] each."""

    current: np.ndarray
    previous: np.ndarray
    started: float  # when `current` began


@dataclass
class AdmissionCounter:
    """Per-tenant retrieval counts of chunk ids within a sliding window; thread-safe."""

    shape: SketchShape = SketchShape()
    clock: Callable[[], float] = time.monotonic
    _sketches: dict[str, _Sketch] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(0x5EED)
        self._a = [int(a) for a in rng.integers(1, 1 << 60, self.shape.depth)]
        self._b = [int(b) for b in rng.integers(0, 1 << 60, self.shape.depth)]

    def record(self, tenant: str, chunk_ids: Iterable[int]) -> list[int]:
        """Count one retrieval of each chunk; returns each one's count within the window, this one included."""
        ids = list(chunk_ids)
        with self._lock:
            sketch = self._sketch(tenant)
            counts = []
            for chunk_id in ids:
                columns = self._columns(chunk_id)
                rows = range(self.shape.depth)
                sketch.current[rows, columns] += 1
                counts.append(int(np.min(sketch.current[rows, columns] + sketch.previous[rows, columns])))
            return counts

    def forget(self, tenant: str) -> None:
        with self._lock:
            self._sketches.pop(tenant, None)

    def _columns(self, chunk_id: int) -> list[int]:
        return [((a * chunk_id + b) % PRIME) % self.shape.width for a, b in zip(self._a, self._b)]

    def _sketch(self, tenant: str) -> _Sketch:
        """The tenant's sketch with its generations moved on to now; the caller holds the lock."""
        now = self.clock()
        half = self.shape.window_s / 2
        sketch = self._sketches.get(tenant)
        if sketch is None:
            empty = np.zeros((self.shape.depth, self.shape.width), dtype=np.uint32)
            sketch = self._sketches[tenant] = _Sketch(empty, empty.copy(), now)
        elapsed = now - sketch.started
        if elapsed >= 2 * half:  # both generations are older than the window
            sketch.previous[:] = 0
            sketch.current[:] = 0
            sketch.started = now
        elif elapsed >= half:
            sketch.previous, sketch.current = sketch.current, sketch.previous
            sketch.current[:] = 0
            sketch.started += half
        return sketch
