"""Rotation to RoPE positions (halves convention, as HF Llama): the one implementation the model,
the kernels' torch references and packed KV all use.

Keys are stored before RoPE, so placing a cached key at position p is `rotate(key, *cos_sin(inv, p))`:
RoPE is a per-position rotation of channel pairs, and rotating twice composes the angles.
"""

import torch


def cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [n, head_dim] for integer positions [n]."""
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., n, head_dim] rotated by the angles of its n positions (halves convention, as HF Llama)."""
    half = x.shape[-1] // 2
    rotated_half = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.to(x.dtype) + rotated_half * sin.to(x.dtype)
