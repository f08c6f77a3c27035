"""A chunk's KV computed on a miss: passed through its codec before use, reported with its blob, streamed back in pieces."""

import numpy as np
import pytest

from protos.tenantkv.v1 import worker_pb2
from server.workers import ComputedPieces
from worker.blend import PrefillMode
from worker.engine import ComputedKV, Engine, EngineConfig, RetrievedChunk
from worker.node import ChunkRef, GenerateJob, WorkerNode
from client.api import KV_PIECE_BYTES
from worker.service import computed_messages

PASSAGE = "The Seine flows through Paris and into the English Channel at Le Havre."
QUESTION = "Where does the Seine flow?"


@pytest.fixture(scope="module")
def engine(models) -> Engine:
    return Engine(models.llm, EngineConfig(kv_codec="fp16", cache_bytes=0))  # nothing kept: every load is a miss or a blob


@pytest.fixture(scope="module")
def ids(engine: Engine) -> np.ndarray:
    return np.asarray(engine.llm.tokenizer.encode(PASSAGE, add_special_tokens=False), dtype=np.int32)


def answer(engine: Engine, chunk: RetrievedChunk) -> list[int]:
    return [t.token_id for t in engine.answer([chunk], QUESTION, PrefillMode.BLEND, 3)]


@pytest.mark.parametrize("codec", ["int8", "kivi2"])
def test_a_miss_answers_as_its_stored_blob_would(engine: Engine, ids: np.ndarray, codec: str) -> None:
    """Lossy codecs change the answer's inputs: a miss must go through the chunk's codec, not the engine's default."""
    missed: list[ComputedKV] = []
    from_miss = answer(engine, RetrievedChunk(1, ids, lambda: None, codec=codec, on_miss=missed.append))
    stored = engine.encode_chunk_kv(ids, codec)
    assert [kv.chunk_id for kv in missed] == [1]
    assert missed[0].blob == stored and missed[0].seconds > 0
    assert from_miss == answer(engine, RetrievedChunk(1, ids, lambda: stored, codec=codec))


def test_the_node_returns_the_blobs_it_was_asked_to_keep(models, engine: Engine, ids: np.ndarray) -> None:
    node = WorkerNode(models.llm, models.embedder, engine)
    refs = [
        ChunkRef(10, "kept", ids, stored=False, codec="int8", keep=True),
        ChunkRef(11, "not-kept", ids[:-2], stored=False, codec="int8", keep=False),
    ]
    generation = node.generate(GenerateJob(refs, QUESTION, PrefillMode.BLEND, 2), fetch=lambda chunk_ids: {})
    assert list(generation.tokens)
    by_chunk = {kv.chunk_id: kv for kv in generation.computed}
    assert by_chunk[10].blob == engine.encode_chunk_kv(ids, "int8")
    assert by_chunk[11].blob == b"" and by_chunk[11].seconds > 0


def test_full_prefill_computes_no_chunk_kv(models, engine: Engine, ids: np.ndarray) -> None:
    node = WorkerNode(models.llm, models.embedder, engine)
    job = GenerateJob([ChunkRef(12, "full", ids, stored=False, keep=True)], QUESTION, PrefillMode.FULL_PREFILL, 2)
    generation = node.generate(job, fetch=lambda chunk_ids: {})
    assert list(generation.tokens) and generation.computed == []


def test_computed_kv_crosses_the_stream_in_pieces_and_comes_back_whole() -> None:
    big = bytes(np.random.default_rng(0).integers(0, 256, 2 * KV_PIECE_BYTES + 17, dtype=np.uint8))
    computed = [ComputedKV(1, big, 0.5), ComputedKV(2, b"", 0.25), ComputedKV(3, b"small", 0.125)]
    messages = list(computed_messages(computed))
    assert len(messages) == 3 + 1 + 1
    assert all(m.ByteSize() < 4 << 20 for m in messages)
    pieces = ComputedPieces()
    for message in messages:
        pieces.add(worker_pb2.GenerateResponse.FromString(message.SerializeToString()).computed)
    assert pieces.complete() == computed
