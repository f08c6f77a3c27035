"""The Triton kernel behind `kernels.rope_dequant.dequant_rope`; imported only where it runs.

One program handles BLOCK_T tokens of one (layer, head): it gathers each half of the head's
channels from the packed bytes, dequantises them with their group's scale and minimum, and
writes them rotated to the token's target position.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _dequant_rope_kernel(
    packed_ptr, scale_ptr, low_ptr, pos_ptr, inv_ptr, out_ptr,
    tokens, padded, groups,
    BITS: tl.constexpr, DIM: tl.constexpr, GROUP: tl.constexpr, BLOCK_T: tl.constexpr,
):
    row = tl.program_id(0)  # layer * heads + head
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    live = t < tokens
    half = tl.arange(0, DIM // 2)
    width = DIM * BITS // 8  # bytes per token
    mask_bits = (1 << BITS) - 1
    first, second = half, half + DIM // 2
    base = packed_ptr + row * padded * width + t[:, None] * width
    code1 = (tl.load(base + (first % width)[None, :], mask=live[:, None], other=0).to(tl.int32) >> (BITS * (first // width))[None, :]) & mask_bits
    code2 = (tl.load(base + (second % width)[None, :], mask=live[:, None], other=0).to(tl.int32) >> (BITS * (second // width))[None, :]) & mask_bits
    group_base = row * groups * DIM + (t // GROUP)[:, None] * DIM
    x1 = code1.to(tl.float32) * tl.load(scale_ptr + group_base + first[None, :], mask=live[:, None], other=0).to(tl.float32)
    x1 += tl.load(low_ptr + group_base + first[None, :], mask=live[:, None], other=0).to(tl.float32)
    x2 = code2.to(tl.float32) * tl.load(scale_ptr + group_base + second[None, :], mask=live[:, None], other=0).to(tl.float32)
    x2 += tl.load(low_ptr + group_base + second[None, :], mask=live[:, None], other=0).to(tl.float32)
    angle = tl.load(pos_ptr + t, mask=live, other=0).to(tl.float32)[:, None] * tl.load(inv_ptr + half)[None, :]
    cos, sin = tl.cos(angle), tl.sin(angle)
    out = out_ptr + row * tokens * DIM + t[:, None] * DIM
    tl.store(out + first[None, :], x1 * cos - x2 * sin, mask=live[:, None])
    tl.store(out + second[None, :], x2 * cos + x1 * sin, mask=live[:, None])


def dequant_rope_triton(packed, scale, low, positions, inv_freq, bits: int, group: int) -> torch.Tensor:
    layers, heads, padded, width = packed.shape
    dim = width * 8 // bits
    tokens = len(positions)
    out = torch.empty(layers, heads, tokens, dim, dtype=torch.float32, device=packed.device)
    block = 32
    grid = (layers * heads, triton.cdiv(tokens, block))
    _dequant_rope_kernel[grid](
        packed.contiguous(), scale.contiguous(), low.contiguous(), positions.contiguous(), inv_freq.float().contiguous(), out,
        tokens, padded, padded // group,
        BITS=bits, DIM=dim, GROUP=group, BLOCK_T=block,
    )
    return out
