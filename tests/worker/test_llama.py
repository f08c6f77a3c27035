"""Our own forward pass against transformers', and RoPE placement of pre-RoPE keys."""

import pytest
import torch

from worker.blend import Blender
from kernels.rope import RopeConfig, inverse_frequencies, rotate

# float32 on the CPU: logits of magnitude ~30 agree to ~1e-4; allow 1e-3.
LOGIT_TOLERANCE = 1e-3


def random_ids(n: int, seed: int, vocab: int = 49152) -> torch.Tensor:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))


def test_logits_match_transformers(models) -> None:
    llm = models.llm
    ids = random_ids(150, seed=1)
    with torch.inference_mode():
        expected = llm.model(ids[None]).logits[0]
    kv = llm.forward.new_buffer(150)
    mine = torch.cat([llm.forward.forward(ids[:100], kv), llm.forward.forward(ids[100:], kv)])
    assert kv.length == 150
    torch.testing.assert_close(mine, expected, atol=LOGIT_TOLERANCE, rtol=0)


def test_pre_rope_keys_rotated_to_p_equal_keys_computed_at_p(models) -> None:
    """A chunk's stored keys, rotated to where the chunk sits, are the keys a full forward computes there."""
    forward = models.llm.forward
    system, chunk = random_ids(12, seed=2), random_ids(40, seed=3)
    stored = Blender(forward, system).prefill_chunk(chunk)
    kv = forward.new_buffer(52)
    forward.forward(torch.cat([system, chunk]), kv)
    cos, sin = forward.rope(torch.arange(12, 52))
    torch.testing.assert_close(rotate(stored.kv[:, 0], cos, sin), kv.keys[:, :, 12:52], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(stored.kv[:, 1], kv.values[:, :, 12:52], atol=1e-4, rtol=1e-4)


def test_attention_weights_are_what_attention_mixes_values_by(models) -> None:
    """Weights times values equals scaled_dot_product_attention's output, causal mask included."""
    forward = models.llm.forward
    kv = forward.new_buffer(30)
    forward.forward(random_ids(30, seed=4), kv)
    positions = torch.tensor([5, 17, 29])
    q = torch.randn(forward.heads, 3, forward.head_dim, generator=torch.Generator().manual_seed(5))
    weights = forward.attention_weights(2, q, positions, kv)
    assert weights.shape == (forward.heads, 3, 30)
    assert float(weights[:, 0, 6:].abs().max()) == 0.0
    torch.testing.assert_close(weights.sum(-1), torch.ones(forward.heads, 3))
    values = kv.values[2].repeat_interleave(forward.heads // forward.kv_heads, dim=0)
    mask = torch.arange(30)[None, :] <= positions[:, None]
    expected = torch.nn.functional.scaled_dot_product_attention(q[None], kv.keys[2][None], kv.values[2][None], attn_mask=mask[None, None], enable_gqa=True)[0]
    torch.testing.assert_close(weights @ values, expected, atol=1e-5, rtol=1e-4)


def test_llama3_scaling_keeps_high_frequencies() -> None:
    plain = inverse_frequencies(RopeConfig(head_dim=128, theta=500000.0))
    scaled = inverse_frequencies(RopeConfig(head_dim=128, theta=500000.0, rope_type="llama3", factor=8.0))
    assert torch.equal(plain[:8], scaled[:8])
    torch.testing.assert_close(scaled[-1], plain[-1] / 8.0)


def test_token_ids_out_of_range_are_rejected(models) -> None:
    forward = models.llm.forward
    with pytest.raises(ValueError, match="ids"):
        forward.forward(torch.tensor([0, forward.vocab_size]), forward.new_buffer(2))
    with pytest.raises(ValueError, match="ids"):
        forward.forward(torch.tensor([[1, 2]]), forward.new_buffer(2))
    with pytest.raises(ValueError, match="rope_type"):
        RopeConfig.from_hf(type("C", (), {"rope_parameters": {"rope_type": "yarn"}, "head_dim": 64})())


GPU = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))


