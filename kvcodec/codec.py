"""encode(kv, codec) -> bytes and decode(bytes) -> tensor over the registered codecs.

`decode_packed` stops short of expanding: quantised blobs come back as `PackedKV` (codes, scales
and minimums, what a worker keeps in memory), lossless ones as their fp16 tensor.
"""

from dataclasses import dataclass
from typing import Protocol

import torch

from kvcodec import fp16
from kvcodec.entropy import EntropySpec
from kvcodec.header import CorruptBlobError, Header, pack, unpack
from kvcodec.packed import PackedKV
from kvcodec.quantized import QuantSpec


class Implementation(Protocol):
    def encode(self, kv: torch.Tensor) -> bytes: ...

    def parse(self, payload: memoryview, shape: tuple[int, ...]) -> torch.Tensor | PackedKV: ...


@dataclass(frozen=True, slots=True)
class Codec:
    name: str
    codec_id: int  # written in every blob: never reuse a number
    version: int
    implementation: Implementation
    lossless: bool = False


_REGISTRY = [
    Codec("fp16", 1, 1, fp16, lossless=True),
    Codec("int8", 2, 1, QuantSpec(key_bits=8, value_bits=8, group=32, keys_per_channel=False)),
    Codec("kivi4", 3, 1, QuantSpec(key_bits=4, value_bits=4, group=32)),
    Codec("kivi2", 4, 1, QuantSpec(key_bits=2, value_bits=2, group=32)),
    Codec("ecq", 5, 1, EntropySpec(step=0.7)),
]
CODECS: dict[str, Codec] = {c.name: c for c in _REGISTRY}
_BY_ID = {c.codec_id: c for c in _REGISTRY}


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """What a blob's header says about it."""

    codec: str
    shape: tuple[int, ...]  # [layers, 2, kv_heads, tokens, head_dim]
    fingerprint: str  # the model's KV fingerprint it was computed with; "": not recorded


def encode(kv: torch.Tensor, codec: str, fingerprint: str = "") -> bytes:
    """`kv` encoded in `codec`, its header naming the model's KV `fingerprint` it was computed with."""
    if codec not in CODECS:
        raise ValueError(f"codec: unknown {codec!r}; known: {sorted(CODECS)}")
    if not isinstance(kv, torch.Tensor) or not kv.is_floating_point():
        raise TypeError("kv: expected a floating-point torch tensor")
    if kv.ndim != 5 or kv.shape[1] != 2:
        raise ValueError(f"kv: expected [layers, 2, kv_heads, tokens, head_dim], got {tuple(kv.shape)}")
    spec = CODECS[codec]
    header = Header(spec.codec_id, spec.version, torch.float16, tuple(kv.shape), b"", fingerprint)
    return pack(header, spec.implementation.encode(kv))


def decode(blob: bytes, device: torch.device | str = "cpu") -> torch.Tensor:
    """float16 KV [layers, 2, kv_heads, tokens, head_dim]; quantised codes expand on `device`."""
    parsed = decode_packed(blob).to(device)
    return parsed.dense() if isinstance(parsed, PackedKV) else parsed


def decode_packed(blob: bytes) -> torch.Tensor | PackedKV:
    """The blob parsed and checked but left packed where its codec quantises (on the CPU)."""
    header, payload = unpack(blob)
    spec = _codec_for(header)
    try:
        parsed = spec.implementation.parse(payload, header.shape)
    except Exception as exc:  # zstd and reshape errors alike mean the payload is not what the header says
        raise CorruptBlobError(f"{spec.name} payload does not decode: {exc}") from exc
    return parsed if isinstance(parsed, PackedKV) else parsed.to(header.dtype)


def codec_of(blob: bytes) -> str:
    """The codec named in a blob's header (checks the header and payload checksum too)."""
    return blob_info(blob).codec


def blob_info(blob: bytes) -> BlobInfo:
    """A blob's header, checked with its payload checksum (CorruptBlobError), payload not parsed."""
    header = unpack(blob)[0]
    return BlobInfo(_codec_for(header).name, header.shape, header.fingerprint)


def _codec_for(header: Header) -> Codec:
    spec = _BY_ID.get(header.codec_id)
    if spec is None or header.codec_version > spec.version:
        raise CorruptBlobError(f"unknown codec id {header.codec_id} version {header.codec_version}")
    return spec
