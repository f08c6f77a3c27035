"""The worker's front: chunk KV for ingestion, and answers generated from retrieved chunks.

One `Engine` per process and system prompt. Chunk KV is encoded with a codec from `kvcodec` for
storage; loaded chunk KV stays in a byte-bounded LRU keyed by the store's blob key (a hash of
the model, the tokens and the owner's salt, so an entry can never go stale), still packed when
its codec quantises.
"""

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

import kvcodec
from worker.blend import Blender, ChunkKV, Deviation, PrefillMode
from worker.errors import check_positions
from worker.generate import GeneratedToken, check_max_new_tokens, decode_stream
from worker.kv_cache import ChunkKVCache
from worker.llm import LLM
from worker.prompt import DEFAULT_SYSTEM, PromptLayout

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EngineConfig:
    system: str = DEFAULT_SYSTEM
    kv_codec: str = "fp16"
    cache_bytes: int = 1 << 30
    recompute_ratio: float = 0.15
    check_layer: int = 1
    deviation: Deviation = Deviation.KEY_BY_ATTENTION


@dataclass(frozen=True, slots=True)
class RetrievedChunk:
    chunk_id: int
    token_ids: np.ndarray  # the chunk's own tokens, as stored
    load_kv: Callable[[], bytes | None]  # the encoded blob from the store, if precomputed
    cache_key: str = ""  # the store's blob key naming its KV (deduplicated chunks share it); "": the chunk id


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

    def chunk_kv(self, token_ids: np.ndarray) -> ChunkKV:
        return self.blender.prefill_chunk(torch.from_numpy(self.layout.chunk_segment(token_ids)))

    def encode_chunk_kv(self, token_ids: np.ndarray, codec: str = "") -> bytes:
        """A chunk's KV, computed after the prompt prefix and encoded for the store (`codec` or the default)."""
        return kvcodec.encode(self.chunk_kv(token_ids).kv, codec or self.config.kv_codec)

    def _load(self, chunk: RetrievedChunk) -> ChunkKV:
        key = chunk.cache_key or chunk.chunk_id
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        blob = chunk.load_kv()
        kv = self._decoded(chunk.chunk_id, blob) if blob is not None else None
        if kv is None:  # not precomputed, or its blob is damaged: compute now, keep for next time
            loaded = self.chunk_kv(chunk.token_ids)
        else:
            loaded = ChunkKV(tokens=torch.from_numpy(self.layout.chunk_segment(chunk.token_ids)), kv=kv)
        self.cache.put(key, loaded)
        return loaded

    def _decoded(self, chunk_id: int, blob: bytes) -> torch.Tensor | kvcodec.PackedKV | None:
        """The blob's KV on the model's device (quantised KV stays packed, 3-6x smaller); None if it does not decode."""
        try:
            kv = kvcodec.decode_packed(blob).to(self.llm.forward.device)
        except kvcodec.CorruptBlobError as exc:
            log.warning("chunk %d: stored KV does not decode (%s); recomputing it", chunk_id, exc)
            return None
        return kv if isinstance(kv, kvcodec.PackedKV) else kv.to(self.llm.forward.dtype)

    def answer(
        self, chunks: list[RetrievedChunk], question: str, mode: PrefillMode, max_new_tokens: int
    ) -> Iterator[GeneratedToken]:
        """Prefill `[prefix][chunks][question]` in `mode`, then stream greedy tokens.

        The request is checked here, before the lazy stream: a prompt that cannot fit the model's
        context raises ContextOverflow at this call, so a server can refuse it before replying.
        """
        check_max_new_tokens(max_new_tokens)
        question_ids = torch.from_numpy(self.layout.question_segment(self.llm.tokenizer, question))
        chunk_tokens = sum(len(self.layout.chunk_segment(c.token_ids)) for c in chunks)
        prompt = len(self.layout.prefix) + chunk_tokens + len(question_ids)
        check_positions(prompt + max_new_tokens, self.llm.forward.max_positions)
        return self._answer(chunks, question_ids, mode, max_new_tokens)

    def _answer(self, chunks, question_ids, mode: PrefillMode, max_new_tokens: int) -> Iterator[GeneratedToken]:
        started = time.perf_counter()
        if mode is PrefillMode.FULL_PREFILL:  # reads tokens only, so no KV is loaded
            loaded = [ChunkKV(torch.from_numpy(self.layout.chunk_segment(c.token_ids)), torch.empty(0)) for c in chunks]
        else:
            loaded = [self._load(c) for c in chunks]
        prefill = self.blender.blend_prefill(
            loaded,
            question_ids,
            recompute_ratio=self.config.recompute_ratio,
            check_layer=self.config.check_layer,
            mode=mode,
            deviation=self.config.deviation,
            reserve=max_new_tokens,
        )
        yield from decode_stream(self.llm, prefill.logits, prefill.kv, max_new_tokens, started)

    def prompt_tokens(self, chunks: list[RetrievedChunk], question: str) -> int:
        return len(self.layout.full(self.llm.tokenizer, [c.token_ids for c in chunks], question))