def tiny_random_llama(device: str):
    """A 3-layer Llama with random weights: the same code paths as SmolLM2, on any device, in a second."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024,
    )
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    return LlamaForCausalLM(config).eval().to(device, dtype)


@pytest.mark.parametrize("device", ["cpu", GPU])
def test_tiny_llama_forward_and_blend_on_each_device(device: str) -> None:
    """float32 on the CPU, bf16 on a GPU: logits match transformers', blending at ratio 1 matches full prefill."""
    from kvcodec import decode_packed, encode
    from worker.blend import ChunkKV, PrefillMode
    from worker.llama import LlamaForward

    model = tiny_random_llama(device)
    forward = LlamaForward(model)
    tolerance = 0.05 if device == "cuda" else LOGIT_TOLERANCE  # bf16 keeps 8 bits of mantissa
    ids = random_ids(80, seed=5, vocab=512)
    with torch.inference_mode():
        expected = model(ids[None].to(device)).logits[0].float()
    kv = forward.new_buffer(80)
    mine = torch.cat([forward.forward(ids[:50], kv), forward.forward(ids[50:], kv)]).float()
    assert mine.device.type == device
    torch.testing.assert_close(mine, expected, atol=tolerance, rtol=0)
    batch = forward.new_decode_batch()
    batch.add(kv, room=1)
    token = ids[-1:].to(device)
    torch.testing.assert_close(forward.decode(token, batch).float(), forward.forward(token, kv).float(), atol=tolerance, rtol=0)

    blender = Blender(forward, random_ids(8, seed=6, vocab=512))
    chunks = [blender.prefill_chunk(random_ids(n, seed=n, vocab=512)) for n in (20, 33)]
    question = random_ids(6, seed=7, vocab=512)
    full = blender.blend_prefill(chunks, question, mode=PrefillMode.FULL_PREFILL).logits.float()
    torch.testing.assert_close(blender.blend_prefill(chunks, question, recompute_ratio=1.0).logits.float(), full, atol=tolerance, rtol=0)
    packed = [ChunkKV(c.tokens, decode_packed(encode(c.kv, "kivi4")).to(device)) for c in chunks]
    blended = blender.blend_prefill(packed, question, recompute_ratio=1.0).logits.float()
    torch.testing.assert_close(blended, full, atol=tolerance, rtol=0)


def test_batched_decode_equals_each_sequence_alone(models) -> None:
    """One decode step over sequences of mixed lengths gives each the logits it gets alone (float32,
    1e-4), also after a slot is freed mid-decode and the last sequence moves into it."""
    forward = models.llm.forward
    lengths = [3, 211, 40, 517]
    batch, alone = forward.new_decode_batch(), []
    for seed, n in enumerate(lengths):
        kv = forward.new_buffer(n)
        forward.forward(random_ids(n, seed=10 + seed), kv)
        assert batch.add(kv, room=0) == seed  # no room on purpose: decode grows the batch
        alone.append(kv)
    tokens = random_ids(len(lengths), seed=20)
    for step in range(4):
        if step == 2:  # the second sequence ends: the last takes its slot
            batch.remove(1)
            alone[1] = alone.pop()
            tokens = torch.cat([tokens[:1], tokens[3:], tokens[2:3]])
        got = forward.decode(tokens, batch)
        expected = torch.cat([forward.forward(tokens[i : i + 1], kv) for i, kv in enumerate(alone)])
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
        tokens = got.argmax(-1)
    assert batch.lengths == [kv.length for kv in alone] == [3 + 4, 517 + 4, 40 + 4]
    with pytest.raises(ValueError, match="ids"):
        forward.decode(tokens[:2], batch)
    for slot in (2, 0, 0):
        batch.remove(slot)
    assert len(batch) == 0 and batch.keys.numel() == 0


def test_a_prompt_prefix_kv_is_computed_once_per_model_and_equals_a_fresh_one(models) -> None:
    forward = models.llm.forward
    ids = random_ids(40, seed=9)
    shared = forward.prefix_kv(ids)
    assert forward.prefix_kv(ids.clone()) is shared and forward.prefix_kv(ids[:39]) is not shared
    fresh = forward.new_buffer(40)
    forward.forward(ids, fresh)
    assert shared.length == 40
    torch.testing.assert_close(shared.keys, fresh.keys, atol=0, rtol=0)
    torch.testing.assert_close(shared.values, fresh.values, atol=0, rtol=0)
