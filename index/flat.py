"""Exact tenant-restricted search: the ground truth every other index is measured against."""

import numpy as np

from index.contract import Metric, check_ids, check_k, check_tenant, check_vectors


class FlatTenantIndex:
    """Vectors in one growable array; each tenant holds the set of rows it may read.

    Search scores the tenant's rows against the queries (one matrix product) and keeps the top k.
    """

    def __init__(self, dim: int, metric: Metric = "ip") -> None:
        if metric not in ("ip", "l2"):
            raise ValueError(f"metric: 'ip' or 'l2', got {metric!r}")
        self.dim = dim
        self.metric = metric
        self._vectors = np.empty((0, dim), dtype=np.float32)
        self._ids = np.empty(0, dtype=np.int64)
        self._used = 0  # rows handed out, live or freed
        self._row_of: dict[int, int] = {}
        self._free: list[int] = []
        self._readers: dict[int, set[int]] = {}  # tenant -> rows
        self._tenants_of: dict[int, set[int]] = {}  # row -> tenants
        self._cached_rows: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._row_of)

    def train(self, sample: np.ndarray) -> None:
        """Nothing to learn; checks the sample's shape like every index does."""
        check_vectors(sample, self.dim, "sample")

    def add(self, ids: np.ndarray, vectors: np.ndarray, tenant: int) -> None:
        vectors = check_vectors(vectors, self.dim)
        ids = check_ids(ids, len(vectors))
        tenant = check_tenant(tenant)
        if len(np.unique(ids)) != len(ids) or any(int(i) in self._row_of for i in ids):
            raise ValueError("ids: already present or repeated; remove them first")
        rows = [self._free.pop() if self._free else self._grow() for _ in range(len(ids))]
        self._vectors[rows] = vectors
        self._ids[rows] = ids
        for chunk_id, row in zip(ids.tolist(), rows):
            self._row_of[chunk_id] = row
            self._tenants_of[row] = {tenant}
        self._readers.setdefault(tenant, set()).update(rows)
        self._cached_rows.pop(tenant, None)

    def _grow(self) -> int:
        """A fresh row at the end, doubling the arrays when full."""
        row = self._used
        if row == len(self._ids):
            capacity = max(1024, 2 * row)
            self._vectors = np.resize(self._vectors, (capacity, self.dim))
            self._ids = np.concatenate([self._ids, np.full(capacity - row, -1, dtype=np.int64)])
        self._used += 1
        return row

    def _rows(self, ids: np.ndarray) -> list[int]:
        missing = [int(i) for i in ids if int(i) not in self._row_of]
        if missing:
            raise KeyError(f"ids: not in the index: {missing[:5]}")
        return [self._row_of[int(i)] for i in ids]

    def grant(self, ids: np.ndarray, tenant: int) -> None:
        rows = self._rows(check_ids(ids))
        tenant = check_tenant(tenant)
        for row in rows:
            self._tenants_of[row].add(tenant)
        self._readers.setdefault(tenant, set()).update(rows)
        self._cached_rows.pop(tenant, None)

    def revoke(self, ids: np.ndarray, tenant: int) -> None:
        rows = self._rows(check_ids(ids))
        tenant = check_tenant(tenant)
        for row in rows:
            self._tenants_of[row].discard(tenant)
        self._readers.get(tenant, set()).difference_update(rows)
        self._cached_rows.pop(tenant, None)

    def remove(self, ids: np.ndarray) -> None:
        """Remove vectors from every tenant; ids not present are ignored."""
        for chunk_id in check_ids(ids).tolist():
            row = self._row_of.pop(chunk_id, None)
            if row is None:
                continue
            for tenant in self._tenants_of.pop(row):
                self._readers[tenant].discard(row)
                self._cached_rows.pop(tenant, None)
            self._ids[row] = -1
            self._free.append(row)

    def search(self, queries: np.ndarray, tenant: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = check_vectors(queries, self.dim, "queries")
        k = check_k(k)
        rows = self._tenant_rows(check_tenant(tenant))
        nq = len(queries)
        worst = -np.inf if self.metric == "ip" else np.inf
        distances = np.full((nq, k), worst, dtype=np.float32)
        ids = np.full((nq, k), -1, dtype=np.int64)
        if len(rows) == 0:
            return distances, ids
        candidates = self._vectors[rows]
        if self.metric == "ip":
            scores = queries @ candidates.T
        else:
            scores = -(
                (queries**2).sum(1, keepdims=True) - 2 * queries @ candidates.T + (candidates**2).sum(1)[None, :]
            )
        top = min(k, len(rows))
        best = np.argpartition(-scores, top - 1, axis=1)[:, :top]
        order = np.take_along_axis(scores, best, 1).argsort(axis=1)[:, ::-1]
        best = np.take_along_axis(best, order, 1)
        chosen = np.take_along_axis(scores, best, 1)
        distances[:, :top] = chosen if self.metric == "ip" else -chosen
        ids[:, :top] = self._ids[rows[best]]
        return distances, ids

    def _tenant_rows(self, tenant: int) -> np.ndarray:
        rows = self._cached_rows.get(tenant)
        if rows is None:
            rows = self._cached_rows[tenant] = np.fromiter(sorted(self._readers.get(tenant, ())), dtype=np.int64)
        return rows

    def memory_bytes(self) -> int:
        """Vectors plus ids plus an estimate of the membership sets (8 bytes a row reference)."""
        memberships = sum(len(t) for t in self._tenants_of.values())
        return self._vectors.nbytes + self._ids.nbytes + 2 * 8 * memberships
