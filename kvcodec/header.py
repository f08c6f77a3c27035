"""The self-describing, versioned blob header every codec writes.

    magic "TKVC" | header version u8 | codec id u8 | codec version u8 | dtype u8 | ndim u8 |
    shape u32 * ndim | params length u32 | params | fingerprint length u8 | fingerprint |
    payload length u64 | payload crc32 u32 | payload

The fingerprint (version 2 on) names the model the KV was computed with (`Engine.kv_fingerprint`),
so a server can refuse an uploaded blob made by other weights; version 1 blobs, without it, stay
readable. A blob names everything needed to decode it, so blobs written today stay readable after
the defaults change; a truncated or corrupted blob fails its length or checksum test.
"""

import struct
import zlib
from dataclasses import dataclass

import torch

MAGIC = b"TKVC"
HEADER_VERSION = 2
MAX_FINGERPRINT_BYTES = 255
_FIXED = struct.Struct("<4sBBBBB")
_TAIL = struct.Struct("<QI")
DTYPES = {1: torch.float16, 2: torch.bfloat16, 3: torch.float32}
DTYPE_CODES = {dtype: code for code, dtype in DTYPES.items()}


class CorruptBlobError(ValueError):
    """A KV blob that is truncated, corrupted, or written by a codec this build does not know."""


@dataclass(frozen=True, slots=True)
class Header:
    codec_id: int
    codec_version: int
    dtype: torch.dtype  # the dtype decode returns
    shape: tuple[int, ...]
    params: bytes  # codec-specific parameters
    fingerprint: str = ""  # the model's KV fingerprint; "": not recorded (version 1 blobs)


def pack(header: Header, payload: bytes) -> bytes:
    fixed = _FIXED.pack(MAGIC, HEADER_VERSION, header.codec_id, header.codec_version, DTYPE_CODES[header.dtype], len(header.shape))
    shape = struct.pack(f"<{len(header.shape)}I", *header.shape)
    params = struct.pack("<I", len(header.params)) + header.params
    fingerprint = header.fingerprint.encode()
    if len(fingerprint) > MAX_FINGERPRINT_BYTES:
        raise ValueError(f"fingerprint: at most {MAX_FINGERPRINT_BYTES} bytes, got {len(fingerprint)}")
    named = bytes([len(fingerprint)]) + fingerprint
    return b"".join([fixed, shape, params, named, _TAIL.pack(len(payload), zlib.crc32(payload)), payload])


def unpack(blob: bytes) -> tuple[Header, memoryview]:
    """The header and a view of the verified payload; CorruptBlobError otherwise."""
    view = memoryview(blob)
    try:
        magic, version, codec_id, codec_version, dtype_code, ndim = _FIXED.unpack_from(view, 0)
        if magic != MAGIC:
            raise CorruptBlobError("not a tenantkv KV blob (bad magic)")
        if version not in (1, HEADER_VERSION):
            raise CorruptBlobError(f"unknown blob header version {version}")
        if dtype_code not in DTYPES:
            raise CorruptBlobError(f"unknown dtype code {dtype_code}")
        offset = _FIXED.size
        shape = struct.unpack_from(f"<{ndim}I", view, offset)
        offset += 4 * ndim
        (params_length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        params = bytes(view[offset : offset + params_length])
        offset += params_length
        fingerprint, fingerprint_length = b"", 0
        if version >= 2:
            fingerprint_length = view[offset]
            fingerprint = bytes(view[offset + 1 : offset + 1 + fingerprint_length])
            offset += 1 + fingerprint_length
        length, crc = _TAIL.unpack_from(view, offset)
        offset += _TAIL.size
    except (struct.error, IndexError) as exc:
        raise CorruptBlobError(f"truncated KV blob header: {exc}") from exc
    payload = view[offset:]
    if len(payload) != length or len(params) != params_length or len(fingerprint) != fingerprint_length:
        raise CorruptBlobError(f"truncated KV blob: payload of {len(payload)} bytes, header says {length}")
    if zlib.crc32(payload) != crc:
        raise CorruptBlobError("corrupted KV blob: payload checksum mismatch")
    try:
        name = fingerprint.decode()
    except UnicodeDecodeError as exc:
        raise CorruptBlobError("KV blob header: fingerprint is not text") from exc
    return Header(codec_id, codec_version, DTYPES[dtype_code], tuple(shape), params, name), payload
