"""Blending's token selection: how far each token's fresh KV moved from its cache, and the top k.

`token_deviation` is the squared L2 distance per token over heads and channels of tensors
[heads, tokens, dim]; `top_deviations` returns the ascending indices of the `count` largest,
optionally after weighting each token (blending weights by the attention the question pays it).
On CUDA the distance runs in a Triton kernel (one pass over both tensors) and the top-k in
torch.topk; elsewhere both are torch.
"""

import torch


def token_deviation_reference(fresh: torch.Tensor, cached: torch.Tensor) -> torch.Tensor:
    return (fresh.float() - cached.float()).pow(2).sum(dim=(0, 2))


def token_deviation(fresh: torch.Tensor, cached: torch.Tensor) -> torch.Tensor:
    if fresh.shape != cached.shape or fresh.ndim != 3:
        raise ValueError(f"fresh, cached: expected equal [heads, tokens, dim] shapes, got {tuple(fresh.shape)} and {tuple(cached.shape)}")
    if fresh.is_cuda:
        from kernels.triton_deviation import token_deviation_triton

        return token_deviation_triton(fresh, cached)
    return token_deviation_reference(fresh, cached)


def top_deviations(fresh: torch.Tensor, cached: torch.Tensor, count: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Indices (ascending) of the `count` tokens whose KV moved most, each distance scaled by its
    entry in `weights` [tokens] when given."""
    if count <= 0:
        return torch.empty(0, dtype=torch.long, device=fresh.device)
    distance = token_deviation(fresh, cached)
    if weights is not None:
        distance = distance * weights
    return torch.topk(distance, min(count, len(distance))).indices.sort().values
