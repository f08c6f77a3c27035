"""Packed quantised KV: what a worker keeps in memory, expanded only when placed."""

import pytest
import torch

from kernels.rope import RopeConfig, cos_sin, inverse_frequencies, rotate
from kvcodec import CODECS, PackedKV, decode, decode_packed, encode

INV = inverse_frequencies(RopeConfig(head_dim=64, theta=10000.0))
CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))


def kv(tokens: int = 45) -> torch.Tensor:
    return torch.randn(3, 2, 2, tokens, 64, generator=torch.Generator().manual_seed(tokens))


@pytest.mark.parametrize("codec", ["int8", "kivi4", "kivi2"])
def test_packed_expands_to_what_decode_returns(codec: str) -> None:
    blob = encode(kv(64), codec)
    packed = decode_packed(blob)
    assert isinstance(packed, PackedKV) and packed.shape == (3, 2, 2, 64, 64)
    assert torch.equal(packed.dense(), decode(blob))
    assert packed.nbytes < kv(64).numel() * 2 / (1.5 if codec == "int8" else 3.0)


@pytest.mark.parametrize("codec", ["int8", "kivi4", "kivi2"])
def test_keys_at_positions_equal_decoded_keys_rotated(codec: str) -> None:
    blob = encode(kv(), codec)
    positions = torch.arange(300, 345)
    expected = rotate(decode(blob)[:, 0].float(), *cos_sin(INV, positions))
    torch.testing.assert_close(decode_packed(blob).keys_at(positions, INV), expected, atol=2e-3, rtol=1e-3)
    with pytest.raises(ValueError, match="positions"):
        decode_packed(blob).keys_at(positions[:-1], INV)


@pytest.mark.parametrize("codec", ["fp16", "ecq"])
def test_lossless_and_entropy_coded_blobs_come_back_dense(codec: str) -> None:
    packed = decode_packed(encode(kv(), codec))
    assert isinstance(packed, torch.Tensor) and packed.dtype == torch.float16


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("codec", ["fp16", "kivi4"])
def test_decode_expands_on_the_requested_device(codec: str, device: str) -> None:
    blob = encode(kv(), codec)
    on_device = decode(blob, device)
    assert on_device.device.type == device
    torch.testing.assert_close(on_device.cpu(), decode(blob), atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_empty_chunk_round_trips(codec: str) -> None:
    assert decode(encode(torch.zeros(2, 2, 1, 0, 64), codec)).shape == (2, 2, 1, 0, 64)
