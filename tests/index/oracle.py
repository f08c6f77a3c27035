"""A hypothesis state machine that drives a tenant index and FlatTenantIndex, the exact oracle,
through the same random adds, grants, revokes and removes, and compares them after every step.

Subclasses say how to make the index (`new_index`) and how to search it at default and at
exhaustive effort (`search`); they may add rules of their own (compaction, retraining, saving).
"""

import numpy as np
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from index.contract import TenantIndex
from index.flat import FlatTenantIndex

DIM = 16
TENANTS = 8  # a row can gain more readers than CuratorIndex's 4 inline reader slots hold
PRELOADED = 300  # tenant 0 starts with this many: a per-tenant IVF index is built as IVF, not flat


def clustered(n: int, seed: int, clusters: int = 12) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, DIM))
    x = centers[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


POOL = clustered(600, seed=0)
QUERIES = POOL[[5, 150, 333, 480]]
tenants = st.integers(0, TENANTS - 1)


class OracleMachine(RuleBasedStateMachine):
    most_readers = 0  # the most readers any row had at a check, over all runs: the test resets and reads it

    def new_index(self) -> TenantIndex:
        raise NotImplementedError

    def search(self, tenant: int, k: int, exhaustive: bool) -> np.ndarray:
        """The ids `self.index` finds for QUERIES; `exhaustive` at an effort that sees every readable vector."""
        raise NotImplementedError

    @initialize()
    def start(self) -> None:
        self.index = self.new_index()
        self.index.train(POOL[:PRELOADED])
        self.flat = FlatTenantIndex(DIM)
        self.readers: dict[int, set[int]] = {}  # id -> tenants that may read it
        self._add(np.arange(PRELOADED), 0)

    def _add(self, ids: np.ndarray, tenant: int) -> None:
        self.index.add(ids, POOL[ids], tenant)
        self.flat.add(ids, POOL[ids], tenant)
        self.readers.update((i, {tenant}) for i in ids.tolist())

    @rule(start=st.integers(0, len(POOL) - 10), count=st.integers(1, 40), tenant=tenants)
    def add(self, start: int, count: int, tenant: int) -> None:
        ids = np.array([i for i in range(start, min(start + count, len(POOL))) if i not in self.readers], dtype=np.int64)
        if len(ids):
            self._add(ids, tenant)

    @precondition(lambda self: self.readers)
    @rule(data=st.data(), grantees=st.lists(tenants, min_size=1, max_size=TENANTS, unique=True), grant=st.booleans())
    def grant_or_revoke(self, data, grantees: list[int], grant: bool) -> None:
        """Grants reach several tenants at once, so rows gain five or more readers within a few steps."""
        ids = self._draw_present(data)
        for tenant in grantees:
            for index in (self.index, self.flat):
                (index.grant if grant else index.revoke)(ids, tenant)
            for i in ids.tolist():
                (self.readers[i].add if grant else self.readers[i].discard)(tenant)

    @precondition(lambda self: self.readers)
    @rule(data=st.data())
    def remove(self, data) -> None:
        ids = self._draw_present(data)
        self.index.remove(ids)
        self.flat.remove(ids)
        for i in ids.tolist():
            del self.readers[i]

    def _draw_present(self, data) -> np.ndarray:
        present = sorted(self.readers)
        return np.array(data.draw(st.lists(st.sampled_from(present), min_size=1, max_size=30, unique=True)), dtype=np.int64)

    @invariant()
    def returns_only_readable_and_exact_when_exhaustive(self) -> None:
        OracleMachine.most_readers = max(OracleMachine.most_readers, max(map(len, self.readers.values()), default=0))
        for tenant in range(TENANTS):
            readable = {i for i, readers in self.readers.items() if tenant in readers}
            assert_readable(self.search(tenant, 10, exhaustive=False), readable, tenant)
            everything = self.search(tenant, 10, exhaustive=True)
            assert_readable(everything, readable, tenant)
            _, truth = self.flat.search(QUERIES, tenant, 10)
            np.testing.assert_array_equal(np.sort(everything, 1), np.sort(truth, 1), err_msg=f"tenant {tenant}")


def assert_readable(found: np.ndarray, readable: set[int], tenant: int) -> None:
    """Each query's hits are distinct ids the tenant may read."""
    for row in found.tolist():
        hits = [i for i in row if i >= 0]
        assert len(hits) == len(set(hits)), (tenant, row)
        assert set(hits) <= readable, (tenant, set(hits) - readable)
