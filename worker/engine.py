"""The worker's front: chunk KV for ingestion, and answers generated from retrieved chunks.

One `Engine` per process and system prompt. Every forward pass it makes goes through its
`Scheduler`, one loop that owns the model: answers are batched continuously, fairly across
tenants, and chunk-KV precompute runs below them in padded batches. Chunk KV is encoded with a
codec from `kvcodec` for storage; loaded chunk KV stays in a byte-bounded LRU keyed by the blob
key the store names it by (else the chunk id), still packed when its codec quantises.

A chunk whose KV the store lacks is computed within its answer's prefill and passed through its
codec (encoded, then decoded) before use, so an answer is the same whether its KV came from the
store or from a miss; the encoded blob goes to the chunk's `on_miss`, for the server to store.
"""

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

import kvcodec
from worker.batch import bucket_batches
from worker.blend import Blender, ChunkKV, Deviation, Prefill, PrefillMode
from worker.errors import check_positions
from worker.generate import check_max_new_tokens
from worker.kv_cache import ChunkKVCache
from worker.llama import Steps
from worker.llm import LLM
from worker.prompt import DEFAULT_SYSTEM, PromptLayout
from worker.scheduler import Scheduler, SchedulerConfig, Stream

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EngineConfig:
    system: str = DEFAULT_SYSTEM
    kv_codec: str = "fp16"
    cache_bytes: int = 1 << 30
    recompute_ratio: float = 0.15
    check_layer: int = 1
    deviation: Deviation = Deviation.KEY_BY_ATTENTION
    scheduler: SchedulerConfig = SchedulerConfig()


@dataclass(frozen=True, slots=True)
class ComputedKV:
    """A chunk's KV computed on a miss: its blob as the store would hold it, and what computing it cost."""

    chunk_id: int
    blob: bytes  # encoded in the chunk's codec; b"" where nobody asked to keep it
    seconds: float  # prefill, encode and decode, wall clock (includes other requests' steps interleaved)


@dataclass(frozen=True, slots=True)
class RetrievedChunk:
    chunk_id: int
    token_ids: np.ndarray  # the chunk's own tokens, as stored
    load_kv: Callable[[], bytes | None]  # the encoded blob from the store, if precomputed
    cache_key: str = ""  # the store's blob key naming the chunk's KV (shared by chunks with the same KV); "": the chunk id
    codec: str = ""  # the codec its KV is stored in; "": the engine's default
    on_miss: Callable[[ComputedKV], None] | None = None  # told when its KV had to be computed

    @property
    def key(self) -> str:
        return self.cache_key or str(self.chunk_id)


