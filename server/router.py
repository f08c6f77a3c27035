"""The router: sends answers, embeddings and chunk-KV precompute to workers, by chunk locality and load.

Under `locality`, a question goes to the worker holding the largest share of its chunks' KV
(weighted by their token counts, which KV bytes are proportional to), so a repeat lands where its
KV already is and a chunk is seldom cached twice. A cold question (no worker holds any of its
chunks) misses wherever it goes, so it goes where it balances load: the least loaded worker; among
equally loaded ones, the home of most of its chunks' tokens, the worker each KV key hashes highest
with (rendezvous hashing: every router agrees on it, across restarts, and a worker going down
re-homes only its own chunks). Load is bounded by an absolute and a relative threshold, as
SGLang's cache-aware router bounds it: the holder takes the request only if its load then stays
within `MAX_LOAD_GAP` requests of the least loaded worker's, or within `MAX_LOAD_RATIO` times it;
else the least loaded takes it. What each worker holds is followed from its `Status` events (a
snapshot when the router is too far behind), and between two polls from what the router itself
sent it.

A worker that fails a call or a health check is marked down; work that had not started streaming
is retried once on another worker. A down worker is polled still, and re-admitted when it answers.

The chunks' KV a worker computed on misses is handed, once its answer's stream has ended, to the
`KVSink` (the runtime, which stores what its policy keeps), in a task of its own: storing it is
never on an answer's path and its failure never fails one.
"""

import asyncio
import enum
import hashlib
import itertools
import logging
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import AsyncIterator, Awaitable, Callable, TypeVar

import numpy as np

from server.workers import Started, WorkerHandle, WorkerUnavailable
from store.errors import Unavailable
from worker.engine import ComputedKV
from worker.generate import GeneratedToken
from worker.kv_cache import EventKind
from worker.node import GenerateJob, WorkerStatus

log = logging.getLogger(__name__)

T = TypeVar("T")
KVSink = Callable[[GenerateJob, list[ComputedKV]], Awaitable[None]]
MAX_LOAD_GAP = 3  # requests a worker may carry beyond the least loaded's for locality's sake (4 cost TTFT: bench/README.md)
MAX_LOAD_RATIO = 2.0  # or beyond this many times it, whichever allows more (the gap matters when few are in flight)
HEALTH_INTERVAL_S = 0.5


class Routing(enum.Enum):
    LOCALITY = "locality"
    ROUND_ROBIN = "round_robin"
    LEAST_LOADED = "least_loaded"


class Reason(enum.Enum):
    """Why a request went where it did (a metric label)."""

    LOCALITY = "locality"  # the chosen worker held the largest share of its chunks
    LOAD = "load"  # nobody held any (or least_loaded routing): the least loaded
    OVERLOAD = "overload"  # the holder was past the load bound: the least loaded
    ROUND_ROBIN = "round_robin"
    RETRY = "retry"  # the first choice failed before streaming


@dataclass(slots=True)
class WorkerState:
    handle: WorkerHandle
    up: bool = False
    sequence: int = 0  # the newest cache event applied to `held`
    held: set[str] = field(default_factory=set)  # KV keys in its cache
    in_flight: int = 0  # calls the router has sent it that have not ended
    requests: int = 0
    cache_hits: int = 0  # chunks found in its cache when a request was accepted
    cache_misses: int = 0
    fetched_bytes: int = 0
    queue_depth: int = 0  # as its last status said

    def load(self) -> int:
        return max(self.in_flight, self.queue_depth)


