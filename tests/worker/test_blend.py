"""Blended prefill: exact at ratio 1, exact for a chunk in its own context, and it recomputes what deviates."""

import pytest
import torch

from kernels.deviation import top_deviations
from kernels.rope import rotate
from kvcodec import decode, decode_packed, encode
from worker.blend import Blender, ChunkKV, Deviation, PrefillMode
from worker.kv_cache import ChunkKVCache
from worker.llama import run_steps


def random_ids(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 49152, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def setup(models):
    forward = models.llm.forward
    blender = Blender(forward, random_ids(16, seed=10))
    chunk_ids = [random_ids(n, seed=20 + n) for n in (50, 35, 60)]
    chunks = [blender.prefill_chunk(ids) for ids in chunk_ids]
    question = random_ids(12, seed=30)
    kv = forward.new_buffer(200)
    reference = forward.forward(torch.cat([blender.system, *chunk_ids, question]), kv)[-1]
    return blender, chunks, question, reference


def test_ratio_one_equals_full_prefill(setup) -> None:
    blender, chunks, question, reference = setup
    for deviation in Deviation:
        result = blender.blend_prefill(chunks, question, recompute_ratio=1.0, deviation=deviation)
        torch.testing.assert_close(result.logits, reference, atol=1e-3, rtol=0)
        assert result.recomputed == sum(len(c.tokens) for c in chunks)
    full = blender.blend_prefill(chunks, question, mode=PrefillMode.FULL_PREFILL)
    torch.testing.assert_close(full.logits, reference, atol=1e-3, rtol=0)
    assert full.kv.length == 16 + 145 + 12


def test_a_single_chunk_in_its_own_context_needs_no_recompute(setup) -> None:
    blender, chunks, question, _ = setup
    forward = blender.forward
    kv = forward.new_buffer(100)
    expected = forward.forward(torch.cat([blender.system, chunks[0].tokens, question]), kv)[-1]
    reused = blender.blend_prefill(chunks[:1], question, mode=PrefillMode.FULL_REUSE)
    torch.testing.assert_close(reused.logits, expected, atol=1e-3, rtol=0)
    assert reused.recomputed == 0


def test_blending_moves_toward_full_prefill(setup) -> None:
    blender, chunks, question, reference = setup

    def kl(logits: torch.Tensor) -> float:
        return float(torch.sum(reference.softmax(-1) * (reference.log_softmax(-1) - logits.log_softmax(-1))))

    reuse = kl(blender.blend_prefill(chunks, question, mode=PrefillMode.FULL_REUSE).logits)
    blend = kl(blender.blend_prefill(chunks, question, recompute_ratio=0.5).logits)
    assert blend < reuse


def test_planted_deviations_are_selected_and_recomputed(setup) -> None:
    """Corrupt a few cached tokens in every layer: selection must find exactly them, and recomputing
    them restores the full prefill of a chunk in its own context."""
    blender, chunks, question, _ = setup
    planted = torch.tensor([3, 17, 41])
    corrupted = chunks[0].kv.clone()
    corrupted[:, :, :, planted] += 5.0 * torch.randn(corrupted[:, :, :, planted].shape, generator=torch.Generator().manual_seed(0))
    forward = blender.forward
    kv = forward.new_buffer(100)
    expected = forward.forward(torch.cat([blender.system, chunks[0].tokens, question]), kv)[-1]
    bad = ChunkKV(tokens=chunks[0].tokens, kv=corrupted)
    ratio = len(planted) / len(bad.tokens)
    for deviation in Deviation:
        result = blender.blend_prefill([bad], question, recompute_ratio=ratio, check_layer=0, deviation=deviation)
        assert result.recomputed == len(planted)
        torch.testing.assert_close(result.logits, expected, atol=1e-3, rtol=0)
    fresh, cached = torch.zeros(3, 60, 64), torch.zeros(3, 60, 64)
    cached[:, planted] = 1.0
    assert top_deviations(fresh, cached, 3).tolist() == planted.tolist()


def test_bad_arguments(setup) -> None:
    blender, chunks, question, _ = setup
    with pytest.raises(ValueError, match="recompute_ratio"):
        blender.blend_prefill(chunks, question, recompute_ratio=1.5)
    with pytest.raises(ValueError, match="check_layer"):
        blender.blend_prefill(chunks, question, check_layer=30)
    with pytest.raises(ValueError, match="chunks\\[0\\]"):
        blender.blend_prefill([ChunkKV(chunks[0].tokens, chunks[0].kv[:, :, :, :-1])], question)
    with pytest.raises(ValueError, match="question"):
        blender.blend_prefill(chunks, torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="tokens"):
        blender.prefill_chunk(torch.tensor([-1]))
    with pytest.raises(ValueError, match="question"):
        blender.blend_prefill(chunks, torch.zeros(9000, dtype=torch.long))  # past the model's 8,192 positions


def test_kv_cache_stays_within_its_byte_bound() -> None:
    def chunk(tokens: int) -> ChunkKV:
        return ChunkKV(tokens=torch.zeros(tokens, dtype=torch.long), kv=torch.zeros(2, 2, 1, tokens, 4))

    size = chunk(10).nbytes
    cache = ChunkKVCache(max_bytes=3 * size)
    for key in range(5):
        cache.put(key, chunk(10))
        assert cache.nbytes <= 3 * size
    assert cache.get(0) is None and cache.get(1) is None
    assert cache.get(2) is not None  # 2 is now the most recent
    cache.put(5, chunk(10))
    assert cache.get(3) is None and cache.get(2) is not None
    cache.put(6, chunk(100))  # larger than the whole bound: not kept, nothing evicted
    assert cache.get(6) is None and len(cache) == 3


def test_packed_chunks_blend_as_their_decoded_kv(setup) -> None:
    """Quantised KV placed straight from its packed form (fused dequantise + RoPE) equals decode-then-rotate."""
    blender, chunks, question, _ = setup
    blobs = [encode(c.kv, "kivi4") for c in chunks]
    packed = [ChunkKV(c.tokens, decode_packed(b)) for c, b in zip(chunks, blobs)]
    dense = [ChunkKV(c.tokens, decode(b).float()) for c, b in zip(chunks, blobs)]
    assert sum(c.nbytes for c in packed) * 4 < sum(c.nbytes for c in dense)
    got, expected = blender.blend_prefill(packed, question), blender.blend_prefill(dense, question)
    torch.testing.assert_close(got.logits, expected.logits, atol=1e-2, rtol=0)
    assert got.recomputed == expected.recomputed


def test_chunks_prefilled_together_equal_each_in_a_full_forward(models) -> None:
    """Right padding to the longest chunk changes nothing for any chunk's real tokens: each chunk's
    keys (rotated to their place) and values are those of a plain forward over prefix and chunk."""
    forward = models.llm.forward
    system = random_ids(12, seed=30)
    blender = Blender(forward, system)
    chunks = [random_ids(n, seed=n) for n in (7, 64, 33)]
    together = run_steps(blender.prefill_chunks_steps(chunks))
    for chunk, got in zip(chunks, together):
        kv = forward.new_buffer(12 + len(chunk))
        forward.forward(torch.cat([system, chunk]), kv)
        cos, sin = forward.rope(torch.arange(12, 12 + len(chunk)))
        assert torch.equal(got.tokens, chunk)
        torch.testing.assert_close(rotate(got.kv[:, 0], cos, sin), kv.keys[:, :, 12:], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got.kv[:, 1], kv.values[:, :, 12:], atol=1e-4, rtol=1e-4)
