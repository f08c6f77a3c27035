"""Vectors at the store's boundary: scaled to unit norm without overflow, refused when they cannot be."""

import numpy as np
import pytest

from store.errors import InvalidArgument
from store.vectors import safe_rows, unit_rows


def test_unit_rows_scales_the_largest_finite_floats_without_overflow() -> None:
    signs = np.sign(np.random.default_rng(0).standard_normal((3, 384))).astype(np.float32)
    huge = signs * np.float32(3e38)
    tiny = signs * np.float32(1e-40)  # subnormal
    out = unit_rows(np.concatenate([huge, tiny]), [f"v[{i}]" for i in range(6)])
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out.astype(np.float64), axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(out[0], signs[0] / np.sqrt(384), rtol=1e-6)


@pytest.mark.parametrize(
    ("value", "reason"), [(np.nan, "finite"), (np.inf, "finite"), (-np.inf, "finite"), (0.0, "zeros")]
)
def test_unit_rows_names_the_first_row_that_cannot_be_unit(value: float, reason: str) -> None:
    vectors = np.ones((3, 4), dtype=np.float32)
    vectors[1] = 0.0
    vectors[1, 0] = value
    with pytest.raises(InvalidArgument, match=rf"^b\.vector: values .*{reason}"):
        unit_rows(vectors, ["a.vector", "b.vector", "c.vector"])


def test_safe_rows_zeroes_only_what_cannot_be_unit() -> None:
    vectors = np.array([[3e38, 3e38], [np.nan, 1.0], [0.0, 0.0], [3.0, 4.0], [np.inf, 0.0]], dtype=np.float32)
    out, zeroed = safe_rows(vectors)
    assert zeroed == 3
    np.testing.assert_allclose(out, [[2**-0.5, 2**-0.5], [0, 0], [0, 0], [0.6, 0.8], [0, 0]], rtol=1e-6)
    assert np.isfinite(out).all()
