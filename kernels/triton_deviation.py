"""The Triton kernel behind `kernels.deviation.token_deviation`; imported only where it runs."""

import torch
import triton
import triton.language as tl


@triton.jit
def _deviation_kernel(fresh_ptr, cached_ptr, out_ptr, heads, tokens, DIM: tl.constexpr, BLOCK_T: tl.constexpr):
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    live = t < tokens
    d = tl.arange(0, DIM)
    total = tl.zeros([BLOCK_T], dtype=tl.float32)
    for h in range(heads):
        offsets = h * tokens * DIM + t[:, None] * DIM + d[None, :]
        a = tl.load(fresh_ptr + offsets, mask=live[:, None], other=0).to(tl.float32)
        b = tl.load(cached_ptr + offsets, mask=live[:, None], other=0).to(tl.float32)
        diff = a - b
        total += tl.sum(diff * diff, axis=1)
    tl.store(out_ptr + t, total, mask=live)


def token_deviation_triton(fresh: torch.Tensor, cached: torch.Tensor) -> torch.Tensor:
    heads, tokens, dim = fresh.shape
    if dim & (dim - 1):
        raise ValueError(f"fresh: head dim {dim} must be a power of two for the kernel")
    out = torch.empty(tokens, dtype=torch.float32, device=fresh.device)
    block = 64
    _deviation_kernel[(triton.cdiv(tokens, block),)](fresh.contiguous(), cached.contiguous(), out, heads, tokens, DIM=dim, BLOCK_T=block)
    return out
