"""Our own forward pass for the Llama family (Llama, Mistral, Qwen2, SmolLM), over HF weights.

RMSNorm, rotary embedding with the model's theta and scaling, grouped-query attention through
`scaled_dot_product_attention`, SwiGLU MLP. The pass is split so that callers choose which tokens
run through which layers (`qkv`, then `attend`): blended prefill recomputes only some tokens.

Sequence KV lives in a `KVBuffer` whose slot i holds the token at position i, keys after RoPE.
A pass first sets the buffer's `length` to every position it will see, so attention never asks
the device how far the positions reach (a GPU sync per layer that leaves the GPU idle).

Passes are steppable (`forward_steps`): a generator that yields the rows it ran after each layer
and returns its result, so one scheduler loop can interleave a long prefill with other requests'
decode steps between layers. `decode` runs one token for many sequences at once, their KV
copied into one `DecodeBatch`; worker.decode_graphs runs the same layers (`decode_layers`) over
padded shapes that CUDA graphs can replay.
"""

import threading
from dataclasses import dataclass
from typing import Generator, TypeVar

import torch
import torch.nn.functional as F

from kernels.rope import RopeConfig, cos_sin, inverse_frequencies, rotate

T = TypeVar("T")
Steps = Generator[int, None, T]  # yields the rows each layer step ran; returns the pass's result


def run_steps(steps: Steps[T]) -> T:
    """Run a stepped pass to its end; its result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


class Linear:
    """`F.linear` with a fixed weight. On the CPU in float32 the weight is also reordered once into
    oneDNN's blocked layout: a decode step's few rows then cost about what one row costs, where
    the plain matmul repacks the weight on every call (2-3x one row's time at 8 rows here, 2x
    for the 49,152-row output head). The packed copy is extra memory: the model's size again."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        self.weight = weight
        self.bias = bias
        cpu_float = weight.device.type == "cpu" and weight.dtype == torch.float32
        self._packed = torch.ops.mkldnn._reorder_linear_weight(weight, None) if cpu_float and torch.backends.mkldnn.is_available() else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is None:
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [None], "")


@dataclass(frozen=True, slots=True)
class LayerWeights:
    input_norm: torch.Tensor
    q: Linear
    k: Linear
    v: Linear
    o: Linear
    post_norm: torch.Tensor
    gate: Linear
    up: Linear
    down: Linear


