"""FlatTenantIndex: exact top-k over exactly the vectors a tenant may read."""

import numpy as np
import pytest

from index.flat import FlatTenantIndex

DIM = 16


def unit(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    order = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]
    return ids[order]


def test_search_is_exact_and_tenant_restricted() -> None:
    index = FlatTenantIndex(DIM)
    vectors = unit(500, 1)
    ids = np.arange(1000, 1500, dtype=np.int64)
    index.add(ids[:300], vectors[:300], tenant=1)
    index.add(ids[300:], vectors[300:], tenant=2)
    queries = unit(7, 2)
    distances, found = index.search(queries, 1, 10)
    np.testing.assert_array_equal(found, brute_force(vectors[:300], ids[:300], queries, 10))
    assert (np.diff(distances, axis=1) <= 0).all()
    assert set(index.search(queries, 2, 50)[1].ravel()) <= set(ids[300:])


def test_grant_revoke_remove_and_padding() -> None:
    index = FlatTenantIndex(DIM)
    vectors = unit(3, 3)
    index.add(np.array([1, 2, 3], dtype=np.uint64), vectors, tenant=1)
    index.grant(np.array([2]), tenant=5)
    distances, ids = index.search(vectors[1:2], 5, 3)
    assert ids.tolist() == [[2, -1, -1]] and np.isneginf(distances[0, 1:]).all()
    index.revoke(np.array([2]), tenant=5)
    assert index.search(vectors[1:2], 5, 3)[1].tolist() == [[-1, -1, -1]]
    index.grant(np.array([2]), tenant=5)
    index.remove(np.array([2, 42]))
    assert index.search(vectors[1:2], 5, 1)[1].tolist() == [[-1]]
    assert 2 not in index.search(vectors[1:2], 1, 3)[1]
    index.add(np.array([2]), vectors[1:2], tenant=9)  # an id may come back after removal
    assert index.search(vectors[1:2], 9, 1)[1].tolist() == [[2]]
    assert len(index) == 3


def test_l2_metric_is_ascending_squared_distance() -> None:
    index = FlatTenantIndex(DIM, metric="l2")
    vectors = unit(50, 4)
    index.add(np.arange(50), vectors, tenant=0)
    distances, ids = index.search(vectors[:2], 0, 5)
    assert ids[:, 0].tolist() == [0, 1]
    np.testing.assert_allclose(distances[:, 0], 0.0, atol=1e-5)
    assert (np.diff(distances, axis=1) >= 0).all()


def test_growth_keeps_vectors() -> None:
    index = FlatTenantIndex(DIM)
    vectors = unit(5000, 5)
    for start in range(0, 5000, 700):
        index.add(np.arange(start, min(start + 700, 5000)), vectors[start : start + 700], tenant=0)
    assert index.search(vectors[4321:4322], 0, 1)[1].tolist() == [[4321]]
    assert index.memory_bytes() >= vectors.nbytes


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda ix: ix.add(np.arange(2), np.zeros((2, DIM), np.float64), 0), TypeError, "vectors"),
        (lambda ix: ix.add(np.arange(2), np.zeros((2, DIM + 1), np.float32), 0), ValueError, "vectors"),
        (lambda ix: ix.add(np.arange(3), np.zeros((2, DIM), np.float32), 0), ValueError, "ids"),
        (lambda ix: ix.add(np.arange(2, dtype=np.int32), np.zeros((2, DIM), np.float32), 0), TypeError, "ids"),
        (lambda ix: ix.add(np.array([-1, 2]), np.zeros((2, DIM), np.float32), 0), ValueError, "ids"),
        (lambda ix: ix.add(np.array([7]), np.zeros((1, DIM), np.float32), 0), ValueError, "already"),
        (lambda ix: ix.add(np.arange(10, 12), np.zeros((2, DIM), np.float32), -1), ValueError, "tenant"),
        (lambda ix: ix.search(np.zeros((1, DIM), np.float32), 0, 0), ValueError, "k"),
        (lambda ix: ix.search(np.zeros(DIM, np.float32), 0, 1), ValueError, "queries"),
        (lambda ix: ix.grant(np.array([99]), 1), KeyError, "ids"),
        (lambda ix: FlatTenantIndex(DIM, metric="cosine"), ValueError, "metric"),
    ],
)
def test_bad_arguments_name_the_argument(call, error, match) -> None:
    index = FlatTenantIndex(DIM)
    index.add(np.array([7]), unit(1, 6), tenant=0)
    with pytest.raises(error, match=match):
        call(index)
