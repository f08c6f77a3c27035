"""Chunk KV precompute and CacheBlend-style blended prefill.

A `Blender` is bound to one system prefix (the start every prompt shares). Its KV is computed
once. A chunk's KV is computed right after that prefix, alone: its first tokens then see the same
prefix (and attention sink) they will see at question time, which keeps the cache close to what
a full prefill would produce. Only the chunk's own tokens are kept, keys before RoPE, so the
chunk can be placed at any position later.

`blend_prefill` lays out `[prefix][chunk 1]...[chunk k][question]`, rotates each chunk's cached
keys to its final positions, computes every new token fully for the layers before `check_layer`,
and at `check_layer` compares each chunk token's fresh KV with its cache. The `recompute_ratio`
of chunk tokens that deviate most, plus the question, run through the remaining layers; every
other chunk token keeps its cached KV from there on.

By default a token's key deviation is weighted by the most attention any question token pays it
at the check layer: a stale token the question does not look at cannot move the answer. On
MuSiQue (bench/kv.py) this more than halves the first-token KL that plain key or value deviation
leaves.
"""

import enum
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels.deviation import top_deviations
from kernels.rope import rotate
from kvcodec import PackedKV
from worker.errors import WorkerInputError, check_positions
from worker.llama import KVBuffer, LlamaForward, Steps, run_steps


class PrefillMode(enum.Enum):
    FULL_PREFILL = "full_prefill"  # every token from its ids: the reference
    FULL_REUSE = "full_reuse"  # cached chunk KV as is, only the question computed
    BLEND = "blend"  # selective recompute


class Deviation(enum.Enum):
    VALUE = "value"  # CacheBlend's choice
    KEY = "key"  # LMCache's choice
    KEY_BY_ATTENTION = "key_attention"  # key deviation times the most attention a question token pays the chunk token


@dataclass(frozen=True, slots=True)
class ChunkKV:
    """One chunk's KV computed on its own: [layers, 2, kv_heads, tokens, head_dim], keys before RoPE.

    `kv` is a float tensor, or a quantised blob's `PackedKV` that expands only when placed.
    """

    tokens: torch.Tensor  # int64 [tokens]
    kv: torch.Tensor | PackedKV

    @property
    def nbytes(self) -> int:
        kv_bytes = self.kv.nbytes if isinstance(self.kv, PackedKV) else self.kv.nelement() * self.kv.element_size()
        return kv_bytes + self.tokens.nelement() * 8


@dataclass(frozen=True, slots=True)
class Prefill:
    logits: torch.Tensor  # [vocab], for the token after the prompt
    kv: KVBuffer  # the whole prompt's KV, ready for decoding
    recomputed: int  # chunk tokens recomputed past the check layer


