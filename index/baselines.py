"""The baselines Curator is measured against, behind the same contract, on FAISS.

`PerTenantIndex`: one FAISS IVF-Flat or HNSW index per tenant; a granted vector is copied into
the grantee's index. `FilteredSharedIndex`: one FAISS index over all vectors, searched with an
`IDSelector` of the tenant's ids. Deletion from HNSW, which FAISS cannot remove from, hides the
ids with a selector until the index is rebuilt. `effort` is nprobe (IVF) or efSearch (HNSW).
A filtered search is what each design allows: a tenant's own index post-filters its results,
fetching more until k pass; the shared index narrows its selector to the matching ids.
"""

import math
from typing import Literal

import faiss
import numpy as np

from index.contract import IdPredicate, check_ids, check_k, check_tenant, check_vectors

Kind = Literal["ivf", "hnsw"]
HNSW_M = 32
SMALL_TENANT = 256  # below this an IVF tenant index is a flat scan (nothing to cluster)


def _new_index(kind: Kind, dim: int, training: np.ndarray) -> faiss.Index:
    if kind == "hnsw":
        index = faiss.index_factory(dim, f"IDMap2,HNSW{HNSW_M}", faiss.METRIC_INNER_PRODUCT)
        faiss.downcast_index(index.index).hnsw.efConstruction = 64
        return index
    if len(training) < SMALL_TENANT:
        return faiss.index_factory(dim, "IDMap2,Flat", faiss.METRIC_INNER_PRODUCT)
    nlist = max(1, min(4096, int(math.sqrt(len(training)))))
    index = faiss.index_factory(dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(training)
    return index


def _params(index: faiss.Index, effort: int, selector: faiss.IDSelector | None):
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(efSearch=max(effort, 1), sel=selector)
    if isinstance(inner, faiss.IndexIVF):
        return faiss.SearchParametersIVF(nprobe=max(effort, 1), sel=selector)
    return faiss.SearchParameters(sel=selector) if selector is not None else None


def _memory(index: faiss.Index) -> int:
    return len(faiss.serialize_index(index))


class PerTenantIndex:
    """A FAISS index per tenant, built from the tenant's vectors at its first search after changes."""

    def __init__(self, dim: int, kind: Kind = "ivf", effort: int = 16) -> None:
        self.dim, self.kind, self.effort = dim, kind, effort
        self._vectors: dict[int, np.ndarray] = {}  # id -> vector (the caller's copy for grants)
        self._owned: dict[int, dict[int, np.ndarray]] = {}  # tenant -> id -> vector
        self._indexes: dict[int, faiss.Index] = {}
        self._hidden: dict[int, set[int]] = {}  # tenant -> ids deleted from an HNSW index

    def train(self, sample: np.ndarray) -> None:
        check_vectors(sample, self.dim, "sample")

    def add(self, ids: np.ndarray, vectors: np.ndarray, tenant: int) -> None:
        vectors = check_vectors(vectors, self.dim)
        ids = check_ids(ids, len(vectors))
        self._vectors.update(zip(ids.tolist(), vectors))
        self._put(ids, vectors, check_tenant(tenant))

    def _put(self, ids: np.ndarray, vectors: np.ndarray, tenant: int) -> None:
        """Make `ids` readable by `tenant`; ids it reads already are left as they are."""
        owned = self._owned.setdefault(tenant, {})
        fresh = np.array([i not in owned for i in ids.tolist()], dtype=bool)
        ids, vectors = ids[fresh], vectors[fresh]
        owned.update(zip(ids.tolist(), vectors))
        index = self._indexes.get(tenant)
        if index is None or len(ids) == 0:
            return
        if not self._hidden.get(tenant, set()).isdisjoint(ids.tolist()):
            # HNSW cannot take a removed id back (its old vector stays): rebuilt at the next search
            del self._indexes[tenant]
            self._hidden.pop(tenant, None)
            return
        index.add_with_ids(vectors, ids)

    def grant(self, ids: np.ndarray, tenant: int) -> None:
        ids = check_ids(ids)
        self._put(ids, np.stack([self._vectors[i] for i in ids.tolist()]), check_tenant(tenant))

    def revoke(self, ids: np.ndarray, tenant: int) -> None:
        self._drop(check_ids(ids), check_tenant(tenant))

    def remove(self, ids: np.ndarray) -> None:
        ids = check_ids(ids)
        for tenant, owned in self._owned.items():
            mine = np.array([i for i in ids.tolist() if i in owned], dtype=np.int64)
            if len(mine):
                self._drop(mine, tenant)
        for i in ids.tolist():
            self._vectors.pop(i, None)

    def _drop(self, ids: np.ndarray, tenant: int) -> None:
        owned = self._owned.get(tenant, {})
        for i in ids.tolist():
            owned.pop(i, None)
        index = self._indexes.get(tenant)
        if index is None:
            return
        if self.kind == "hnsw":
            self._hidden.setdefault(tenant, set()).update(ids.tolist())
        else:
            index.remove_ids(faiss.IDSelectorBatch(ids))

    def search(self, queries: np.ndarray, tenant: int, k: int, where: IdPredicate | None = None) -> tuple[np.ndarray, np.ndarray]:
        queries = check_vectors(queries, self.dim, "queries")
        k, tenant = check_k(k), check_tenant(tenant)
        if where is None:
            return self._search(queries, tenant, k)
        distances, found = np.empty((len(queries), k), np.float32), np.empty((len(queries), k), np.int64)
        for q in range(len(queries)):
            fetch = 2 * k
            while True:  # over-fetch until k pass or the tenant's index has no more
                d, f = self._search(queries[q : q + 1], tenant, fetch)
                keep = (f[0] >= 0) & where(f[0])
                if keep.sum() >= k or (f[0] < 0).any() or fetch >= len(self._owned.get(tenant, ())):
                    break
                fetch *= 4
            d, f = d[0][keep][:k], f[0][keep][:k]
            distances[q], found[q] = np.pad(d, (0, k - len(d)), constant_values=-np.inf), np.pad(f, (0, k - len(f)), constant_values=-1)
        return distances, found

    def _search(self, queries: np.ndarray, tenant: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        owned = self._owned.get(tenant)
        if not owned:
            return np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
        index = self._indexes.get(tenant)
        if index is None:
            ids = np.fromiter(owned, dtype=np.int64, count=len(owned))
            vectors = np.stack(list(owned.values()))
            index = self._indexes[tenant] = _new_index(self.kind, self.dim, vectors)
            index.add_with_ids(vectors, ids)
        hidden = self._hidden.get(tenant)
        selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(np.fromiter(hidden, np.int64))) if hidden else None
        distances, found = index.search(queries, k, params=_params(index, self.effort, selector))
        return np.where(found < 0, -np.inf, distances).astype(np.float32), found

    def build(self) -> None:
        """Build every tenant's index now (the benchmark times this as the build)."""
        probe = np.zeros((1, self.dim), np.float32)
        for tenant in list(self._owned):
            self.search(probe, tenant, 1)

    def memory_bytes(self) -> int:
        return sum(_memory(index) for index in self._indexes.values())


class FilteredSharedIndex:
    """One FAISS index over every vector; a search passes the tenant's ids as an IDSelector.

    FAISS holds each vector under a slot number of its own, never reused: FAISS HNSW cannot remove
    a vector, so an id removed and added back gets a new slot and its old vector is never selected.
    """

    def __init__(self, dim: int, kind: Kind = "ivf", effort: int = 16) -> None:
        self.dim, self.kind, self.effort = dim, kind, effort
        self._index: faiss.Index | None = None
        self._slot_of: dict[int, int] = {}  # id -> its current slot
        self._id_of_slot = np.empty(0, dtype=np.int64)  # slot -> id, -1 once removed
        self._readable: dict[int, set[int]] = {}  # tenant -> ids
        self._selectors: dict[int, tuple[faiss.IDSelector, np.ndarray]] = {}

    def train(self, sample: np.ndarray) -> None:
        sample = check_vectors(sample, self.dim, "sample")
        self._index = _new_index(self.kind, self.dim, sample)

    def _trained(self) -> faiss.Index:
        if self._index is None:
            raise ValueError("train: call train(sample) first")
        return self._index

    def add(self, ids: np.ndarray, vectors: np.ndarray, tenant: int) -> None:
        vectors = check_vectors(vectors, self.dim)
        ids = check_ids(ids, len(vectors))
        index = self._trained()
        if any(i in self._slot_of for i in ids.tolist()):
            raise ValueError("ids: already present; remove them first")
        slots = np.arange(len(self._id_of_slot), len(self._id_of_slot) + len(ids), dtype=np.int64)
        index.add_with_ids(vectors, slots)
        self._id_of_slot = np.concatenate((self._id_of_slot, ids))
        self._slot_of.update(zip(ids.tolist(), slots.tolist()))
        self._grant(ids, check_tenant(tenant))

    def _grant(self, ids: np.ndarray, tenant: int) -> None:
        self._readable.setdefault(tenant, set()).update(ids.tolist())
        self._selectors.pop(tenant, None)

    def grant(self, ids: np.ndarray, tenant: int) -> None:
        ids = check_ids(ids)
        missing = [i for i in ids.tolist() if i not in self._slot_of]
        if missing:
            raise KeyError(f"ids: not in the index: {missing[:5]}")
        self._grant(ids, check_tenant(tenant))

    def revoke(self, ids: np.ndarray, tenant: int) -> None:
        self._readable.get(check_tenant(tenant), set()).difference_update(check_ids(ids).tolist())
        self._selectors.pop(tenant, None)

    def remove(self, ids: np.ndarray) -> None:
        ids = check_ids(ids)
        index = self._trained()
        slots = np.array([self._slot_of.pop(i) for i in ids.tolist() if i in self._slot_of], dtype=np.int64)
        self._id_of_slot[slots] = -1
        if self.kind == "ivf":
            index.remove_ids(faiss.IDSelectorBatch(slots))  # HNSW cannot: the slot is never selected again
        for tenant, readable in self._readable.items():
            if not readable.isdisjoint(ids.tolist()):
                readable.difference_update(ids.tolist())
                self._selectors.pop(tenant, None)

    def search(self, queries: np.ndarray, tenant: int, k: int, where: IdPredicate | None = None) -> tuple[np.ndarray, np.ndarray]:
        queries = check_vectors(queries, self.dim, "queries")
        k, tenant = check_k(k), check_tenant(tenant)
        index = self._trained()
        if tenant not in self._selectors:
            slots = np.fromiter((self._slot_of[i] for i in self._readable.get(tenant, ())), dtype=np.int64)
            self._selectors[tenant] = (faiss.IDSelectorBatch(slots), slots)  # keep the slots alive with the selector
        selector, slots = self._selectors[tenant]
        if where is not None:
            slots = slots[where(self._id_of_slot[slots])]
            selector = faiss.IDSelectorBatch(slots)
        distances, found = index.search(queries, k, params=_params(index, self.effort, selector))
        ids = np.where(found < 0, -1, self._id_of_slot[np.maximum(found, 0)])
        return np.where(found < 0, -np.inf, distances).astype(np.float32), ids

    def build(self) -> None:
        """Nothing deferred: vectors are indexed as they are added."""

    def memory_bytes(self) -> int:
        selectors = sum(8 * len(r) for r in self._readable.values())
        return _memory(self._trained()) + selectors + self._id_of_slot.nbytes
