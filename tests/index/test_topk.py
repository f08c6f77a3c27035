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
    rows = np.array([0, 1, 2, 0, 3, 4, 5, 6, 7, 0, 0, 8, 9], dtype=np.int32)  # stretches with spare room (0s) between
    starts, lengths = np.array([0, 4, 11]), np.array([3, 5, 2])  # terminals of 3, 5 and 2 rows
    sums = np.stack([-query[0], 4 * query[0], np.zeros(DIM, np.float32)])  # ranked 1, 2, 0
    scale = np.array([1.0, 0.25, 1.0], dtype=np.float32)
    _, found = top_k_in_terminals(query, table, sums, scale, starts, lengths, rows, 5, 10, "ip")
    assert set(found[0][found[0] >= 0].tolist()) == {3, 4, 5, 6, 7}
    _, found = top_k_in_terminals(query, table, sums, scale, starts, lengths, rows, 6, 10, "ip")
    assert set(found[0][found[0] >= 0].tolist()) == {3, 4, 5, 6, 7, 8, 9}


def test_l2_ranks_terminals_by_their_mean() -> None:
    """A terminal's sum times its scale (1 / count) is its mean: the one nearer the query goes first."""
    table = unit(10, 5)
    query = table[:1]
    rows = np.arange(10, dtype=np.int32)
    starts, lengths = np.array([0, 5]), np.array([5, 5])
    sums = np.stack([5 * (query[0] + 1.0), 5 * query[0]])  # means: query + 1 (far), query (near)
    scale = np.full(2, 0.2, dtype=np.float32)
    _, found = top_k_in_terminals(query, table, sums, scale, starts, lengths, rows, 5, 10, "l2")
    assert set(found[0][found[0] >= 0].tolist()) == {5, 6, 7, 8, 9}