class Blender:
    def __init__(self, forward: LlamaForward, system: torch.Tensor) -> None:
        self.forward = forward
        self.system = forward.check_tokens(system, "system")
        if len(self.system) == 0:
            raise ValueError("system: the shared prefix must have at least one token")
        self._prefix = forward.prefix_kv(self.system)

    def _buffer_with_prefix(self, capacity: int) -> KVBuffer:
        kv = self.forward.new_buffer(capacity)
        p = len(self.system)
        kv.keys[:, :, :p] = self._prefix.keys[:, :, :p]
        kv.values[:, :, :p] = self._prefix.values[:, :, :p]
        kv.length = p
        return kv

    def prefill_chunk(self, tokens: torch.Tensor) -> ChunkKV:
        """The chunk's KV, computed after the system prefix, keys kept before RoPE."""
        return run_steps(self.prefill_chunks_steps([tokens]))[0]

    @torch.inference_mode()
    def prefill_chunks_steps(self, chunks: list[torch.Tensor]) -> Steps[list[ChunkKV]]:
        """`prefill_chunk` for several chunks in one pass, one layer a step.

        The chunks are right-padded to the longest: a padding token comes after every real one, so
        causal attention keeps it out of the real tokens' results, which equal each chunk's alone.
        """
        f = self.forward
        chunks = [f.check_tokens(tokens) for tokens in chunks]
        if not chunks or any(len(tokens) == 0 for tokens in chunks):
            raise ValueError("tokens: a chunk needs at least one token")
        p, n, longest = len(self.system), len(chunks), max(len(tokens) for tokens in chunks)
        ids = torch.zeros(n, longest, dtype=torch.long, device=f.device)
        for i, tokens in enumerate(chunks):
            ids[i, : len(tokens)] = tokens
        cos, sin = f.rope(torch.arange(p, p + longest, device=f.device))
        # each chunk token sees the whole prefix, then its own chunk causally
        mask = torch.arange(p + longest, device=f.device)[None, :] <= torch.arange(p, p + longest, device=f.device)[:, None]
        out = torch.empty(f.layers_count, 2, n, f.kv_heads, longest, f.head_dim, dtype=f.dtype, device=f.device)
        h = f.embed[ids.flatten()]
        for layer in range(f.layers_count):
            q, k, v = f.qkv(layer, h)  # [heads, n * longest, d]
            q, k, v = (x.unflatten(1, (n, longest)).transpose(0, 1) for x in (q, k, v))  # [n, heads, longest, d]
            out[layer, 0], out[layer, 1] = k, v
            keys = torch.cat([self._prefix.keys[layer, :, :p].expand(n, -1, -1, -1), rotate(k, cos, sin)], dim=2)
            values = torch.cat([self._prefix.values[layer, :, :p].expand(n, -1, -1, -1), v], dim=2)
            attended = F.scaled_dot_product_attention(rotate(q, cos, sin), keys, values, attn_mask=mask, enable_gqa=True)
            h = f.finish(layer, h, attended.transpose(0, 1).flatten(1, 2))
            yield n * longest
        return [ChunkKV(tokens=tokens, kv=out[:, :, i, :, : len(tokens)].clone()) for i, tokens in enumerate(chunks)]

    def blend_prefill(self, chunks: list[ChunkKV], question: torch.Tensor, **options) -> Prefill:
        """`blend_prefill_steps` run to its end."""
        return run_steps(self.blend_prefill_steps(chunks, question, **options))

    @torch.inference_mode()
    def blend_prefill_steps(
        self,
        chunks: list[ChunkKV],
        question: torch.Tensor,
        recompute_ratio: float = 0.15,
        check_layer: int = 1,
        mode: PrefillMode = PrefillMode.BLEND,
        deviation: Deviation = Deviation.KEY_BY_ATTENTION,
    ) -> Steps[Prefill]:
        """Prefill `[prefix][chunks][question]` reusing the chunks' KV, one layer a step; the KV
        buffer holds the prompt exactly (decoding copies it into its `DecodeBatch`, or grows it).

        FULL_PREFILL reads only the chunks' tokens, never their KV: it is the reference.
        """
        f = self.forward
        question = f.check_tokens(question, "question")
        if len(question) == 0:
            raise WorkerInputError("question: needs at least one token")
        if not 0.0 <= recompute_ratio <= 1.0:
            raise ValueError(f"recompute_ratio: must lie in [0, 1], got {recompute_ratio}")
        if not 0 <= check_layer < f.layers_count:
            raise ValueError(f"check_layer: must lie in [0, {f.layers_count}), got {check_layer}")
        p = len(self.system)
        chunk_count = sum(len(c.tokens) for c in chunks)
        total = p + chunk_count + len(question)
        check_positions(total, f.max_positions)
        ids = torch.cat([*(c.tokens.to(f.device) for c in chunks), question])
        if mode is PrefillMode.FULL_PREFILL:  # every token from position 0: the plain forward pass
            kv = f.new_buffer(total)
            logits = (yield from f.forward_steps(torch.cat([self.system, ids]), kv))[-1]
            return Prefill(logits=logits, kv=kv, recomputed=chunk_count)
        for i, chunk in enumerate(chunks):
            expected = (f.layers_count, 2, f.kv_heads, len(chunk.tokens), f.head_dim)
            if tuple(chunk.kv.shape) != expected:
                raise ValueError(f"chunks[{i}]: KV shape {tuple(chunk.kv.shape)} does not match {expected}")
        kv = self._buffer_with_prefix(total)
        self._place_chunks(chunks, kv)
        kv.length = total
        positions = torch.arange(p, total, device=f.device)
        question_rows = torch.arange(chunk_count, len(ids), device=f.device)
        h = f.embed[ids]
        if mode is PrefillMode.FULL_REUSE or chunk_count == 0:
            h, positions, kept = h[question_rows], positions[question_rows], 0
            for layer in range(f.layers_count):
                h = f.layer(layer, h, positions, kv)
                yield len(h)
        else:
            for layer in range(check_layer):
                h = f.layer(layer, h, positions, kv)
                yield len(h)
            rows = len(h)
            h, positions, kept = self._check_and_select(h, positions, kv, check_layer, chunk_count, recompute_ratio, deviation)
            yield rows
            for layer in range(check_layer + 1, f.layers_count):
                h = f.layer(layer, h, positions, kv)
                yield len(h)
        return Prefill(logits=f.logits(h[-1:])[0], kv=kv, recomputed=kept)

    def _place_chunks(self, chunks: list[ChunkKV], kv: KVBuffer) -> None:
        """Copy each chunk's cached KV into the buffer, keys rotated to the chunk's final positions."""
        start = kv.length
        f = self.forward
        for chunk in chunks:
            end = start + len(chunk.tokens)
            positions = torch.arange(start, end, device=f.device)
            if isinstance(chunk.kv, PackedKV):  # dequantised straight to the final positions: one fused kernel on CUDA
                kv.keys[:, :, start:end] = chunk.kv.keys_at(positions, f.inv_freq).to(f.dtype)
                kv.values[:, :, start:end] = chunk.kv.value_tensor().to(f.dtype)
            else:
                cos, sin = f.rope(positions)
                kv.keys[:, :, start:end] = rotate(chunk.kv[:, 0].to(f.device, f.dtype), cos, sin)
                kv.values[:, :, start:end] = chunk.kv[:, 1].to(f.device, f.dtype)
            start = end

    def _check_and_select(self, h, positions, kv: KVBuffer, layer: int, chunk_count: int, ratio: float, deviation: Deviation):
        """At the check layer: fresh KV for every token, then only the most deviating chunk tokens and the question go on."""
        f = self.forward
        q, k, v = f.qkv(layer, h)
        cos, sin = f.rope(positions)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        chunk_positions = positions[:chunk_count]
        if deviation is Deviation.VALUE:
            fresh, cached = v[:, :chunk_count], kv.values[layer][:, chunk_positions]
        else:
            fresh, cached = k[:, :chunk_count], kv.keys[layer][:, chunk_positions]
        kv.keys[layer, :, positions] = k
        kv.values[layer, :, positions] = v
        weights = None
        if deviation is Deviation.KEY_BY_ATTENTION:
            attention = f.attention_weights(layer, q[:, chunk_count:], positions[chunk_count:], kv)
            weights = attention[:, :, chunk_positions].amax(dim=(0, 1))
        selected = top_deviations(fresh, cached, math.ceil(ratio * chunk_count), weights)
        rows = torch.cat([selected, torch.arange(chunk_count, len(positions), device=f.device)])
        h = f.attend(layer, h[rows], q[:, rows], positions[rows], kv)
        return h, positions[rows], len(selected)