class KVBuffer:
    """Keys (after RoPE) and values of one sequence for every layer: [layers, kv_heads, capacity, head_dim]."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, capacity: int, dtype: torch.dtype, device: torch.device) -> None:
        self.keys = torch.zeros(layers, kv_heads, capacity, head_dim, dtype=dtype, device=device)
        self.values = torch.zeros_like(self.keys)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def reserve(self, capacity: int) -> None:
        if capacity > self.capacity:
            grow = capacity - self.capacity
            self.keys = F.pad(self.keys, (0, 0, 0, grow))
            self.values = F.pad(self.values, (0, 0, 0, grow))


GROWTH_TOKENS = 64
MIN_CAPACITY_BUCKET = 256


def capacity_bucket(tokens: int) -> int:
    """The power of two (at least MIN_CAPACITY_BUCKET) that holds `tokens`: the lengths a static decode
    step attends over, so that few shapes (and CUDA graphs) serve every length."""
    return max(MIN_CAPACITY_BUCKET, 1 << (tokens - 1).bit_length())


class DecodeBatch:
    """The KV of the sequences that decode together, one slot each of one tensor a side
    [layers, slots, kv_heads, capacity, head_dim], so that a decode step attends over every
    sequence in one call a layer (padded to the longest, masked) instead of one call a sequence:
    at 8 sequences of ~850 tokens here, 49 ms of attention a step against 64 ms, and none of
    the per-sequence slicing. The price: every slot has the capacity of the longest.

    With `fixed_slots` (the static decode step's batch, worker.decode_graphs), that many slots
    are allocated at once, the capacity grows to whole capacity buckets and the memory stays while
    no slot is used: the tensors move only when the capacity grows, a few times a run, so CUDA
    graphs that captured them stay valid in between. `generation` counts the moves."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device, fixed_slots: int = 0) -> None:
        self._shape = (layers, kv_heads, head_dim)
        self._dtype, self._device = dtype, device
        self.fixed_slots = fixed_slots
        self.generation = 0  # bumped whenever the tensors are allocated anew
        self.lengths: list[int] = []
        self._allocate(fixed_slots, 0)

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def capacity(self) -> int:
        return self.keys.shape[3]

    def add(self, kv: KVBuffer, room: int) -> int:
        """Copy the tokens of `kv` into a new last slot, with room for `room` more; that slot."""
        slot = len(self.lengths)
        self._reserve(slot + 1, kv.length + room)
        self.keys[:, slot, :, : kv.length] = kv.keys[:, :, : kv.length]
        self.values[:, slot, :, : kv.length] = kv.values[:, :, : kv.length]
        self.lengths.append(kv.length)
        return slot

    def remove(self, slot: int) -> None:
        """Free `slot`; the last slot's sequence moves into it (as a list's swap-remove); the memory
        goes once no slot is left, unless the slots are fixed."""
        last = len(self.lengths) - 1
        if slot != last:
            n = self.lengths[last]
            self.keys[:, slot, :, :n] = self.keys[:, last, :, :n]
            self.values[:, slot, :, :n] = self.values[:, last, :, :n]
            self.lengths[slot] = n
        self.lengths.pop()
        if not self.lengths and not self.fixed_slots:
            self._allocate(0, 0)

    def extend(self) -> None:
        """One more token in every slot (the decode step writes it)."""
        self.lengths = [n + 1 for n in self.lengths]
        self._reserve(len(self.lengths), max(self.lengths, default=0))

    def _reserve(self, slots: int, capacity: int) -> None:
        """Room for `slots` slots of `capacity` tokens; grown by whole steps (slots doubled, tokens
        to a multiple of GROWTH_TOKENS, or to a capacity bucket where the slots are fixed) so that
        growing one token a step does not copy every step."""
        if slots <= self.keys.shape[1] and capacity <= self.capacity:
            return
        keys, values, n = self.keys, self.values, len(self.lengths)
        if self.fixed_slots:
            if slots > self.fixed_slots:
                raise ValueError(f"slots: {slots} sequences exceed the batch's {self.fixed_slots} fixed slots")
            self._allocate(self.fixed_slots, capacity_bucket(max(capacity, self.capacity)))
        else:
            tokens = -(-max(capacity, self.capacity) // GROWTH_TOKENS) * GROWTH_TOKENS
            self._allocate(max(slots, 2 * keys.shape[1]), tokens)
        self.keys[:, :n, :, : keys.shape[3]] = keys[:, :n]
        self.values[:, :n, :, : values.shape[3]] = values[:, :n]

    def _allocate(self, slots: int, capacity: int) -> None:
        layers, kv_heads, head_dim = self._shape
        shape = (layers, slots, kv_heads, capacity, head_dim)
        self.keys = torch.zeros(shape, dtype=self._dtype, device=self._device)
        self.values = torch.zeros(shape, dtype=self._dtype, device=self._device)
        self.generation += 1


class LlamaForward:
    def __init__(self, model) -> None:
        """Takes the weights of a transformers Llama-family causal LM (not copied: shared tensors).

        Runs on the weights' device in their dtype; token ids and positions move there.
        """
        config = model.config
        self.layers_count: int = config.num_hidden_layers
        self.heads: int = config.num_attention_heads
        self.kv_heads: int = config.num_key_value_heads
        self.head_dim: int = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.eps: float = config.rms_norm_eps
        self.vocab_size: int = config.vocab_size
        self.max_positions: int = config.max_position_embeddings
        inner = model.model
        self.embed = inner.embed_tokens.weight.detach()
        self.final_norm = inner.norm.weight.detach()
        self.lm_head = Linear(model.lm_head.weight.detach())
        self.dtype = self.embed.dtype
        self.device = self.embed.device
        self.inv_freq = inverse_frequencies(RopeConfig.from_hf(config)).to(self.device)
        self.layers = [self._layer_weights(layer) for layer in inner.layers]
        self._prefixes: dict[tuple[int, ...], KVBuffer] = {}  # prompt prefix -> its KV, shared read-only
        self._prefixes_lock = threading.Lock()

    @staticmethod
    def _layer_weights(layer) -> LayerWeights:
        attn, mlp = layer.self_attn, layer.mlp

        def linear(module) -> Linear:
            return Linear(module.weight.detach(), None if module.bias is None else module.bias.detach())

        return LayerWeights(
            input_norm=layer.input_layernorm.weight.detach(),
            q=linear(attn.q_proj),
            k=linear(attn.k_proj),
            v=linear(attn.v_proj),
            o=linear(attn.o_proj),
            post_norm=layer.post_attention_layernorm.weight.detach(),
            gate=linear(mlp.gate_proj),
            up=linear(mlp.up_proj),
            down=linear(mlp.down_proj),
        )

    def prefix_kv(self, ids: torch.Tensor) -> KVBuffer:
        """The KV of `ids` from position 0, computed once per model and token sequence: every engine
        over these weights shares the prompt prefix's, so a server restart does not compute it again.
        Callers only read it."""
        key = tuple(ids.tolist())
        with self._prefixes_lock:
            kv = self._prefixes.get(key)
            if kv is None:
                kv = self._prefixes[key] = self.new_buffer(len(ids))
                self.forward(ids, kv)
        return kv

    def new_buffer(self, capacity: int) -> KVBuffer:
        return KVBuffer(self.layers_count, self.kv_heads, self.head_dim, capacity, self.dtype, self.device)

    def check_tokens(self, ids: torch.Tensor, name: str = "tokens") -> torch.Tensor:
        ids = torch.as_tensor(ids)
        if ids.ndim != 1 or ids.is_floating_point():
            raise ValueError(f"{name}: expected a 1-d integer tensor, got {tuple(ids.shape)} {ids.dtype}")
        if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(f"{name}: token ids must lie in [0, {self.vocab_size})")
        return ids.to(self.device, torch.long)

    def norm(self, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        h32 = h.to(torch.float32)
        return (h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + self.eps)).to(h.dtype) * weight

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return cos_sin(self.inv_freq, positions)

    def qkv(self, layer: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries [heads, n, d], keys and values [kv_heads, n, d] of hidden states h [n, hidden], before RoPE."""
        w = self.layers[layer]
        x = self.norm(h, w.input_norm)
        n = len(h)
        q = w.q(x).view(n, self.heads, self.head_dim).transpose(0, 1)
        k = w.k(x).view(n, self.kv_heads, self.head_dim).transpose(0, 1)
        v = w.v(x).view(n, self.kv_heads, self.head_dim).transpose(0, 1)
        return q, k, v

    def attend(self, layer: int, h: torch.Tensor, q: torch.Tensor, positions: torch.Tensor, kv: KVBuffer) -> torch.Tensor:
        """The rest of the layer for tokens at `positions` (queries after RoPE), attending causally to
        the first `kv.length` slots of `kv`."""
        visible = kv.length
        keys, values = kv.keys[layer, :, :visible][None], kv.values[layer, :, :visible][None]
        if len(positions) == visible:  # the whole sequence from position 0: the fast causal kernel
            out = F.scaled_dot_product_attention(q[None], keys, values, is_causal=True, enable_gqa=True)[0]
        else:
            mask = causal_mask(positions, visible)
            out = F.scaled_dot_product_attention(q[None], keys, values, attn_mask=mask[None, None], enable_gqa=True)[0]
        return self.finish(layer, h, out)

    def finish(self, layer: int, h: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The layer after attention: output projection of `out` [heads, n, d] added to h [n, hidden], then the MLP."""
        w = self.layers[layer]
        h = h + w.o(out.transpose(0, 1).reshape(len(h), self.heads * self.head_dim))
        x = self.norm(h, w.post_norm)
        return h + w.down(F.silu(w.gate(x)) * w.up(x))

    def attention_weights(self, layer: int, q: torch.Tensor, positions: torch.Tensor, kv: KVBuffer) -> torch.Tensor:
        """Attention probabilities [heads, n, kv.length] of queries q [heads, n, d] (after RoPE) at
        `positions` over the keys in `kv`, causal: what `attend` would weight the values by."""
        keys = kv.keys[layer, :, : kv.length].repeat_interleave(self.heads // self.kv_heads, dim=0)
        scores = (q @ keys.transpose(1, 2)).float() / self.head_dim**0.5
        return scores.masked_fill(~causal_mask(positions, kv.length)[None], float("-inf")).softmax(-1)

    def layer(self, layer: int, h: torch.Tensor, positions: torch.Tensor, kv: KVBuffer) -> torch.Tensor:
        """One full layer: write the tokens' keys and values at their positions, then attend."""
        q, k, v = self.qkv(layer, h)
        cos, sin = self.rope(positions)
        kv.keys[layer, :, positions] = rotate(k, cos, sin)
        kv.values[layer, :, positions] = v
        return self.attend(layer, h, rotate(q, cos, sin), positions, kv)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(h, self.final_norm))

    def forward(self, ids: torch.Tensor, kv: KVBuffer) -> torch.Tensor:
        """Run `ids` after the `kv.length` tokens already in `kv`; returns logits [n, vocab] and extends `kv`."""
        return run_steps(self.forward_steps(ids, kv))

    @torch.inference_mode()
    def forward_steps(self, ids: torch.Tensor, kv: KVBuffer) -> Steps[torch.Tensor]:
        """`forward`, one layer a step."""
        ids = self.check_tokens(ids, "ids")
        positions = torch.arange(kv.length, kv.length + len(ids), device=self.device)
        if kv.length + len(ids) > self.max_positions:
            raise ValueError(f"ids: {kv.length + len(ids)} positions exceed the model's {self.max_positions}")
        kv.reserve(kv.length + len(ids))
        kv.length += len(ids)
        h = self.embed[ids]
        for layer in range(self.layers_count):
            h = self.layer(layer, h, positions, kv)
            yield len(ids)
        return self.logits(h)

    def new_decode_batch(self, fixed_slots: int = 0) -> DecodeBatch:
        return DecodeBatch(self.layers_count, self.kv_heads, self.head_dim, self.dtype, self.device, fixed_slots)

    def check_decode(self, ids: torch.Tensor, batch: DecodeBatch) -> torch.Tensor:
        """`ids` checked as one next token for each sequence of `batch`, on the device."""
        ids = self.check_tokens(ids, "ids")
        if len(ids) != len(batch) or not len(batch):
            raise ValueError(f"ids: {len(ids)} tokens for {len(batch)} sequences")
        if max(batch.lengths) + 1 > self.max_positions:
            raise ValueError(f"ids: {max(batch.lengths) + 1} positions exceed the model's {self.max_positions}")
        return ids

    @torch.inference_mode()
    def decode(self, ids: torch.Tensor, batch: DecodeBatch) -> torch.Tensor:
        """One token for each sequence of `batch` at once: ids [n], the i-th appended to slot i;
        logits [n, vocab]. Attention spans the longest sequence, masked only where some are shorter."""
        ids = self.check_decode(ids, batch)
        n = len(batch)
        positions = torch.tensor(batch.lengths, device=self.device)
        batch.extend()
        longest = max(batch.lengths)
        visible = causal_mask(positions, longest)[:, None, None, :] if min(batch.lengths) < longest else None
        return self.decode_layers(ids, positions, batch.keys[:, :n, :, :longest], batch.values[:, :n, :, :longest], visible)

    def decode_layers(
        self, ids: torch.Tensor, positions: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, visible: torch.Tensor | None
    ) -> torch.Tensor:
        """The layers of a decode step, shared by `decode` and the static step of worker.decode_graphs:
        row i's token ids[i] at positions[i] is written to slot i of keys and values ([layers, rows,
        kv_heads, span, head_dim] views of a DecodeBatch's tensors) and attends over that slot where
        `visible` [rows, 1, 1, span] allows (None: all of it); logits [rows, vocab].

        The linear layers run on all rows together, so the weights are read once a step instead
        of once a sequence; attention is one call a layer over every slot, each query head grouped
        under its KV head as a query row. Nothing here asks the device for a value, so a CUDA graph
        can capture it."""
        n = len(ids)
        slots = torch.arange(n, device=self.device)
        cos, sin = self.rope(positions)
        h = self.embed[ids]
        for layer in range(self.layers_count):
            q, k, v = self.qkv(layer, h)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
            keys[layer, slots, :, positions] = k.transpose(0, 1)
            values[layer, slots, :, positions] = v.transpose(0, 1)
            grouped = q.transpose(0, 1).reshape(n, self.kv_heads, self.heads // self.kv_heads, self.head_dim)
            out = F.scaled_dot_product_attention(grouped, keys[layer], values[layer], attn_mask=visible)
            h = self.finish(layer, h, out.reshape(n, self.heads, self.head_dim).transpose(0, 1))
        return self.logits(h)


def causal_mask(positions: torch.Tensor, length: int) -> torch.Tensor:
    """[n, length] mask: which of the first `length` slots the tokens at `positions` may attend to."""
    return torch.arange(length, device=positions.device)[None, :] <= positions[:, None]
