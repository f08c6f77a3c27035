"""Planar bit packing of quantisation codes, shared by the codecs and the kernels that unpack them.

With `per = 8 // bits` codes a byte and `n` codes a row, byte j holds the codes of columns
j, j + n/per, j + 2n/per, ... (low bits first). For 4-bit keys this puts channel d and channel
d + head_dim/2 in one byte: the two channels RoPE rotates together.
"""

import numpy as np
import torch


def pack(codes: torch.Tensor, bits: int) -> np.ndarray:
    """uint8 codes [..., n] -> bytes [..., n * bits / 8]."""
    per = 8 // bits
    n = codes.shape[-1]
    if n % per:
        raise ValueError(f"codes: last dimension {n} is not a multiple of {per}")
    planes = codes.reshape(*codes.shape[:-1], per, n // per).to(torch.uint8)
    packed = planes[..., 0, :].clone()
    for i in range(1, per):
        packed |= planes[..., i, :] << (bits * i)
    return packed.numpy()


def unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """The inverse of `pack`: bytes [..., m] -> codes [..., m * 8 / bits]."""
    if bits == 8:
        return packed
    per = 8 // bits
    mask = (1 << bits) - 1
    return torch.cat([(packed >> (bits * i)) & mask for i in range(per)], dim=-1)