class Router:
    def __init__(self, workers: list[WorkerHandle], routing: Routing = Routing.LOCALITY, kv_sink: KVSink | None = None) -> None:
        if not workers:
            raise ValueError("workers: the router needs at least one")
        self.routing = routing
        self._kv_sink = kv_sink
        self._handing_over: set[asyncio.Task] = set()
        self.workers = [WorkerState(w) for w in workers]
        self.decisions = {reason: 0 for reason in Reason}
        self._turns = itertools.count()
        self._health: asyncio.Task | None = None
        self._fingerprint = ""  # the first worker's; every other must match it

    async def start(self) -> None:
        """Poll every worker once, then keep polling in the background. Workers may come later (they
        need the server up to get their keys): until one answers, model work is UNAVAILABLE."""
        await self.poll()
        if not any(w.up for w in self.workers):
            log.warning("no worker answered yet: %s", ", ".join(w.handle.name for w in self.workers))
        self._health = asyncio.create_task(self._poll_forever(), name="tenantkv-router-health")

    async def stop(self) -> None:
        if self._health is not None:
            self._health.cancel()
        await self.computed_kv_handed_over()
        for worker in self.workers:
            await worker.handle.close()

    @property
    def kv_fingerprint(self) -> str:
        """The fingerprint the workers share: KV computed by any of them serves any other."""
        if not self._fingerprint:
            raise Unavailable("no worker has answered yet")
        return self._fingerprint

    # ---- calls

    async def generate(self, job: GenerateJob, capability: str) -> Started:
        """Start an answer on the best worker and wait for its first token; if the worker fails
        before that token (nothing has reached the client), once more on another worker."""
        tried: frozenset[int] = frozenset()
        for attempt in range(2):
            worker, reason = self.choose(job, tried)
            self.decisions[Reason.RETRY if attempt else reason] += 1
            tried |= {id(worker)}
            worker.in_flight += 1
            started = None
            try:
                started = await worker.handle.generate(job, capability)
                first = await anext(started.tokens, None)
            except BaseException as exc:
                worker.in_flight -= 1
                if started is not None:
                    await started.tokens.aclose()
                if isinstance(exc, WorkerUnavailable):
                    self.mark_down(worker, exc)
                    continue
                raise
            worker.requests += 1
            worker.cache_hits += started.cache_hits
            worker.cache_misses += len(job.chunks) - started.cache_hits
            worker.fetched_bytes += started.fetched_bytes
            worker.held.update(c.kv_key for c in job.chunks)  # it holds them once it has loaded them
            stream = _TokenStream(self, worker, first, started.tokens, lambda: self._hand_over(job, started.computed()))
            return replace(started, tokens=stream)
        raise Unavailable("no worker could take the question; ask again")

    def _hand_over(self, job: GenerateJob, computed: list[ComputedKV]) -> None:
        if computed and self._kv_sink is not None:
            task = asyncio.create_task(self._sink(job, computed), name="tenantkv-computed-kv")
            self._handing_over.add(task)
            task.add_done_callback(self._handing_over.discard)

    async def _sink(self, job: GenerateJob, computed: list[ComputedKV]) -> None:
        try:
            await self._kv_sink(job, computed)
        except Exception:  # noqa: BLE001 - a miss not stored is recomputed next time; the answer is done
            log.exception("tenant %s: storing %d chunks' computed KV failed", job.tenant, len(computed))

    async def computed_kv_handed_over(self) -> None:
        """Until the computed KV of every answer ended so far has gone through the sink."""
        while self._handing_over:
            await asyncio.gather(*self._handing_over)

    async def embed(self, texts: list[str]) -> np.ndarray:
        return await self._on_least_loaded(lambda handle: handle.embed(texts))

    async def precompute_kv(self, token_lists: list[np.ndarray], codec: str) -> list[bytes]:
        """Spread over the workers up now, in contiguous shares; results in input order."""
        up = [w for w in self.workers if w.up] or self.workers
        shares = np.array_split(np.arange(len(token_lists)), min(len(up), max(1, len(token_lists))))
        parts = await asyncio.gather(
            *(self._on_least_loaded(lambda handle, s=share: handle.precompute_kv([token_lists[i] for i in s], codec)) for share in shares)
        )
        return [blob for part in parts for blob in part]

    async def _on_least_loaded(self, call: Callable[[WorkerHandle], Awaitable[T]]) -> T:
        tried: frozenset[int] = frozenset()
        for attempt in range(2):
            worker = self._least_loaded(tried)
            tried |= {id(worker)}
            worker.in_flight += 1
            try:
                return await call(worker.handle)
            except WorkerUnavailable as exc:
                self.mark_down(worker, exc)
            finally:
                worker.in_flight -= 1
        raise Unavailable("no worker could take the work; retry")

    # ---- choosing

    def choose(self, job: GenerateJob, tried: frozenset[int] = frozenset()) -> tuple[WorkerState, Reason]:
        """The worker for `job` among those up and not in `tried` (ids of WorkerStates), and why."""
        candidates = self._candidates(tried)
        if self.routing is Routing.ROUND_ROBIN:
            return candidates[next(self._turns) % len(candidates)], Reason.ROUND_ROBIN
        weights = {c.kv_key: len(c.token_ids) for c in job.chunks}
        if self.routing is Routing.LEAST_LOADED or not weights:
            return self._least_loaded(tried), Reason.LOAD
        names = [w.handle.name for w in candidates]
        homed = Counter[str]()
        for key, tokens in weights.items():
            homed[home(key, names)] += tokens

        def held(w: WorkerState) -> int:
            return sum(n for key, n in weights.items() if key in w.held)

        best = max(candidates, key=lambda w: (held(w), -w.load(), homed[w.handle.name]))
        if held(best) and best.load() + 1 <= load_bound(min(w.load() for w in candidates)):
            return best, Reason.LOCALITY
        least = min(candidates, key=lambda w: (w.load(), -held(w), -homed[w.handle.name]))
        return least, Reason.OVERLOAD if held(best) else Reason.LOAD

    def _least_loaded(self, tried: frozenset[int]) -> WorkerState:
        candidates = self._candidates(tried)
        return min(candidates, key=lambda w: (w.load(), w.requests))

    def _candidates(self, tried: frozenset[int]) -> list[WorkerState]:
        up = [w for w in self.workers if w.up and id(w) not in tried]
        if not up:
            raise Unavailable("no worker is up; retry shortly")
        return up

    # ---- health

    async def poll(self) -> None:
        """Ask every worker for its status; apply its cache events; mark it up or down."""
        await asyncio.gather(*(self._poll(w) for w in self.workers))

    async def _poll(self, worker: WorkerState) -> None:
        try:
            status = await worker.handle.status(worker.sequence if worker.up else 0)
        except WorkerUnavailable as exc:
            self.mark_down(worker, exc)
            return
        if self._fingerprint and status.kv_fingerprint != self._fingerprint:
            log.error("worker %s serves other weights (fingerprint %s, not %s); not admitted", worker.handle.name, status.kv_fingerprint, self._fingerprint)
            worker.up = False
            return
        self._fingerprint = status.kv_fingerprint
        if not worker.up:
            log.info("worker %s is up", worker.handle.name)
        worker.up = True
        worker.queue_depth = status.queue_depth
        _apply(worker, status)

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_INTERVAL_S)
            await self.poll()

    def mark_down(self, worker: WorkerState, exc: Exception) -> None:
        if worker.up:
            log.warning("worker %s is down: %s", worker.handle.name, exc)
        worker.up = False
        worker.held.clear()
        worker.sequence = 0


