"""RoPE (halves convention, as HF Llama): inverse frequencies from a model's settings, and the
rotation to positions. The one implementation the model, the kernels' torch references and packed
KV all use.

Keys are stored before RoPE, so placing a cached key at position p is `rotate(key, *cos_sin(inv, p))`:
RoPE is a per-position rotation of channel pairs, and rotating twice composes the angles.
"""

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class RopeConfig:
    head_dim: int
    theta: float
    rope_type: str = "default"  # "default", "linear" or "llama3"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_positions: int = 8192

    @classmethod
    def from_hf(cls, config) -> "RopeConfig":
        """From a transformers model config (read by attribute name: nothing of transformers is imported)."""
        params = dict(getattr(config, "rope_parameters", None) or {})
        scaling = getattr(config, "rope_scaling", None) or {}
        params = {**scaling, **params}
        theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        rope_type = params.get("rope_type", params.get("type", "default"))
        if rope_type not in ("default", "linear", "llama3"):
            raise ValueError(f"rope_type: {rope_type!r} is not supported (default, linear, llama3)")
        return cls(
            head_dim=head_dim,
            theta=float(theta),
            rope_type=rope_type,
            factor=float(params.get("factor", 1.0)),
            low_freq_factor=float(params.get("low_freq_factor", 1.0)),
            high_freq_factor=float(params.get("high_freq_factor", 4.0)),
            original_max_positions=int(params.get("original_max_position_embeddings", 8192)),
        )


def inverse_frequencies(config: RopeConfig) -> torch.Tensor:
    """float32 [head_dim / 2], with linear or Llama-3 scaling applied."""
    inv = 1.0 / (config.theta ** (torch.arange(0, config.head_dim, 2, dtype=torch.float64) / config.head_dim))
    if config.rope_type == "linear":
        inv = inv / config.factor
    elif config.rope_type == "llama3":
        wavelength = 2 * math.pi / inv
        low_wavelength = config.original_max_positions / config.low_freq_factor
        high_wavelength = config.original_max_positions / config.high_freq_factor
        scaled = torch.where(wavelength > low_wavelength, inv / config.factor, inv)
        smooth = (config.original_max_positions / wavelength - config.low_freq_factor) / (
            config.high_freq_factor - config.low_freq_factor
        )
        blended = (1 - smooth) * scaled / config.factor + smooth * scaled
        medium = (wavelength >= high_wavelength) & (wavelength <= low_wavelength)
        inv = torch.where(medium, blended, scaled)
    return inv.to(torch.float32)


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
