"""Warm-up before SERVING: run once, on throwaway inputs, every path that compiles or initialises
on its first call, so the first client does not pay for it.

Measured cold in a fresh process on this 2-core machine (busy: load average about 9): the first
query embedding took 0.8 s against 0.2 s after, the first index search 0.6 s against 2 ms (numba
loads its cached machine code), the first blended answer 6.4 s against 3.0 s. On a GPU the first
blended answer also compiles the Triton kernels. Nothing here touches the real index, the store
or the serving engine's KV cache: the index scan runs on a tiny index of its own, the answers on
an engine of their own over the same model (numba's functions, torch's kernels and Triton's
cache belong to the process, not to an object).
"""

import logging
import time
from dataclasses import dataclass

import numpy as np

import kvcodec
from index.curator import CuratorConfig, CuratorIndex
from server.runtime import Runtime
from worker.blend import PrefillMode
from worker.chunker import token_ids
from worker.engine import Engine, RetrievedChunk

log = logging.getLogger(__name__)

QUESTION = "Which passage mentions the warm-up?"
PASSAGE = "Before serving, the server runs every path once."  # short: the warm-up pays first calls, not compute
INDEX_VECTORS = 8


@dataclass(frozen=True, slots=True)
class WarmUp:
    """Seconds each step took; `total_s` is their sum."""

    index_s: float
    embedder_s: float
    blend_s: float
    full_prefill_s: float

    @property
    def total_s(self) -> float:
        return self.index_s + self.embedder_s + self.blend_s + self.full_prefill_s


def warm_up(runtime: Runtime) -> WarmUp:
    """Compile the index scan, run the embedder, and (with the in-process worker) answer once blended
    and once by full prefill; logs the time. Remote workers warm up on their own."""
    started = time.perf_counter()
    _scan_tiny_index(runtime.indexed_store.index.dim, runtime.indexed_store.index.config)
    index_done = time.perf_counter()
    runtime.embed_query(QUESTION)
    embedder_done = time.perf_counter()
    blend_done = done = embedder_done
    if runtime.node is not None:
        engine = Engine(runtime.node.llm, runtime.node.engine.config)
        try:
            chunks = _synthetic_chunks(engine)
            _answer(engine, chunks, PrefillMode.BLEND, max_new_tokens=2)  # a decode step too
            blend_done = time.perf_counter()
            _answer(engine, chunks, PrefillMode.FULL_PREFILL, max_new_tokens=1)
            done = time.perf_counter()
        finally:
            engine.close()
    result = WarmUp(
        index_s=index_done - started,
        embedder_s=embedder_done - index_done,
        blend_s=blend_done - embedder_done,
        full_prefill_s=done - blend_done,
    )
    log.info(
        "warmed up in %.1f s (index scan %.1f s, embedder %.1f s, blended answer %.1f s, full prefill %.1f s)",
        result.total_s, result.index_s, result.embedder_s, result.blend_s, result.full_prefill_s,
    )
    return result


def _scan_tiny_index(dim: int, config: CuratorConfig) -> None:
    """Add a few unit vectors to an index of our own and search it: compiles leaf assignment and the scan."""
    vectors = np.random.default_rng(0).standard_normal((INDEX_VECTORS, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = CuratorIndex(dim, config)
    index.add(np.arange(INDEX_VECTORS, dtype=np.int64), vectors, 0)
    index.search(vectors[:1], 0, 2)


def _synthetic_chunks(engine: Engine) -> list[RetrievedChunk]:
    """The passage stored in each codec: each decode path runs, quantised ones through the fused
    dequantise + RoPE kernel. Its KV is computed once, as ingestion computes each chunk's."""
    ids = token_ids(engine.llm.tokenizer, [PASSAGE])[0]
    kv = engine.chunk_kv(ids).kv
    blobs = [kvcodec.encode(kv, codec) for codec in sorted(kvcodec.CODECS)]
    return [RetrievedChunk(i, ids, lambda blob=blob: blob) for i, blob in enumerate(blobs)]


def _answer(engine: Engine, chunks: list[RetrievedChunk], mode: PrefillMode, max_new_tokens: int) -> None:
    for _ in engine.answer(chunks, QUESTION, mode, max_new_tokens):
        pass
