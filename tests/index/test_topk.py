"""The compiled scan against numpy: every score and its order, for any number of rows, and the cover rule."""

import numpy as np
import pytest

from index.topk import top_k, top_k_in_terminals

DIM = 24


def unit(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("count", [1, 3, 4, 5, 11, 64])
def test_top_k_equals_numpy_for_any_number_of_rows(metric: str, count: int) -> None:
    """Rows are scored four at a time with the rest one by one: every count must come out the same."""
    table, queries, k = unit(200, 1), unit(5, 2), 8
    rows = np.random.default_rng(3).choice(200, count, replace=False).astype(np.int64)
    if metric == "ip":
        scores = queries @ table[rows].T
        order = np.argsort(-scores, axis=1, kind="stable")
    else:
        scores = ((queries[:, None, :] - table[rows][None, :, :]) ** 2).sum(axis=2)
        order = np.argsort(scores, axis=1, kind="stable")
    kept = min(k, count)
    distances, found = top_k(queries, table, rows, k, metric)
    np.testing.assert_array_equal(found[:, :kept], rows[order[:, :kept]])
    np.testing.assert_allclose(distances[:, :kept], np.take_along_axis(scores, order[:, :kept], axis=1), rtol=1e-4, atol=1e-5)
    assert (found[:, kept:] == -1).all()


def test_terminals_are_scanned_best_first_until_cover_rows_are_seen() -> None:
    table = unit(10, 4)
    query = table[:1]
    rows = np.arange(10, dtype=np.int64)
    offsets = np.array([0, 3, 8, 10], dtype=np.int64)  # terminals of 3, 5 and 2 rows
    centroids = np.stack([-query[0], query[0], np.zeros(DIM, np.float32)])  # ranked 1, 2, 0
    _, found = top_k_in_terminals(query, table, centroids, offsets, rows, 5, 10, "ip")
    assert set(found[0][found[0] >= 0].tolist()) == {3, 4, 5, 6, 7}
    _, found = top_k_in_terminals(query, table, centroids, offsets, rows, 6, 10, "ip")
    assert set(found[0][found[0] >= 0].tolist()) == {3, 4, 5, 6, 7, 8, 9}
