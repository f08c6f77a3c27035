"""CuratorIndex against FlatTenantIndex as the oracle: random adds, grants, revokes, removes, save/load."""

import shutil
import threading
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis import given
from hypothesis.stateful import invariant, rule, run_state_machine_as_test

from index.attributes import Attributes
from index.curator import CuratorConfig, CuratorIndex
from index.filters import Equals, Range, check_filter
from index.readers import Readers
from index.cuts import Cuts
from index.flat import FlatTenantIndex
from index.tree import TreeConfig
from tests.index.filter_oracle import filters, holds, metadata
from tests.index.oracle import DIM, POOL, QUERIES, TENANTS, OracleMachine, clustered, tenants

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

    @rule(sample_size=st.integers(20, 400), data=st.data())
    def retrain(self, sample_size: int, data) -> None:
        """A new tree under the same vectors, with writes landing between its snapshot and its swap:
        every tenant must read what it read before plus what those writes changed."""
        if self.readers:
            self.index.retrain(sample_size, lock=WritesAtHandOver(lambda: self._writes(data)))

    def _writes(self, data) -> None:
        for _ in range(data.draw(st.integers(0, 3), label="writes")):
            kind = data.draw(st.sampled_from(["add", "grant_or_revoke", "remove"]))
            if kind == "add":
                self.add(data.draw(st.integers(0, len(POOL) - 10)), data.draw(st.integers(1, 40)), data.draw(tenants))
            elif self.readers and kind == "grant_or_revoke":
                self.grant_or_revoke(data, data.draw(st.lists(tenants, min_size=1, max_size=3, unique=True)), data.draw(st.booleans()))
            elif self.readers:
                self.remove(data)

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
    def search_arrays_equal_a_rebuild(self) -> None:
        """Each tenant's cut and search arrays, changed in place write by write, are those cut afresh
        from its rows: the same terminals holding the same rows, sums equal up to float rounding."""
        cuts = self.index._cuts
        for tenant, sub in cuts.tenants.items():
            rows = np.concatenate(list(sub.lists.terminals().values()))
            fresh = cuts.cut(rows, self.index._table.vectors)
            assert sub.counts == fresh.counts, tenant
            mine, theirs = sub.lists.terminals(), fresh.lists.terminals()
            assert {n: sorted(r.tolist()) for n, r in mine.items()} == {n: sorted(r.tolist()) for n, r in theirs.items()}
            for node in mine:
                slot, other = sub.lists.slot_of[node], fresh.lists.slot_of[node]
                np.testing.assert_allclose(sub.lists.sums[slot], fresh.lists.sums[other], atol=1e-4)
                np.testing.assert_allclose(sub.lists.scale[slot], fresh.lists.scale[other], rtol=1e-3)
        assert sorted(cuts.tenants) == sorted({t for readers in self.readers.values() for t in readers})

    @invariant()
    def reader_table_matches_the_model(self) -> None:
        """Inline slots and the overflow table together list each row's readers, through renumbering and reloads."""
        ids = np.fromiter(self.readers, dtype=np.int64, count=len(self.readers))
        for i, row in zip(ids.tolist(), self.index._table.rows(ids).tolist()):
            assert sorted(self.index._readers.tenants(row)) == sorted(self.readers[i]), i


class WritesAtHandOver:
    """The caller's lock as `CuratorIndex.retrain` takes it, on one thread: entered the second time
    (the first hand-over after the snapshot) it first runs `writes`, as writes from other threads
    land while the retraining works without the lock."""

    def __init__(self, writes) -> None:
        self.writes, self.entered = writes, 0

    def __enter__(self) -> None:
        self.entered += 1
        if self.entered == 2:
            self.writes()

    def __exit__(self, *exc) -> None:
        return None


