"""The engine's chunk KV loading (packed where the codec quantises, recomputed where a blob is damaged) and its context check."""

import logging

import numpy as np
import pytest

import kvcodec
from worker.blend import PrefillMode
from worker.engine import Engine, EngineConfig, RetrievedChunk
from worker.errors import ContextOverflow


@pytest.fixture(scope="module")
def engine(models) -> Engine:
    return Engine(models.llm, EngineConfig(kv_codec="kivi4"))


def chunk(engine: Engine, chunk_id: int, blob: bytes | None) -> RetrievedChunk:
    ids = np.asarray(engine.llm.tokenizer.encode("The Seine flows through Paris.", add_special_tokens=False), dtype=np.int32)
    return RetrievedChunk(chunk_id, ids, lambda: blob)


def test_quantised_blobs_stay_packed_in_the_cache(engine: Engine) -> None:
    blob = engine.encode_chunk_kv(chunk(engine, 1, None).token_ids)
    assert kvcodec.codec_of(blob) == "kivi4"
    tokens = list(engine.answer([chunk(engine, 1, blob)], "Which river?", PrefillMode.BLEND, 2))
    assert tokens and isinstance(engine.cache.get("1").kv, kvcodec.PackedKV)


def test_a_blob_that_does_not_decode_is_recomputed(engine: Engine, caplog) -> None:
    blob = bytearray(engine.encode_chunk_kv(chunk(engine, 2, None).token_ids))
    blob[-5] ^= 0xFF
    with caplog.at_level(logging.WARNING, logger="worker.engine"):
        tokens = list(engine.answer([chunk(engine, 2, bytes(blob))], "Which river?", PrefillMode.BLEND, 2))
    assert tokens and "recomputing" in caplog.text
    assert isinstance(engine.cache.get("2").kv, kvcodec.PackedKV)  # computed afresh, loaded through its codec as a blob would be


def test_a_prompt_and_its_new_tokens_past_the_context_are_refused_at_the_call(engine: Engine) -> None:
    max_positions = engine.llm.forward.max_positions
    with pytest.raises(ContextOverflow, match="max_new_tokens"):
        engine.answer([chunk(engine, 3, None)], "Which river?", PrefillMode.BLEND, max_positions)
