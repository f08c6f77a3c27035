"""Asymmetric min/max quantisation in groups, shared by the quantised codecs (packing: `kernels.packing`)."""

import torch


def quantize(x: torch.Tensor, bits: int, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes (uint8), scale and minimum (float16) with the group spanning `dim` of `x`."""
    levels = (1 << bits) - 1
    low = x.amin(dim=dim, keepdim=True)
    high = x.amax(dim=dim, keepdim=True)
    scale = ((high - low) / levels).to(torch.float16)
    low16 = low.to(torch.float16)
    safe = torch.where(scale == 0, torch.ones_like(scale), scale).float()
    codes = torch.clamp(torch.round((x - low16.float()) / safe), 0, levels).to(torch.uint8)
    return codes, scale, low16


def dequantize(codes: torch.Tensor, scale: torch.Tensor, low: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return codes.to(dtype) * scale.to(dtype) + low.to(dtype)
