"""One inference worker's work, whatever carries its requests: answers, embeddings, chunk KV, status.

The server runs one in its own process (no network hop), `tenantkv worker` runs one behind the
`tenantkv.v1.Worker` gRPC service; both are the same object, so an answer is the same wherever
it is computed. The engine's scheduler owns the model: calls here block on it from any thread. A worker holds no tenant data beyond its KV cache: the chunks' KV it lacks comes
through a `KVFetcher` the caller provides (the store in-process, `KVCache.Fetch` with a
capability from the router otherwise), each blob key fetched once however many requests want it
at the same time (`kv_cache.Load`). Nor does it write the store: the KV it computes on a miss
comes back with the answer (`Generation.computed`), for the server to keep or not.
"""

import logging
import threading
from dataclasses import dataclass, replace
from typing import Callable, Iterator

import numpy as np

from worker.blend import PrefillMode
from worker.embedder import Embedder
from worker.engine import ComputedKV, Engine, RetrievedChunk
from worker.generate import GeneratedToken
from worker.kv_cache import CacheView, Load
from worker.llm import LLM

log = logging.getLogger(__name__)

KVFetcher = Callable[[list[int]], dict[int, bytes]]  # chunk ids -> their stored KV blobs (those found)


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """A retrieved chunk as the router sends it: its tokens, and the blob key naming its KV."""

    chunk_id: int
    kv_key: str  # the worker's cache key
    token_ids: np.ndarray  # int32 or int64 [tokens]
    stored: bool  # the store holds its KV; else the worker computes it
    codec: str = ""  # the codec its KV is stored in (its owner's); "": the worker's default
    keep: bool = False  # on a miss, return the computed blob: the server stores it


@dataclass(frozen=True, slots=True)
class GenerateJob:
    chunks: list[ChunkRef]
    question: str
    mode: PrefillMode
    max_new_tokens: int
    tenant: str = ""  # for fair scheduling and logs only


@dataclass(frozen=True, slots=True)
class Generation:
    """An accepted request: how its chunks' KV was found, and its tokens (a lazy stream; close() cancels)."""

    prompt_tokens: int
    cache_hits: int  # chunks whose KV was in the worker's cache, or on its way there for another request
    fetched_chunks: int  # chunks whose KV this request fetched from the store
    fetched_bytes: int
    tokens: Iterator[GeneratedToken]
    # Chunks computed on a miss, appended during the prefill (so complete by the first token);
    # with their blobs where the router asked to keep them.
    computed: list[ComputedKV]


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    kv_fingerprint: str
    queue_depth: int  # answers waiting for a slot in the scheduler's batch
    active_requests: int  # answers in prefill or decode
    cache: CacheView
    cache_hits: int  # since start, as each Generation counted them
    cache_misses: int  # the other chunks of those requests
    fetched_bytes: int  # KV bytes fetched from the store since start
    embedding_dim: int


