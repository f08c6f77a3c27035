"""RoPE rotation: rotating twice composes the angles."""

import torch

from kernels.rope import RopeConfig, cos_sin, inverse_frequencies, rotate


def test_rotation_composes_and_matches_positions() -> None:
    config = RopeConfig(head_dim=64, theta=100000.0)
    inv = inverse_frequencies(config)
    x = torch.randn(3, 5, 64)
    a, b = torch.arange(5), torch.arange(100, 105)
    cos_a, sin_a = cos_sin(inv, a)
    cos_b, sin_b = cos_sin(inv, b)
    cos_ab, sin_ab = cos_sin(inv, a + b)
    torch.testing.assert_close(rotate(rotate(x, cos_a, sin_a), cos_b, sin_b), rotate(x, cos_ab, sin_ab), atol=1e-4, rtol=1e-4)
