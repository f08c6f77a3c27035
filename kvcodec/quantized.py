"""Quantised codecs over KV [layers, 2, kv_heads, tokens, head_dim] (index 0 keys, 1 values).

Keys are quantised per channel (groups of `group` tokens share a scale for each channel) or per
token, values per token (groups of `group` channels), as KIVI found best: key outliers sit in
fixed channels, value error matters per token. Tokens are padded to a whole group with the last
token's values and cut off again on decode. Codes are bit-packed, then everything is zstd'd.
"""

from dataclasses import dataclass

import numpy as np
import torch

from kvcodec import zstd
from kernels.packing import pack
from kvcodec.packed import PackedGroups, PackedKV
from kvcodec.quant import quantize
from kvcodec.reader import PayloadReader


@dataclass(frozen=True, slots=True)
class QuantSpec:
    key_bits: int
    value_bits: int
    group: int  # tokens per key group when keys are per channel; channels per value group
    keys_per_channel: bool = True

    def encode(self, kv: torch.Tensor) -> bytes:
        kv = kv.detach().float().cpu()
        keys, values = kv[:, 0], kv[:, 1]  # [L, H, T, D]
        tokens = keys.shape[2]
        parts = [*self._keys(_pad_tokens(keys, self.group) if self.keys_per_channel else keys), *self._values(values)]
        return zstd.compress(b"".join(np.ascontiguousarray(p).tobytes() for p in parts)) if tokens else b""

    def _keys(self, keys: torch.Tensor) -> list[np.ndarray]:
        if self.keys_per_channel:
            layers, heads, tokens, dim = keys.shape
            grouped = keys.reshape(layers, heads, tokens // self.group, self.group, dim)
            codes, scale, low = quantize(grouped, self.key_bits, dim=3)
            codes = codes.reshape(layers, heads, tokens, dim)
        else:
            codes, scale, low = _per_token(keys, self.key_bits, keys.shape[-1])
        return [pack(codes, self.key_bits), scale.numpy(), low.numpy()]

    def _values(self, values: torch.Tensor) -> list[np.ndarray]:
        codes, scale, low = _per_token(values, self.value_bits, self.group)
        return [pack(codes, self.value_bits), scale.numpy(), low.numpy()]

    def parse(self, payload: memoryview, shape: tuple[int, ...]) -> PackedKV:
        """The payload's codes, scales and minimums, checked against `shape` but not expanded."""
        layers, _, heads, tokens, dim = shape
        reader = PayloadReader(memoryview(zstd.decompress(payload)) if tokens else memoryview(b""))
        if self.keys_per_channel:
            padded = -(-tokens // self.group) * self.group
            keys = _take_groups(reader, (layers, heads, padded, dim), self.key_bits, self.group, per_channel=True)
        else:
            keys = _take_groups(reader, (layers, heads, tokens, dim), self.key_bits, dim, per_channel=False)
        values = _take_groups(reader, (layers, heads, tokens, dim), self.value_bits, self.group, per_channel=False)
        reader.finish()
        return PackedKV(keys, values, tokens)


def _pad_tokens(x: torch.Tensor, group: int) -> torch.Tensor:
    pad = -x.shape[2] % group
    return torch.cat([x, x[:, :, -1:].expand(-1, -1, pad, -1)], dim=2) if pad else x


def _per_token(x: torch.Tensor, bits: int, group: int):
    layers, heads, tokens, dim = x.shape
    codes, scale, low = quantize(x.reshape(layers, heads, tokens, dim // group, group), bits, dim=4)
    return codes.reshape(layers, heads, tokens, dim), scale, low


def _take_groups(reader: PayloadReader, rows: tuple[int, int, int, int], bits: int, group: int, per_channel: bool) -> PackedGroups:
    layers, heads, count, dim = rows
    if per_channel:
        groups = (layers, heads, count // group, 1, dim)
    else:
        groups = (layers, heads, count, dim // group, 1)
    codes = reader.take(np.uint8, (layers, heads, count, dim * bits // 8))
    scale, low = reader.take(np.float16, groups), reader.take(np.float16, groups)
    return PackedGroups(codes, scale, low, bits, group, per_channel)
