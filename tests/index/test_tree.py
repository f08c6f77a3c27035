"""ClusterTree: leaves are consecutive breadth-first children, and beam descent finds the nearest leaf."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from index.tree import ClusterTree, TreeConfig, trainable_rows

DIM = 32


def noisy_clusters(n: int, clusters: int, noise: float, seed: int) -> np.ndarray:
    """Unit vectors around `clusters` centres, noisy enough that the root's split is a close call."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, DIM))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    x = centers[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def nearest_leaf(tree: ClusterTree, vectors: np.ndarray) -> np.ndarray:
    leaves = np.array(sorted(tree.paths), dtype=np.int64)
    scores = vectors @ tree.centroids[leaves].T
    if tree.metric == "l2":
        scores -= 0.5 * (tree.centroids[leaves] ** 2).sum(1)
    return leaves[scores.argmax(1)]


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_a_beam_as_wide_as_the_leaves_finds_the_nearest_leaf(metric: str) -> None:
    vectors = noisy_clusters(3000, clusters=40, noise=0.25, seed=1)
    config = TreeConfig(fanout=6, leaf_size=40, max_depth=3)
    tree = ClusterTree.train(vectors, metric, config)
    tree.beam = len(tree.paths)
    leaves = tree.assign(vectors)
    assert all(tree.is_leaf(int(leaf)) for leaf in leaves)
    np.testing.assert_array_equal(leaves, nearest_leaf(tree, vectors))
    np.testing.assert_array_equal(tree.assign(vectors[:1]), leaves[:1])  # one vector, the online path


def test_beam_descent_misroutes_less_than_greedy_descent() -> None:
    vectors = noisy_clusters(4000, clusters=64, noise=0.35, seed=2)
    tree = ClusterTree.train(vectors, "ip", TreeConfig(fanout=8, leaf_size=32, max_depth=3))
    exact = nearest_leaf(tree, vectors)
    agreement = {}
    for beam in (1, 8):
        tree.beam = beam
        agreement[beam] = float((tree.assign(vectors) == exact).mean())
    assert agreement[8] > agreement[1] + 0.1
    assert agreement[8] > 0.9


def test_root_only_tree_puts_everything_in_the_root() -> None:
    tree = ClusterTree.root_only(DIM, "ip")
    np.testing.assert_array_equal(tree.assign(noisy_clusters(5, 2, 0.1, seed=3)), np.zeros(5, dtype=np.int64))


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_training_skips_rows_kmeans_cannot_take(metric: str) -> None:
    """Rows that overflowed faiss k-means (an abort from C++, not an exception) never reach it."""
    good = noisy_clusters(600, clusters=8, noise=0.2, seed=3)
    hostile = np.sign(good[:40]) * np.float32(3e38)
    hostile[:5] = np.nan
    hostile[5:10] = np.inf
    mixed = np.concatenate([good, hostile])
    assert trainable_rows(mixed, metric).sum() == len(good)
    tree = ClusterTree.train(mixed, metric, TreeConfig(fanout=4, leaf_size=32, max_depth=3))
    assert np.isfinite(tree.centroids).all() and len(tree.paths) > 1
    with pytest.raises(ValueError, match="sample"):
        ClusterTree.train(hostile, metric, TreeConfig())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    distinct=st.integers(1, 6),
    copies=st.integers(1, 400),
    seed=st.integers(0, 2**16),
)
def test_training_on_duplicated_unit_rows_never_fails(distinct: int, copies: int, seed: int) -> None:
    """A tenant may upload one vector many times, or all of its data in one point: the shapes that
    pull k-means clusters empty. Training must still give a finite tree that every row descends."""
    rng = np.random.default_rng(seed)
    points = rng.standard_normal((distinct, DIM))
    sample = np.repeat(points / np.linalg.norm(points, axis=1, keepdims=True), copies, axis=0).astype(np.float32)
    tree = ClusterTree.train(sample, "ip", TreeConfig(fanout=16, leaf_size=8, max_depth=3))
    assert np.isfinite(tree.centroids).all()
    assert all(tree.is_leaf(int(leaf)) for leaf in tree.assign(sample))
