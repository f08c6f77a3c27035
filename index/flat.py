"""Exact tenant-restricted search: the ground truth every other index is measured against."""

import numpy as np

from index.contract import IdPredicate, Metric, check_ids, check_k, check_tenant, check_vectors
from index.topk import ids_of, top_k
from index.vectors import VectorTable


class FlatTenantIndex:
    """Vectors in one table; each tenant holds the set of rows it may read.

    Search scores the tenant's rows against the queries (one matrix product) and keeps the top k.
    """

    def __init__(self, dim: int, metric: Metric = "ip") -> None:
        if metric not in ("ip", "l2"):
            raise ValueError(f"metric: 'ip' or 'l2', got {metric!r}")
        self.dim = dim
        self.metric = metric
        self._table = VectorTable(dim)
        self._readers: dict[int, set[int]] = {}  # tenant -> rows
        self._tenants_of: dict[int, set[int]] = {}  # row -> tenants
        self._cached_rows: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._table)

    def train(self, sample: np.ndarray) -> None:
        """Nothing to learn; checks the sample's shape like every index does."""
        check_vectors(sample, self.dim, "sample")

    def add(self, ids: np.ndarray, vectors: np.ndarray, tenant: int) -> None:
        vectors = check_vectors(vectors, self.dim)
        ids = check_ids(ids, len(vectors))
        tenant = check_tenant(tenant)
        rows = self._table.add(ids, vectors).tolist()
        for row in rows:
            self._tenants_of[row] = {tenant}
        self._readers.setdefault(tenant, set()).update(rows)
        self._cached_rows.pop(tenant, None)

    def grant(self, ids: np.ndarray, tenant: int) -> None:
        rows = self._table.rows(check_ids(ids)).tolist()
        tenant = check_tenant(tenant)
        for row in rows:
            self._tenants_of[row].add(tenant)
        self._readers.setdefault(tenant, set()).update(rows)
        self._cached_rows.pop(tenant, None)

    def revoke(self, ids: np.ndarray, tenant: int) -> None:
        rows = self._table.rows(check_ids(ids)).tolist()
        tenant = check_tenant(tenant)
        for row in rows:
            self._tenants_of[row].discard(tenant)
        self._readers.get(tenant, set()).difference_update(rows)
        self._cached_rows.pop(tenant, None)

    def remove(self, ids: np.ndarray) -> None:
        """Remove vectors from every tenant; ids not present are ignored."""
        for row in self._table.remove(check_ids(ids)).tolist():
            for tenant in self._tenants_of.pop(row):
                self._readers[tenant].discard(row)
                self._cached_rows.pop(tenant, None)

    def search(self, queries: np.ndarray, tenant: int, k: int, where: IdPredicate | None = None) -> tuple[np.ndarray, np.ndarray]:
        queries = check_vectors(queries, self.dim, "queries")
        rows = self._tenant_rows(check_tenant(tenant))
        if where is not None:
            rows = rows[where(self._table.ids[rows])]
        distances, found = top_k(queries, self._table.vectors, rows, check_k(k), self.metric)
        return distances, ids_of(self._table.ids, found)

    def _tenant_rows(self, tenant: int) -> np.ndarray:
        rows = self._cached_rows.get(tenant)
        if rows is None:
            rows = self._cached_rows[tenant] = np.fromiter(sorted(self._readers.get(tenant, ())), dtype=np.int64)
        return rows

    def memory_bytes(self) -> int:
        """The vector table plus an estimate of the membership sets (8 bytes a row reference, twice)."""
        memberships = sum(len(t) for t in self._tenants_of.values())
        return self._table.nbytes + 2 * 8 * memberships
