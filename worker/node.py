"""One inference worker's work, whatever carries its requests: answers, embeddings, chunk KV, status.

The server runs one in its own process (no network hop), `tenantkv worker` runs one behind the
`tenantkv.v1.Worker` gRPC service; both are the same object, so an answer is the same wherever
it is computed. The engine's scheduler owns the model: calls here block on it from any thread. A worker holds no tenant data beyond its KV cache: the chunks' KV it lacks comes
through a `KVFetcher` the caller provides (the store in-process, `KVCache.Fetch` with a
capability from the router otherwise). Nor does it write the store: the KV it computes on a miss
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
from worker.kv_cache import CacheView
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
    cache_hits: int  # chunks whose KV was in the worker's cache
    fetched_chunks: int  # chunks whose KV came from the store
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
    cache_hits: int
    cache_misses: int
    fetched_bytes: int  # KV bytes fetched from the store since start
    embedding_dim: int


class WorkerNode:
    def __init__(self, llm: LLM, embedder: Embedder, engine: Engine) -> None:
        self.llm = llm
        self.embedder = embedder
        self.engine = engine
        self._lock = threading.Lock()  # guards the counter below
        self._fetched_bytes = 0

    def generate(self, job: GenerateJob, fetch: KVFetcher) -> Generation:
        """Check the request (ContextOverflow and the like raise here, before any token), fetch
        the stored KV of chunks not in the cache in one call, and return the token stream."""
        blobs: dict[int, bytes] = {}
        computed: list[ComputedKV] = []
        chunks = [
            RetrievedChunk(
                c.chunk_id, np.asarray(c.token_ids), _lookup(blobs, c.chunk_id), cache_key=c.kv_key, codec=c.codec,
                on_miss=_collect(computed, c.keep),
            )
            for c in job.chunks
        ]
        tokens = self.engine.answer(chunks, job.question, job.mode, job.max_new_tokens, tenant=job.tenant)
        held = [c for c in job.chunks if c.kv_key in self.engine.cache]
        wanted = [c.chunk_id for c in job.chunks if c.stored and c.kv_key not in self.engine.cache]
        if wanted and job.mode is not PrefillMode.FULL_PREFILL:
            try:
                blobs.update(fetch(wanted))
            except Exception as exc:  # noqa: BLE001 - a store that cannot answer costs recompute, not the answer
                log.warning("fetching %d chunks' KV failed (%s); computing them instead", len(wanted), exc)
        fetched_bytes = sum(len(b) for b in blobs.values())
        with self._lock:
            self._fetched_bytes += fetched_bytes
        return Generation(
            prompt_tokens=self.engine.prompt_tokens(chunks, job.question),
            cache_hits=len(held),
            fetched_chunks=len(blobs),
            fetched_bytes=fetched_bytes,
            tokens=tokens,
            computed=computed,
        )

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
        cache = self.engine.cache
        with self._lock:
            fetched = self._fetched_bytes
        return WorkerStatus(
            kv_fingerprint=self.engine.kv_fingerprint,
            queue_depth=self.engine.scheduler.waiting_count,
            active_requests=self.engine.scheduler.active_count,
            cache=cache.view(since),
            cache_hits=cache.hits,
            cache_misses=cache.misses,
            fetched_bytes=fetched,
            embedding_dim=self.embedder.dim,
        )


def _lookup(blobs: dict[int, bytes], chunk_id: int) -> Callable[[], bytes | None]:
    return lambda: blobs.get(chunk_id)


def _collect(computed: list[ComputedKV], keep: bool) -> Callable[[ComputedKV], None]:
    """Appends a miss to `computed`, its blob dropped unless the router asked to keep it."""
    return lambda kv: computed.append(kv if keep else replace(kv, blob=b""))