class Engine:
    def __init__(self, llm: LLM, config: EngineConfig = EngineConfig()) -> None:
        if config.kv_codec not in kvcodec.CODECS:
            raise ValueError(f"kv_codec: unknown {config.kv_codec!r}; known: {sorted(kvcodec.CODECS)}")
        self.llm = llm
        self.config = config
        self.layout = PromptLayout.build(llm.tokenizer, config.system)
        self.blender = Blender(llm.forward, torch.from_numpy(self.layout.prefix))
        self.cache = ChunkKVCache(config.cache_bytes)
        digest = hashlib.sha256(llm.fingerprint.encode() + self.layout.prefix.tobytes() + self.layout.separator.tobytes())
        # chunk KV depends on the weights and on the prefix it was computed after
        self.kv_fingerprint = digest.hexdigest()[:16]
        self.scheduler = Scheduler(llm, config.scheduler)
        self.scheduler.start()

    def close(self) -> None:
        """Stop the scheduler's loop; unfinished answers and ingestion end with RequestCancelled."""
        self.scheduler.close()

    # ---- chunk KV for ingestion

    def chunk_kv(self, token_ids: np.ndarray) -> ChunkKV:
        return self.chunks_kv([token_ids])[0]

    def chunks_kv(self, token_lists: list[np.ndarray], cancel: threading.Event | None = None) -> list[ChunkKV]:
        """Each chunk's KV computed after the prompt prefix, in batches of chunks of similar length
        scheduled below answers; `cancel` set stops the work at the next step (RequestCancelled)."""
        if not token_lists:
            return []
        segments = [torch.from_numpy(self.layout.chunk_segment(ids)) for ids in token_lists]
        batches = bucket_batches([len(s) for s in segments], self.config.scheduler.ingest_batch_tokens)
        steps = [self.blender.prefill_chunks_steps([segments[i] for i in batch]) for batch in batches]
        computed = self.scheduler.ingest(steps, cancel).result()
        order = [i for batch in batches for i in batch]
        result: list[ChunkKV | None] = [None] * len(segments)
        for i, kv in zip(order, computed):
            result[i] = kv
        return result

    def encode_chunk_kv(self, token_ids: np.ndarray, codec: str = "") -> bytes:
        """A chunk's KV, computed after the prompt prefix and encoded for the store (`codec` or the default)."""
        return self.encode_chunks_kv([token_ids], codec)[0]

    def encode_chunks_kv(self, token_lists: list[np.ndarray], codec: str = "", cancel: threading.Event | None = None) -> list[bytes]:
        """`encode_chunk_kv` for many chunks, batched; encoding runs in the caller's thread, off the model
        loop. Each blob names the model's KV fingerprint, so a store can tell whose KV it is."""
        return [kvcodec.encode(c.kv, codec or self.config.kv_codec, self.kv_fingerprint) for c in self.chunks_kv(token_lists, cancel)]

    # ---- answers

    def answer(
        self, chunks: list[RetrievedChunk], question: str, mode: PrefillMode, max_new_tokens: int, tenant: str = ""
    ) -> Stream:
        """Prefill `[prefix][chunks][question]` in `mode`, then stream greedy tokens, batched with
        other requests and served round robin with other tenants' (`tenant`).

        The request is checked here: a prompt that cannot fit the model's context raises
        ContextOverflow at this call, so a server can refuse it before replying. The work starts
        at the stream's first `next`; `close` cancels it and frees its slot.
        """
        started = time.perf_counter()
        return self.scheduler.request(tenant, self.prefill_steps(chunks, question, mode, max_new_tokens), max_new_tokens, started)

    def prefill_steps(self, chunks: list[RetrievedChunk], question: str, mode: PrefillMode, max_new_tokens: int) -> Steps[Prefill]:
        """The request's prefill, checked now and run a layer a step by whoever drives it (the scheduler)."""
        check_max_new_tokens(max_new_tokens)
        question_ids = torch.from_numpy(self.layout.question_segment(self.llm.tokenizer, question))
        chunk_tokens = sum(len(self.layout.chunk_segment(c.token_ids)) for c in chunks)
        prompt = len(self.layout.prefix) + chunk_tokens + len(question_ids)
        check_positions(prompt + max_new_tokens, self.llm.forward.max_positions)
        return self._prefill(chunks, question_ids, mode)

    def _prefill(self, chunks, question_ids, mode: PrefillMode) -> Steps[Prefill]:
        if mode is PrefillMode.FULL_PREFILL:  # reads tokens only, so no KV is loaded
            loaded = [ChunkKV(torch.from_numpy(self.layout.chunk_segment(c.token_ids)), torch.empty(0)) for c in chunks]
        else:
            loaded = []
            for chunk in chunks:
                loaded.append((yield from self._load(chunk)))
        return (
            yield from self.blender.blend_prefill_steps(
                loaded,
                question_ids,
                recompute_ratio=self.config.recompute_ratio,
                check_layer=self.config.check_layer,
                mode=mode,
                deviation=self.config.deviation,
            )
        )

    def _load(self, chunk: RetrievedChunk) -> Steps[ChunkKV]:
        cached = self.cache.get(chunk.key)
        if cached is not None:
            return cached
        blob = chunk.load_kv()
        kv = self._decoded(chunk.key, blob) if blob is not None else None
        segment = torch.from_numpy(self.layout.chunk_segment(chunk.token_ids))
        if kv is None:  # not stored, or its blob is damaged: compute now (in this request's steps), keep for next time
            kv = yield from self._computed(chunk, segment)
        loaded = ChunkKV(tokens=segment, kv=kv)
        self.cache.put(chunk.key, loaded)
        return loaded

    def _computed(self, chunk: RetrievedChunk, segment: torch.Tensor) -> Steps[torch.Tensor | kvcodec.PackedKV]:
        """The chunk's KV computed, then encoded and decoded in its codec, exactly as a stored blob loads."""
        started = time.perf_counter()
        computed = (yield from self.blender.prefill_chunks_steps([segment]))[0]
        blob = kvcodec.encode(computed.kv, chunk.codec or self.config.kv_codec, self.kv_fingerprint)
        kv = self._decoded(chunk.key, blob)
        if chunk.on_miss is not None:
            chunk.on_miss(ComputedKV(chunk.chunk_id, blob, time.perf_counter() - started))
        return kv

    def _decoded(self, key: str, blob: bytes) -> torch.Tensor | kvcodec.PackedKV | None:
        """The blob's KV on the model's device (quantised KV stays packed, 3-6x smaller); None if it does not decode."""
        try:
            kv = kvcodec.decode_packed(blob).to(self.llm.forward.device)
        except kvcodec.CorruptBlobError as exc:
            log.warning("chunk KV %s: stored blob does not decode (%s); recomputing it", key, exc)
            return None
        return kv if isinstance(kv, kvcodec.PackedKV) else kv.to(self.llm.forward.dtype)

    def prompt_tokens(self, chunks: list[RetrievedChunk], question: str) -> int:
        return len(self.layout.full(self.llm.tokenizer, [c.token_ids for c in chunks], question))
