"""Quantised KV kept in its packed form: what a worker holds in memory and dequantises on use.

A `PackedKV` is a quantised blob's payload parsed but not expanded: bit-packed codes with a
float16 scale and minimum per group, about a quarter (4-bit) or an eighth (2-bit) of fp16's
bytes. It moves to a device as is; `keys_at` dequantises the keys straight to their RoPE
positions (one fused Triton kernel on CUDA for per-channel keys), `values` and `dense` expand.
"""

from dataclasses import dataclass, replace

import torch

from kernels.packing import unpack
from kernels.rope import cos_sin, rotate
from kernels.rope_dequant import dequant_rope
from kvcodec.quant import dequantize


@dataclass(frozen=True, slots=True)
class PackedGroups:
    """Codes [L, H, rows, D * bits / 8] with scale and minimum per group of `group` tokens or channels."""

    codes: torch.Tensor  # uint8; rows = tokens padded to whole groups when per_channel
    scale: torch.Tensor  # float16 [L, H, rows / group, 1, D] per channel, [L, H, T, D / group, 1] per token
    low: torch.Tensor
    bits: int
    group: int
    per_channel: bool  # groups run along tokens (one scale per channel) or along channels (per token)

    @property
    def nbytes(self) -> int:
        return sum(t.nelement() * t.element_size() for t in (self.codes, self.scale, self.low))

    def to(self, device: torch.device | str) -> "PackedGroups":
        return replace(self, codes=self.codes.to(device), scale=self.scale.to(device), low=self.low.to(device))

    def dequantize(self, tokens: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """[L, H, tokens, D] in `dtype`."""
        codes = unpack(self.codes, self.bits)
        layers, heads, rows, dim = codes.shape
        if self.per_channel:
            grouped = codes.reshape(layers, heads, rows // self.group, self.group, dim)
        else:
            grouped = codes.reshape(layers, heads, rows, dim // self.group, self.group)
        return dequantize(grouped, self.scale, self.low, dtype).reshape(layers, heads, rows, dim)[:, :, :tokens]


@dataclass(frozen=True, slots=True)
class PackedKV:
    """One chunk's quantised KV: keys before RoPE, as the codecs store them."""

    keys: PackedGroups
    values: PackedGroups
    tokens: int

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        layers, heads, _, width = self.values.codes.shape
        return (layers, 2, heads, self.tokens, width * 8 // self.values.bits)

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    def to(self, device: torch.device | str) -> "PackedKV":
        return PackedKV(self.keys.to(device), self.values.to(device), self.tokens)

    def keys_at(self, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
        """float32 keys [L, H, T, D] rotated to `positions` [T]."""
        if len(positions) != self.tokens:
            raise ValueError(f"positions: expected {self.tokens}, got {len(positions)}")
        k = self.keys
        positions, inv_freq = positions.to(k.codes.device), inv_freq.to(k.codes.device)
        if k.per_channel:
            return dequant_rope(k.codes, k.scale, k.low, positions, inv_freq, k.bits, k.group)
        return rotate(k.dequantize(self.tokens), *cos_sin(inv_freq, positions))

    def value_tensor(self) -> torch.Tensor:
        """float32 values [L, H, T, D]."""
        return self.values.dequantize(self.tokens)

    def dense(self) -> torch.Tensor:
        """float16 [L, 2, H, T, D], keys before RoPE."""
        return torch.stack([g.dequantize(self.tokens, torch.float16) for g in (self.keys, self.values)], dim=1)
