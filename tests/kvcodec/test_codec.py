"""Blobs round-trip, name their codec, and refuse to decode when truncated, flipped or unknown."""

import struct

import pytest
import torch

from kvcodec import CODECS, BlobInfo, CorruptBlobError, blob_info, codec_of, decode, encode, fp16
from kvcodec.header import HEADER_VERSION, Header, pack

SHAPE = (30, 2, 3, 37, 64)  # SmolLM2: layers, keys/values, kv heads, tokens (odd), head dim


@pytest.fixture
def kv() -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))


def test_fp16_is_lossless_for_fp16_values(kv: torch.Tensor) -> None:
    blob = encode(kv, "fp16")
    assert codec_of(blob) == "fp16"
    decoded = decode(blob)
    assert decoded.dtype == torch.float16 and decoded.shape == SHAPE
    assert torch.equal(decoded, kv.to(torch.float16))


def test_shuffled_fp16_compresses_smooth_kv() -> None:
    smooth = torch.linspace(0, 1, 30 * 2 * 3 * 64 * 64).reshape(30, 2, 3, 64, 64)
    assert len(encode(smooth, "fp16")) < smooth.numel() * 2 * 0.6


@pytest.mark.parametrize("cut", [1, 10, 100])
def test_truncated_blobs_are_detected(kv: torch.Tensor, cut: int) -> None:
    blob = encode(kv, "fp16")
    with pytest.raises(CorruptBlobError, match="truncated"):
        decode(blob[:-cut] if cut < 100 else blob[:12])


def test_flipped_byte_is_detected(kv: torch.Tensor) -> None:
    blob = bytearray(encode(kv, "fp16"))
    blob[len(blob) // 2] ^= 0x01
    with pytest.raises(CorruptBlobError, match="checksum"):
        decode(bytes(blob))


def test_unknown_codec_and_header_version(kv: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="codec"):
        encode(kv, "zip")
    future = pack(Header(codec_id=200, codec_version=1, dtype=torch.float16, shape=(1,), params=b""), b"xx")
    with pytest.raises(CorruptBlobError, match="unknown codec"):
        decode(future)
    blob = bytearray(encode(kv, "fp16"))
    blob[4] = HEADER_VERSION + 1
    with pytest.raises(CorruptBlobError, match="header version"):
        decode(bytes(blob))
    with pytest.raises(CorruptBlobError, match="magic"):
        decode(b"NOPE" + bytes(blob[4:]))


def test_version_one_fp16_blob_layout_stays_readable() -> None:
    """A blob assembled by hand in the v1 layout: later builds must still decode it."""
    import zlib

    import numpy as np
    import zstandard

    values = np.arange(6, dtype=np.float16)
    payload = zstandard.ZstdCompressor().compress(np.ascontiguousarray(values.view(np.uint8).reshape(-1, 2).T).tobytes())
    blob = b"TKVC" + bytes([1, CODECS["fp16"].codec_id, 1, 1, 2]) + struct.pack("<2I", 2, 3) + struct.pack("<I", 0)
    blob += struct.pack("<QI", len(payload), zlib.crc32(payload)) + payload
    assert decode(blob).tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]


# Relative error bounds on Gaussian KV (real SmolLM2 KV does better: bench/codec.py).
LOSSY_BOUNDS = {"int8": (0.02, 0.02), "kivi4": (0.10, 0.12), "kivi2": (0.45, 0.55), "ecq": (0.22, 0.22)}


@pytest.mark.parametrize("codec", sorted(LOSSY_BOUNDS))
@pytest.mark.parametrize("tokens", [1, 31, 32, 33, 100])
def test_lossy_round_trips_within_bounds(codec: str, tokens: int) -> None:
    kv = torch.randn(4, 2, 3, tokens, 64, generator=torch.Generator().manual_seed(tokens))
    blob = encode(kv, codec)
    assert codec_of(blob) == codec
    decoded = decode(blob).float()
    assert decoded.shape == kv.shape
    key_bound, value_bound = LOSSY_BOUNDS[codec]
    for index, bound in ((0, key_bound), (1, value_bound)):
        error = (decoded[:, index] - kv[:, index]).norm() / kv[:, index].norm()
        assert error < bound, (codec, index, float(error))


def test_quantised_codecs_are_smaller_in_order() -> None:
    kv = torch.randn(4, 2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    sizes = {codec: len(encode(kv, codec)) for codec in ("fp16", "int8", "kivi4", "kivi2")}
    assert sizes["fp16"] > sizes["int8"] > sizes["kivi4"] > sizes["kivi2"]
    assert kv.numel() * 2 / sizes["kivi4"] > 3.0


def test_entropy_coding_halves_kivi2_error_at_nearly_its_size() -> None:
    torch.manual_seed(3)
    heavy_tailed = torch.distributions.StudentT(3.0).sample((4, 2, 3, 256, 64))
    sizes, errors = {}, {}
    for codec in ("kivi2", "ecq"):
        blob = encode(heavy_tailed, codec)
        sizes[codec], errors[codec] = len(blob), float((decode(blob).float() - heavy_tailed).norm() / heavy_tailed.norm())
    assert sizes["ecq"] < sizes["kivi2"] * 1.1
    assert errors["ecq"] < errors["kivi2"] / 2


def test_entropy_coding_keeps_outliers_to_one_step() -> None:
    kv = torch.randn(2, 2, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    kv[1, 0, 0, 7, 3], kv[0, 1, 0, 60, 63] = 400.0, -900.0
    decoded = decode(encode(kv, "ecq")).float()
    assert abs(decoded[1, 0, 0, 7, 3] - 400.0) < 8.0 and abs(decoded[0, 1, 0, 60, 63] + 900.0) < 18.0  # clipped: ~30 and ~70


@pytest.mark.parametrize("codec", ["int8", "kivi4", "kivi2", "ecq"])
def test_lossy_corruption_is_detected(codec: str) -> None:
    blob = bytearray(encode(torch.randn(2, 2, 1, 40, 64), codec))
    blob[-3] ^= 0x10
    with pytest.raises(CorruptBlobError):
        decode(bytes(blob))
    with pytest.raises(CorruptBlobError):
        decode(bytes(blob[:-7]))


def test_kv_layout_is_checked() -> None:
    with pytest.raises(ValueError, match="kv"):
        encode(torch.randn(2, 3, 1, 4, 64), "kivi4")


def test_header_names_the_fingerprint_and_version_one_blobs_name_none(kv: torch.Tensor) -> None:
    blob = encode(kv, "int8", fingerprint="0123456789abcdef")
    assert blob_info(blob) == BlobInfo("int8", SHAPE, "0123456789abcdef")
    assert blob_info(encode(kv, "fp16")).fingerprint == ""
    values = torch.arange(6, dtype=torch.float16).reshape(2, 3)
    v1 = bytearray(pack(Header(CODECS["fp16"].codec_id, 1, torch.float16, (2, 3), b""), fp16.encode(values)))
    del v1[-len(fp16.encode(values)) - 13]  # version 1 has no fingerprint length byte
    v1[4] = 1
    assert blob_info(bytes(v1)) == BlobInfo("fp16", (2, 3), "")
    assert torch.equal(decode(bytes(v1)), values)
    with pytest.raises(CorruptBlobError, match="truncated"):
        blob_info(blob[:40])
