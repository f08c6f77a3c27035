"""Fused dequantise + RoPE: per-channel quantised keys (KIVI layout) to float keys at target positions.

Input, for L layers and H kv heads: planar-packed codes [L, H, T_pad, D * bits / 8], scale and
minimum [L, H, T_pad / group, 1, D] (float16, one per channel per group of `group` tokens), the
T target positions, and RoPE's inverse frequencies [D / 2]. Output: float32 keys [L, H, T, D].
`dequant_rope` runs the Triton kernel on CUDA and the torch reference elsewhere.
"""

import torch

from kernels.packing import unpack
from kernels.rope import cos_sin, rotate


def dequant_rope_reference(
    packed: torch.Tensor, scale: torch.Tensor, low: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor, bits: int, group: int
) -> torch.Tensor:
    layers, heads, padded, _ = packed.shape
    tokens = len(positions)
    codes = unpack(packed, bits).float()
    dim = codes.shape[-1]
    keys = codes.reshape(layers, heads, padded // group, group, dim) * scale.float() + low.float()
    return rotate(keys.reshape(layers, heads, padded, dim)[:, :, :tokens], *cos_sin(inv_freq.float(), positions))


def dequant_rope(
    packed: torch.Tensor, scale: torch.Tensor, low: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor, bits: int, group: int
) -> torch.Tensor:
    _check(packed, scale, low, positions, inv_freq, bits, group)
    if packed.is_cuda:
        from kernels.triton_rope_dequant import dequant_rope_triton

        return dequant_rope_triton(packed, scale, low, positions, inv_freq, bits, group)
    return dequant_rope_reference(packed, scale, low, positions, inv_freq, bits, group)


def _check(packed, scale, low, positions, inv_freq, bits: int, group: int) -> None:
    if bits not in (2, 4, 8):
        raise ValueError(f"bits: 2, 4 or 8, got {bits}")
    if packed.dtype != torch.uint8 or packed.ndim != 4:
        raise ValueError(f"packed: expected uint8 [layers, heads, tokens, bytes], got {packed.dtype} {tuple(packed.shape)}")
    layers, heads, padded, width = packed.shape
    dim = width * 8 // bits
    if padded % group or len(positions) > padded:
        raise ValueError(f"packed: {padded} token rows must be whole groups of {group} covering {len(positions)} positions")
    expected = (layers, heads, padded // group, 1, dim)
    if tuple(scale.shape) != expected or tuple(low.shape) != expected:
        raise ValueError(f"scale: expected {expected}, got {tuple(scale.shape)} and {tuple(low.shape)}")
    if tuple(inv_freq.shape) != (dim // 2,):
        raise ValueError(f"inv_freq: expected [{dim // 2}], got {tuple(inv_freq.shape)}")
