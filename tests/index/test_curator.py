"""CuratorIndex against FlatTenantIndex as the oracle: random adds, grants, revokes, removes, save/load."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from index.curator import CuratorConfig, CuratorIndex
from index.flat import FlatTenantIndex
from index.tree import TreeConfig

DIM = 16
SMALL = CuratorConfig(tree=TreeConfig(fanout=4, leaf_size=16, max_depth=3), split_threshold=8, exact_threshold=8, ef=32)


def clustered(n: int, seed: int, clusters: int = 12) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, DIM))
    x = centers[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


POOL = clustered(400, seed=0)


class CuratorMachine(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.curator = CuratorIndex(DIM, SMALL)
        self.curator.train(POOL[:300])
        self.flat = FlatTenantIndex(DIM)
        self.present: set[int] = set()
        self.readers: dict[int, set[int]] = {}

    @rule(start=st.integers(0, 390), count=st.integers(1, 40), tenant=st.integers(0, 3))
    def add(self, start: int, count: int, tenant: int) -> None:
        ids = np.array([i for i in range(start, min(start + count, 400)) if i not in self.present], dtype=np.int64)
        if len(ids) == 0:
            return
        self.curator.add(ids, POOL[ids], tenant)
        self.flat.add(ids, POOL[ids], tenant)
        self.present.update(ids.tolist())

    @rule(data=st.data(), tenant=st.integers(0, 3), grant=st.booleans())
    def grant_or_revoke(self, data, tenant: int, grant: bool) -> None:
        if not self.present:
            return
        ids = np.array(data.draw(st.lists(st.sampled_from(sorted(self.present)), min_size=1, max_size=30, unique=True)), dtype=np.int64)
        for index in (self.curator, self.flat):
            (index.grant if grant else index.revoke)(ids, tenant)

    @rule(data=st.data())
    def remove(self, data) -> None:
        if not self.present:
            return
        ids = np.array(data.draw(st.lists(st.sampled_from(sorted(self.present)), min_size=1, max_size=30, unique=True)), dtype=np.int64)
        self.curator.remove(ids)
        self.flat.remove(ids)
        self.present.difference_update(ids.tolist())

    @rule()
    def build(self) -> None:
        """Compaction renumbers every row: searches, grants and removals must not notice."""
        self.curator.build()

    @rule(sample_size=st.integers(20, 400))
    def retrain(self, sample_size: int) -> None:
        """A new tree under the same vectors: every tenant must read exactly what it read before."""
        if self.present:
            self.curator.retrain(sample_size)

    @rule()
    def save_and_load(self) -> None:
        path = Path(self._tmp()) / "curator.idx"
        self.curator.save(path)
        self.curator = CuratorIndex.load(path)

    def _tmp(self) -> str:
        import tempfile

        if not hasattr(self, "_dir"):
            self._dir = tempfile.mkdtemp(prefix="curator-")
        return self._dir

    @invariant()
    def never_returns_unreadable_and_exact_when_exhaustive(self) -> None:
        if not hasattr(self, "curator"):
            return
        queries = POOL[[5, 150, 333]]
        for tenant in range(4):
            truth_d, truth = self.flat.search(queries, tenant, 10)
            readable = set(self.flat.search(queries[:1], tenant, 400)[1][0].tolist()) - {-1}
            _, found = self.curator.search(queries, tenant, 10)
            assert set(found.ravel().tolist()) - {-1} <= readable
            _, everything = self.curator.search(queries, tenant, 10, ef=400)
            np.testing.assert_array_equal(np.sort(everything, 1), np.sort(truth, 1))


def test_curator_matches_the_exact_oracle() -> None:
    run_state_machine_as_test(
        CuratorMachine, settings=settings(max_examples=30, stateful_step_count=25, deadline=None, suppress_health_check=list(HealthCheck))
    )


def test_recall_on_clustered_data_with_default_settings() -> None:
    vectors = clustered(30_000, seed=1, clusters=200)
    vectors = np.concatenate([vectors, np.zeros((0, DIM), np.float32)])
    rng = np.random.default_rng(2)
    tenants = rng.integers(0, 5, len(vectors))
    curator, flat = CuratorIndex(DIM), FlatTenantIndex(DIM)
    curator.train(vectors[:10_000])
    ids = np.arange(len(vectors))
    for t in range(5):
        mine = tenants == t
        curator.add(ids[mine], vectors[mine], t)
        flat.add(ids[mine], vectors[mine], t)
    queries = clustered(100, seed=3, clusters=200)
    recalls = []
    for t in range(5):
        _, truth = flat.search(queries, t, 10)
        _, found = curator.search(queries, t, 10)
        recalls += [len(set(a) & set(b)) / 10 for a, b in zip(found.tolist(), truth.tolist())]
    assert np.mean(recalls) >= 0.9


def test_shortlists_split_and_merge_back() -> None:
    curator = CuratorIndex(DIM, SMALL)
    curator.train(POOL[:300])
    ids = np.arange(200)
    curator.add(ids, POOL[ids], 0)
    sub = curator._tenants[0]
    assert 0 not in sub.terminals and all(len(r) <= 8 or curator.tree.is_leaf(n) for n, r in sub.terminals.items())
    curator.remove(ids[:196])
    assert list(sub.terminals) == [0] and sorted(sub.terminals[0].tolist()) == [
        curator._table.rows(np.array([i]))[0] for i in range(196, 200)
    ]


def test_retrain_leaves_what_adding_one_by_one_would() -> None:
    """Sub-trees cut top-down on retraining equal those grown by inserting into the same tree."""
    curator = CuratorIndex(DIM, SMALL)
    ids = np.arange(300)
    tenant_of = np.arange(300) % 3
    for tenant in range(3):
        curator.add(ids[tenant_of == tenant], POOL[ids[tenant_of == tenant]], tenant)
    curator.grant(ids[:120], 3)
    curator.remove(ids[250:])
    curator.retrain(200)
    grown = CuratorIndex(DIM, SMALL)
    grown._tree = curator.tree
    for tenant in range(3):
        mine = ids[:250][tenant_of[:250] == tenant]
        grown.add(mine, POOL[mine], tenant)
    grown.grant(ids[:120], 3)

    def shape(index: CuratorIndex) -> dict:
        return {
            tenant: {node: sorted(index._table.ids[rows].tolist()) for node, rows in sub.terminals.items()}
            for tenant, sub in index._tenants.items()
        }

    assert curator.trained_on == 200 and len(curator.tree.centroids) > 1
    assert shape(curator) == shape(grown)
    assert {t: s.counts for t, s in curator._tenants.items()} == {t: s.counts for t, s in grown._tenants.items()}


def test_untrained_index_is_exact_and_bad_arguments() -> None:
    curator = CuratorIndex(DIM)
    curator.add(np.arange(50), POOL[:50], 0)
    assert curator.search(POOL[:1], 0, 1)[1].tolist() == [[0]]  # one root shortlist, scanned whole
    with pytest.raises(ValueError, match="sample"):
        curator.train(POOL)  # only an empty index is trained
    curator = CuratorIndex(DIM)
    curator.train(POOL)
    with pytest.raises(TypeError, match="vectors"):
        curator.add(np.arange(2), POOL[:2].astype(np.float64), 0)
    with pytest.raises(ValueError, match="queries"):
        curator.search(POOL[:1, :5], 0, 1)
    with pytest.raises(ValueError, match="k"):
        curator.search(POOL[:1], 0, 0)
    assert curator.search(POOL[:1], 7, 3)[1].tolist() == [[-1, -1, -1]]