def home(key: str, names: list[str]) -> str:
    """The worker, among `names`, that KV key `key` hashes highest with (rendezvous hashing): every
    router agrees on it, across restarts, and removing a worker moves only the keys it was home to."""
    return max(names, key=lambda name: hashlib.blake2b(f"{name}\0{key}".encode(), digest_size=8).digest())


def load_bound(least: int) -> int:
    """The most load a worker holding a request's chunks may carry after taking it, while the least
    loaded worker up carries `least`."""
    return max(least + MAX_LOAD_GAP, math.floor(MAX_LOAD_RATIO * least))


def _apply(worker: WorkerState, status: WorkerStatus) -> None:
    view = status.cache
    if view.snapshot is not None:
        worker.held = set(view.snapshot)
    for event in view.events:
        if event.kind is EventKind.STORED:
            worker.held.add(event.key)
        else:
            worker.held.discard(event.key)
    worker.sequence = view.sequence


class _TokenStream:
    """A started answer's tokens: its first (already read), then the rest. Closing it, at any point
    and even before the first read, ends the worker's request and its count in flight."""

    def __init__(
        self, router: Router, worker: WorkerState, first: GeneratedToken | None, tokens: AsyncIterator[GeneratedToken],
        ended: Callable[[], None],
    ) -> None:
        self._router = router
        self._worker = worker
        self._first = first
        self._tokens = tokens
        self._ended = ended  # called once, when the stream ends or is closed
        self._closed = first is None
        if self._closed:
            worker.in_flight -= 1
            ended()

    def __aiter__(self) -> "_TokenStream":
        return self

    async def __anext__(self) -> GeneratedToken:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        if self._closed:
            raise StopAsyncIteration
        try:
            return await anext(self._tokens)
        except StopAsyncIteration:
            await self.aclose()
            raise
        except WorkerUnavailable as exc:
            self._router.mark_down(self._worker, exc)
            await self.aclose()
            raise Unavailable(f"the worker answering this question stopped mid-answer ({self._worker.handle.name}); ask again") from exc

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._worker.in_flight -= 1
            await self._tokens.aclose()
            self._ended()