def test_curator_matches_the_exact_oracle() -> None:
    """Rows reach more readers than the inline slots hold, so the overflow table is exercised too."""
    OracleMachine.most_readers = 0
    run_state_machine_as_test(
        CuratorMachine, settings=settings(max_examples=30, stateful_step_count=25, deadline=None, suppress_health_check=list(HealthCheck))
    )
    assert OracleMachine.most_readers > Readers.SLOTS


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
    lists = curator._cuts.tenants[0].lists
    assert 0 not in lists and all(len(r) <= 8 or curator.tree.is_leaf(n) for n, r in lists.terminals().items())
    curator.remove(ids[:196])
    assert list(lists.terminals()) == [0] and sorted(lists.rows_of(0).tolist()) == [
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
    grown._cuts = Cuts(curator.tree, grown._cuts.leaf, SMALL.split_threshold)
    for tenant in range(3):
        mine = ids[:250][tenant_of[:250] == tenant]
        grown.add(mine, POOL[mine], tenant)
    grown.grant(ids[:120], 3)

    def shape(index: CuratorIndex) -> dict:
        return {
            tenant: {node: sorted(index._table.ids[rows].tolist()) for node, rows in sub.lists.terminals().items()}
            for tenant, sub in index._cuts.tenants.items()
        }

    assert curator.trained_on == 200 and len(curator.tree.centroids) > 1
    assert shape(curator) == shape(grown)
    assert {t: s.counts for t, s in curator._cuts.tenants.items()} == {t: s.counts for t, s in grown._cuts.tenants.items()}


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


def large_tenant(n: int = 40_000) -> tuple[CuratorIndex, np.ndarray]:
    """Default settings, one tenant of `n` clustered vectors after build(), and vectors not yet added."""
    vectors = clustered(n + 100, seed=4, clusters=300)
    curator = CuratorIndex(DIM)
    curator.train(vectors[:10_000])
    curator.add(np.arange(n), vectors[:n], 0)
    curator.build()
    return curator, vectors


def test_a_write_into_a_large_tenant_rebuilds_a_bounded_number_of_terminals() -> None:
    """Inserts, grants, revokes and deletes into a 40,000-vector tenant, each followed by a search:
    none recomputes more than a split's terminals, whatever the tenant's size."""
    curator, vectors = large_tenant()
    terminals = len(curator._cuts.tenants[0].lists)
    assert terminals > 200
    bound = curator.config.tree.fanout * curator.config.tree.max_depth  # a split cascading down every level
    built = []
    for i in range(40_000, 40_100):
        before = curator.terminals_built
        curator.add(np.array([i]), vectors[i : i + 1], 0)
        curator.grant(np.array([i - 40_000]), 1)
        curator.revoke(np.array([i - 40_000]), 1)
        curator.remove(np.array([i - 39_000]))
        curator.search(vectors[i : i + 1], 0, 10)
        built.append(curator.terminals_built - before)
    assert max(built) <= bound and sum(built) <= 2 * len(built), built
    assert curator.search(vectors[40_050:40_051], 0, 1)[1].tolist() == [[40_050]]


def test_search_returns_k_hits_when_the_tenant_can_read_k() -> None:
    curator, vectors = large_tenant()
    _, found = curator.search(vectors[:3], 0, 1000)
    assert all(len(set(row.tolist())) == 1000 and min(row) >= 0 for row in found)


def test_a_search_during_a_retrain_completes_before_it() -> None:
    """A retrain of a 200,000-vector index runs without the lock: a search, and writes (more than
    the retrain replays under the lock at its swap), go through between its snapshot and its swap,
    and the retrained index holds what they wrote."""
    n, tenants_count = 200_000, 20
    vectors = clustered(n + 300, seed=5, clusters=400)
    tenant_of = np.arange(n + 300) % tenants_count
    curator, flat = CuratorIndex(DIM), FlatTenantIndex(DIM)
    curator.train(vectors[:2_000])
    for index in (curator, flat):
        for tenant in range(tenants_count):
            mine = np.flatnonzero(tenant_of[:n] == tenant)
            index.add(mine, vectors[mine], tenant)
    lock, snapshot_taken, searched = threading.RLock(), threading.Event(), threading.Event()
    events = []

    class GatedLock:
        """The lock as the retraining takes it: after its snapshot it waits for the main thread's search."""

        def __init__(self) -> None:
            self.entered = 0

        def __enter__(self) -> None:
            self.entered += 1
            if self.entered == 2:
                snapshot_taken.set()
                assert searched.wait(120)
            lock.acquire()

        def __exit__(self, *exc) -> None:
            lock.release()

    def retrain() -> None:
        assert curator.retrain(10_000, lock=GatedLock())
        events.append("retrained")

    thread = threading.Thread(target=retrain)
    thread.start()
    assert snapshot_taken.wait(120)
    assert lock.acquire(timeout=120)
    try:
        _, found = curator.search(vectors[7:8], 7, 1)
        events.append("searched")
        for index in (curator, flat):
            added = np.arange(n, n + 300)
            index.add(added, vectors[added], 3)
            index.grant(np.arange(0, 100, 20), 3)
            index.remove(np.arange(40, 80))
    finally:
        lock.release()
    searched.set()
    thread.join(300)
    assert events == ["searched", "retrained"] and found.tolist() == [[7]]
    assert curator.trained_on == 10_000
    for tenant in (0, 3, 7):
        _, truth = flat.search(vectors[n : n + 20], tenant, 10)
        _, exact = curator.search(vectors[n : n + 20], tenant, 10, ef=n)
        np.testing.assert_array_equal(np.sort(exact, 1), np.sort(truth, 1))


def test_deleted_rows_are_reused_and_emptied_terminals_give_their_memory_back() -> None:
    """Deleting a tenant's vectors gives the memory of its emptied terminals back, and adding as
    many again (under new ids) reuses the freed rows: the index ends no larger than it was."""
    curator, vectors = large_tenant()
    before = curator.memory_bytes()
    curator.remove(np.arange(39_900))
    lists = curator._cuts.tenants[0].lists
    assert len(lists.nodes) < 2 * len(lists) + 32
    assert curator.memory_bytes() < 0.5 * before + curator._table.nbytes
    curator.add(np.arange(100_000, 139_900), vectors[:39_900], 0)
    assert curator._table.capacity == 40_000
    assert curator.memory_bytes() <= 1.05 * before


@pytest.mark.parametrize("selectivity", [0.5, 0.1, 0.01])
def test_filtered_search_keeps_recall_at_every_selectivity(selectivity: float) -> None:
    """Default settings on clustered data: the filtered top 10 against the exact filtered top 10,
    with another tenant's rows carrying the same metadata values and lying nearest (they never come back)."""
    curator, vectors = large_tenant(20_000)
    flat = FlatTenantIndex(DIM)
    flat.add(np.arange(20_000), vectors[:20_000], 0)
    others = np.arange(20_000, 20_100)
    for index in (curator, flat):
        index.add(others, vectors[others], 1)
    attributes = Attributes()
    rng = np.random.default_rng(5)
    attributes.add(np.arange(20_100), [{"bucket": int(b)} for b in rng.integers(0, 1000, 20_100)])
    where = Range("bucket", lt=1000 * selectivity)
    matches = attributes.compile(where)
    queries = vectors[others]  # the other tenant's own vectors: its rows are every query's nearest
    _, truth = flat.search(queries, 0, 10, where=matches)
    _, found = curator.search(queries, 0, 10, where=matches)
    returned = found[found >= 0]
    assert matches(returned).all() and (returned < 20_000).all()
    recall = np.mean([len(set(f) & set(t[t >= 0])) / (t >= 0).sum() for f, t in zip(found.tolist(), truth)])
    assert recall >= 0.95


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(0, 2**32 - 1),
    st.lists(metadata, min_size=1, max_size=12),
    st.lists(st.tuples(tenants, st.integers(0, len(POOL) - 1)), max_size=60),
    tenants,
    filters,
)
def test_filtered_search_returns_only_readable_matching_chunks(seed, kinds, grants, tenant, where) -> None:
    """Random owners, metadata (each row one of a few drawn dicts), grants and filters: every hit
    is readable and matches (by a plain evaluation of the filter); at exhaustive effort the hits
    are the exact filtered top k."""
    rng = np.random.default_rng(seed)
    owners = rng.integers(0, TENANTS, len(POOL))
    metas = [kinds[i] for i in rng.integers(0, len(kinds), len(POOL)).tolist()]
    curator, flat = CuratorIndex(DIM, SMALL), FlatTenantIndex(DIM)
    curator.train(POOL)
    attributes = Attributes()
    attributes.add(np.arange(len(POOL)), metas)
    for index in (curator, flat):
        for owner in np.unique(owners):
            ids = np.flatnonzero(owners == owner)
            index.add(ids, POOL[ids], int(owner))
        for grantee, chunk in grants:
            index.grant(np.array([chunk]), grantee)
    readable = set(np.flatnonzero(owners == tenant).tolist()) | {c for g, c in grants if g == tenant}
    _, truth = flat.search(QUERIES, tenant, 10, where=attributes.compile(check_filter(where)))
    # compiled, the filter runs inside the scan; a plain predicate is evaluated over the tenant's rows first
    for matches in (attributes.compile(where), lambda ids: attributes.compile(where)(ids)):
        _, found = curator.search(QUERIES, tenant, 10, where=matches)
        hits = found[found >= 0].tolist()
        assert set(hits) <= readable and all(holds(where, metas[i]) for i in hits)
        _, exhaustive = curator.search(QUERIES, tenant, 10, where=matches, ef=len(POOL))
        np.testing.assert_array_equal(np.sort(exhaustive, 1), np.sort(truth, 1))


def test_a_filter_passing_few_rows_of_a_large_tenant_gives_the_exact_filtered_top_k() -> None:
    """Twelve matching rows scattered over 40,000: the scan, which widens while fewer rows pass
    than it needs, reaches all of them."""
    curator, vectors = large_tenant()
    flat = FlatTenantIndex(DIM)
    flat.add(np.arange(40_000), vectors[:40_000], 0)
    attributes = Attributes()
    chosen = set(np.random.default_rng(9).choice(40_000, 12, replace=False).tolist())
    attributes.add(np.arange(40_000), [{"kind": "rare" if i in chosen else "common"} for i in range(40_000)])
    where = attributes.compile(check_filter(Equals("kind", "rare")))
    queries = vectors[40_000:40_020]
    _, found = curator.search(queries, 0, 10, where=where)
    _, truth = flat.search(queries, 0, 10, where=where)
    np.testing.assert_array_equal(found, truth)
    assert set(found.ravel().tolist()) <= chosen
