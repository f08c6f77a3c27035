"""Our own forward pass against transformers', and RoPE placement of pre-RoPE keys."""

import pytest
import torch

from worker.blend import Blender
from worker.rope import RopeConfig, cos_sin, inverse_frequencies, rotate

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


def test_rotation_composes_and_matches_positions() -> None:
    config = RopeConfig(head_dim=64, theta=100000.0)
    inv = inverse_frequencies(config)
    x = torch.randn(3, 5, 64)
    a, b = torch.arange(5), torch.arange(100, 105)
    cos_a, sin_a = cos_sin(inv, a)
    cos_b, sin_b = cos_sin(inv, b)
    cos_ab, sin_ab = cos_sin(inv, a + b)
    torch.testing.assert_close(rotate(rotate(x, cos_a, sin_a), cos_b, sin_b), rotate(x, cos_ab, sin_ab), atol=1e-4, rtol=1e-4)


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
