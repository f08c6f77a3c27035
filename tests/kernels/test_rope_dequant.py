"""The fused dequantise + RoPE kernel (Triton: compiled on a GPU, interpreted elsewhere) against its torch twin and the codec."""

import pytest
import torch

from kernels.packing import pack, unpack
from kernels.rope import RopeConfig, cos_sin, inverse_frequencies, rotate
from kernels.rope_dequant import dequant_rope, dequant_rope_reference
from kernels.triton_rope_dequant import dequant_rope_triton
from kvcodec.quantized import QuantSpec, _pad_tokens

INV = inverse_frequencies(RopeConfig(head_dim=64, theta=100000.0))


def quantized_keys(layers: int, heads: int, tokens: int, bits: int, seed: int = 0):
    keys = torch.randn(layers, heads, tokens, 64, generator=torch.Generator().manual_seed(seed))
    spec = QuantSpec(key_bits=bits, value_bits=bits, group=32)
    packed, scale, low = (torch.from_numpy(a) for a in spec._keys(_pad_tokens(keys, 32)))
    return keys, packed, scale, low


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("tokens", [1, 31, 32, 33, 70])
def test_kernel_equals_reference(bits: int, tokens: int, device: torch.device) -> None:
    _, packed, scale, low = quantized_keys(2, 3, tokens, bits, seed=tokens)
    positions = torch.arange(500, 500 + tokens)
    expected = dequant_rope_reference(packed, scale, low, positions, INV, bits, 32)
    on = [t.to(device) for t in (packed, scale, low, positions, INV)]
    got = dequant_rope_triton(*on, bits, 32)
    torch.testing.assert_close(got.cpu(), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(dequant_rope(*on, bits, 32).cpu(), expected, atol=1e-4, rtol=1e-4)


def test_reference_is_dequantise_then_rotate() -> None:
    keys, packed, scale, low = quantized_keys(1, 2, 40, 4)
    positions = torch.tensor([0, 7, 7, 1000] + list(range(36)))
    got = dequant_rope(packed, scale, low, positions, INV, 4, 32)
    cos, sin = cos_sin(INV, positions)
    expected = rotate(keys, cos, sin)
    assert ((got - expected).norm() / expected.norm()) < 0.10  # 4-bit min/max over 32 Gaussian samples: ~7%


def test_packing_round_trips_and_pairs_rope_halves() -> None:
    codes = torch.randint(0, 16, (3, 64), dtype=torch.uint8)
    packed = torch.from_numpy(pack(codes, 4))
    assert torch.equal(unpack(packed, 4), codes)
    assert torch.equal(packed[:, 5] & 0xF, codes[:, 5]) and torch.equal(packed[:, 5] >> 4, codes[:, 37])


def test_bad_shapes_are_rejected() -> None:
    _, packed, scale, low = quantized_keys(1, 1, 32, 4)
    with pytest.raises(ValueError, match="bits"):
        dequant_rope(packed, scale, low, torch.arange(32), INV, 3, 32)
    with pytest.raises(ValueError, match="scale"):
        dequant_rope(packed, scale[:, :, :, :, :8], low, torch.arange(32), INV, 4, 32)
    with pytest.raises(ValueError, match="packed"):
        dequant_rope(packed, scale, low, torch.arange(40), INV, 4, 32)
    with pytest.raises(ValueError, match="inv_freq"):
        dequant_rope(packed, scale, low, torch.arange(32), INV[:4], 4, 32)