class WorkerNode:
    def __init__(self, llm: LLM, embedder: Embedder, engine: Engine) -> None:
        self.llm = llm
        self.embedder = embedder
        self.engine = engine
        self._lock = threading.Lock()  # guards the counters below, counted as each request is accepted
        self._hits = 0
        self._misses = 0
        self._fetched_bytes = 0

    def generate(self, job: GenerateJob, fetch: KVFetcher) -> Generation:
        """Check the request (ContextOverflow and the like raise here, before any token), get the
        stored KV of chunks not in the cache, and return the token stream.

        Each blob key is fetched once across concurrent requests: the first to want it fetches it
        (one store call for all it began), the others wait for that fetch and count it as a hit.
        A waiter whose load brought nothing (failed, or not stored) fetches the key itself."""
        blobs: dict[str, bytes] = {}  # by blob key
        computed: list[ComputedKV] = []
        chunks = [
            RetrievedChunk(
                c.chunk_id, np.asarray(c.token_ids), _lookup(blobs, c.kv_key), cache_key=c.kv_key, codec=c.codec,
                on_miss=_collect(computed, c.keep),
            )
            for c in job.chunks
        ]
        stream = self.engine.answer(chunks, job.question, job.mode, job.max_new_tokens, tenant=job.tenant)
        cache = self.engine.cache
        ids = {c.kv_key: c.chunk_id for c in job.chunks if c.stored} if job.mode is not PrefillMode.FULL_PREFILL else {}
        loads = cache.begin_loads(ids)
        try:
            fetched = self._fetch_begun(loads.begun, ids, fetch)
            joined = {key: blob for key, load in loads.joined.items() if (blob := load.wait()) is not None}
            refetch = {key: ids[key] for key in loads.joined.keys() - joined.keys()}
            if refetch:  # as a miss: the fetch another request made for these failed or found nothing
                why = {str(loads.joined[key].error or "not stored") for key in refetch}
                log.info("%d chunks' KV another request fetched did not come (%s); fetching it here", len(refetch), "; ".join(sorted(why)))
                fetched |= _fetch_or_log(fetch, refetch)[0]
        except BaseException:
            cache.end_loads(loads.begun)
            stream.close()
            raise
        blobs |= fetched | joined
        ready = loads.held | joined.keys()
        hits = sum(1 for c in job.chunks if c.kv_key in ready or (c.kv_key not in ids and c.kv_key in cache))
        fetched_bytes = sum(len(b) for b in fetched.values())
        with self._lock:
            self._hits += hits
            self._misses += len(job.chunks) - hits
            self._fetched_bytes += fetched_bytes
        return Generation(
            prompt_tokens=self.engine.prompt_tokens(chunks, job.question),
            cache_hits=hits,
            fetched_chunks=len(fetched),
            fetched_bytes=fetched_bytes,
            tokens=_Tokens(stream, lambda: cache.end_loads(loads.begun)),
            computed=computed,
        )

    def _fetch_begun(self, begun: dict[str, Load], ids: dict[str, int], fetch: KVFetcher) -> dict[str, bytes]:
        """The blobs of the loads this request began, in one store call; each load's waiters are woken
        with its blob, or with nothing and the error, however the call ends."""
        blobs: dict[str, bytes] = {}
        error: BaseException | None = None
        try:
            if begun:
                blobs, error = _fetch_or_log(fetch, {key: ids[key] for key in begun})
        finally:  # also when interrupted: its waiters then fetch for themselves
            for key, load in begun.items():
                self.engine.cache.finish_load(key, load, blobs.get(key), error)
        return blobs

    def embed(self, texts: list[str]) -> np.ndarray:
        """float32 [len(texts), dim], unit rows."""
        return self.embedder.embed(texts)

    def precompute_kv(self, token_lists: list[np.ndarray], codec: str, cancel: threading.Event) -> list[bytes]:
        """Each chunk's KV computed after the prompt prefix (batched, below answers) and encoded in
        `codec` (empty: the engine's default); `cancel` set stops the work at the model's next step."""
        return self.engine.encode_chunks_kv([np.asarray(ids) for ids in token_lists], codec, cancel)

    def close(self) -> None:
        """Stop the engine's scheduler: unfinished work ends with RequestCancelled."""
        self.engine.close()

    def status(self, since: int) -> WorkerStatus:
        with self._lock:
            hits, misses, fetched = self._hits, self._misses, self._fetched_bytes
        return WorkerStatus(
            kv_fingerprint=self.engine.kv_fingerprint,
            queue_depth=self.engine.scheduler.waiting_count,
            active_requests=self.engine.scheduler.active_count,
            cache=self.engine.cache.view(since),
            cache_hits=hits,
            cache_misses=misses,
            fetched_bytes=fetched,
            embedding_dim=self.embedder.dim,
        )


class _Tokens(Iterator[GeneratedToken]):
    """The engine's stream of a request; when it ends, however it ends, `release` runs once (the
    request's unput loads are unlisted, so the next request for those keys fetches them itself)."""

    def __init__(self, stream: Iterator[GeneratedToken], release: Callable[[], None]) -> None:
        self._stream = stream
        self._release: Callable[[], None] | None = release

    def __next__(self) -> GeneratedToken:
        try:
            return next(self._stream)
        except BaseException:
            self._released()
            raise

    def close(self) -> None:
        self._stream.close()
        self._released()

    def __del__(self) -> None:
        self.close()

    def _released(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


def _fetch_or_log(fetch: KVFetcher, ids: dict[str, int]) -> tuple[dict[str, bytes], Exception | None]:
    """The stored blobs of these keys, fetched by their chunk ids in one call; on failure none, and the error."""
    try:
        found = fetch(list(ids.values()))
    except Exception as exc:  # noqa: BLE001 - a store that cannot answer costs recompute, not the answer
        log.warning("fetching %d chunks' KV failed (%s); computing them instead", len(ids), exc)
        return {}, exc
    return {key: found[chunk_id] for key, chunk_id in ids.items() if chunk_id in found}, None


def _lookup(blobs: dict[str, bytes], key: str) -> Callable[[], bytes | None]:
    return lambda: blobs.get(key)


def _collect(computed: list[ComputedKV], keep: bool) -> Callable[[ComputedKV], None]:
    """Appends a miss to `computed`, its blob dropped unless the router asked to keep it."""
    return lambda kv: computed.append(kv if keep else replace(kv, blob=b""))
