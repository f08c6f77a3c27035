"""The per-token deviation kernel (Triton: compiled on a GPU, interpreted elsewhere) against its torch twin."""

import pytest
import torch

from kernels.deviation import token_deviation, token_deviation_reference, top_deviations
from kernels.triton_deviation import token_deviation_triton


@pytest.mark.parametrize("tokens", [1, 63, 64, 65, 200])
def test_kernel_equals_reference(tokens: int, device: torch.device) -> None:
    generator = torch.Generator().manual_seed(tokens)
    fresh, cached = torch.randn(3, tokens, 64, generator=generator), torch.randn(3, tokens, 64, generator=generator)
    expected = token_deviation_reference(fresh, cached)
    got = token_deviation_triton(fresh.to(device), cached.to(device))
    torch.testing.assert_close(got.cpu(), expected, atol=1e-3, rtol=1e-5)
    assert top_deviations(fresh.to(device), cached.to(device), 5).cpu().tolist() == top_deviations(fresh, cached, 5).tolist()


def test_top_deviations_finds_planted_tokens() -> None:
    fresh = torch.zeros(3, 100, 64)
    cached = fresh.clone()
    cached[:, [7, 50, 99]] += torch.tensor([1.0, 3.0, 2.0])[None, :, None]
    assert top_deviations(fresh, cached, 3).tolist() == [7, 50, 99]
    assert top_deviations(fresh, cached, 1).tolist() == [50]
    assert top_deviations(fresh, cached, 0).tolist() == []
    assert len(top_deviations(fresh, cached, 500)) == 100


def test_shape_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError, match="fresh"):
        token_deviation(torch.zeros(3, 4, 64), torch.zeros(3, 5, 64))


def test_weights_rank_equal_deviations_by_weight() -> None:
    """Two tokens moved equally far: the one the question attends to more is picked."""
    fresh, cached = torch.zeros(2, 10, 8), torch.zeros(2, 10, 8)
    cached[:, [2, 6]] = 1.0
    weights = torch.full((10,), 0.1)
    weights[6] = 0.5
    assert top_deviations(fresh, cached, 1, weights).tolist() == [6]
    weights[2] = 0.9
    assert top_deviations(fresh, cached, 1, weights).tolist() == [2]
