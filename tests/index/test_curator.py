"""CuratorIndex against FlatTenantIndex as the oracle: random adds, grants, revokes, removes, save/load."""

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, rule, run_state_machine_as_test

from index.curator import CuratorConfig, CuratorIndex, _Readers
from index.flat import FlatTenantIndex
from index.tree import TreeConfig
from tests.index.oracle import DIM, POOL, QUERIES, OracleMachine, clustered

SMALL = CuratorConfig(tree=TreeConfig(fanout=4, leaf_size=16, max_depth=3), split_threshold=8, exact_threshold=8, ef=32)


class CuratorMachine(OracleMachine):
    """The shared oracle machine plus compaction, retraining and saving, and a check of the reader table."""

    def new_index(self) -> CuratorIndex:
        return CuratorIndex(DIM, SMALL)

    def search(self, tenant: int, k: int, exhaustive: bool) -> np.ndarray:
        return self.index.search(QUERIES, tenant, k, ef=len(POOL) if exhaustive else None)[1]

    @rule()
    def build(self) -> None:
        """Compaction renumbers every row: searches, grants and removals must not notice."""
        self.index.build()

    @rule(sample_size=st.integers(20, 400))
    def retrain(self, sample_size: int) -> None:
        """A new tree under the same vectors: every tenant must read exactly what it read before."""
        if self.readers:
            self.index.retrain(sample_size)

    @rule()
    def save_and_load(self) -> None:
        if not hasattr(self, "_dir"):
            self._dir = Path(tempfile.mkdtemp(prefix="curator-"))
        self.index.save(self._dir / "curator.idx")
        self.index = CuratorIndex.load(self._dir / "curator.idx")

    def teardown(self) -> None:
        if hasattr(self, "_dir"):
            shutil.rmtree(self._dir)

    @invariant()
    def reader_table_matches_the_model(self) -> None:
        """Inline slots and the overflow table together list each row's readers, through renumbering and reloads."""
        ids = np.fromiter(self.readers, dtype=np.int64, count=len(self.readers))
        for i, row in zip(ids.tolist(), self.index._table.rows(ids).tolist()):
            assert sorted(self.index._readers.tenants(row)) == sorted(self.readers[i]), i


def test_curator_matches_the_exact_oracle() -> None:
    """Rows reach more readers than the inline slots hold, so the overflow table is exercised too."""
    OracleMachine.most_readers = 0
    run_state_machine_as_test(
        CuratorMachine, settings=settings(max_examples=30, stateful_step_count=25, deadline=None, suppress_health_check=list(HealthCheck))
    )
    assert OracleMachine.most_readers > _Readers.SLOTS


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
