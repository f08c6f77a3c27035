"""A Curator-style tenant index: one shared clustering tree, each tenant's index a sub-tree of it.

Each tenant's sub-tree is a cut through the shared tree (`index/cuts.py`) whose terminals hold
the row numbers of the tenant's vectors below them (never a copy of a vector), kept as the
arrays a search scans and changed in place by each write (`index/shortlists.py`).

Search ranks the tenant's terminals by the mean of the tenant's own vectors in each (not by the
shared node's centroid, which summarises every tenant below it: the tenant's mean is where its
vectors are, as a per-tenant IVF's centroid is) and scans them best first until `ef` vectors,
and at least k, have been seen, then keeps the exact top k. A tenant with at most
`exact_threshold` vectors is scanned exactly, as the big-ann-benchmarks filter baseline does for
small tenants.
"""

import pickle
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from index.attributes import ChunkFilter, allowed_positions
from index.contract import IdPredicate, Metric, check_ids, check_k, check_tenant, check_vectors
from index.cuts import Cuts
from index.readers import Readers
from index.topk import ids_of, top_k, top_k_in_terminals
from index.tree import ClusterTree, TreeConfig, sample_rows
from index.vectors import VectorTable

ASSIGN_BATCH = 16_384  # rows a retraining places in its new tree at a time: bounds the copy it gathers
RETRAIN_HEADROOM = 8  # a retraining first grows the table by 1/8: a growth while it reads the table copies it, under the caller's lock
FINAL_REPLAY = 64  # writes a retraining replays under the caller's lock when it swaps; more are replayed without it first


@dataclass(frozen=True, slots=True)
class CuratorConfig:
    tree: TreeConfig = TreeConfig()
    split_threshold: int = 256
    exact_threshold: int = 128  # tenants this small (or no larger than ef) are scanned exactly
    ef: int = 256  # vectors scanned per query, the search-effort knob
    metric: Metric = "ip"


class CuratorIndex:
    def __init__(self, dim: int, config: CuratorConfig = CuratorConfig()) -> None:
        if config.metric not in ("ip", "l2"):
            raise ValueError(f"metric: 'ip' or 'l2', got {config.metric!r}")
        self.dim = dim
        self.config = config
        self._table = VectorTable(dim)
        root = ClusterTree.root_only(dim, config.metric)  # until trained: every tenant scanned whole
        self._cuts = Cuts(root, np.empty(0, dtype=np.int32), config.split_threshold)
        self.trained_on = 0  # sample size of the last training
        self._readers = Readers()
        self._retraining: _Retraining | None = None
        self._journal: list[tuple[bool, int, int]] | None = None  # (insert?, row, tenant) since a retraining's snapshot

    def __len__(self) -> int:
        return len(self._table)

    @property
    def tree(self) -> ClusterTree:
        return self._cuts.tree

    @property
    def terminals_built(self) -> int:
        """Terminals whose search arrays were computed from all their rows, since the tree was made."""
        return self._cuts.terminals_built

    # ---- building

    def train(self, sample: np.ndarray) -> None:
        """Build the shared tree from a sample; the index must be empty."""
        sample = check_vectors(sample, self.dim, "sample")
        if len(self._table):
            raise ValueError("sample: train before adding vectors")
        if len(sample) == 0:
            raise ValueError("sample: needs at least one vector")
        self._cuts = Cuts(ClusterTree.train(sample, self.config.metric, self.config.tree), self._cuts.leaf, self.config.split_threshold)
        self.trained_on = len(sample)

    def add(self, ids: np.ndarray, vectors: np.ndarray, tenant: int) -> None:
        vectors = check_vectors(vectors, self.dim)
        ids = check_ids(ids, len(vectors))
        tenant = check_tenant(tenant)
        leaves = self.tree.assign(vectors)
        rows = self._table.add(ids, vectors)
        if self._readers.capacity < self._table.capacity:
            self._readers.grow(self._table.capacity)
        self._cuts.reserve(self._table.capacity)
        self._cuts.leaf[rows] = leaves
        for row in rows.tolist():
            self._readers.set_owner(row, tenant)
            self._insert(row, tenant)

    def grant(self, ids: np.ndarray, tenant: int) -> None:
        rows = self._table.rows(check_ids(ids))
        tenant = check_tenant(tenant)
        for row in rows.tolist():
            if self._readers.add(row, tenant):
                self._insert(row, tenant)

    def revoke(self, ids: np.ndarray, tenant: int) -> None:
        rows = self._table.rows(check_ids(ids))
        tenant = check_tenant(tenant)
        for row in rows.tolist():
            if self._readers.discard(row, tenant):
                self._erase(row, tenant)

    def remove(self, ids: np.ndarray) -> None:
        """Remove vectors from every tenant; ids not present are ignored."""
        ids = check_ids(ids)
        present = np.array([i for i in ids.tolist() if i in self._table], dtype=np.int64)
        for row in self._table.rows(present).tolist():
            for tenant in self._readers.pop(row):
                self._erase(row, tenant)
        self._table.remove(present)

    def _insert(self, row: int, tenant: int) -> None:
        self._cuts.insert(row, tenant, self._table.vectors)
        if self._journal is not None:
            self._journal.append((True, row, tenant))

    def _erase(self, row: int, tenant: int) -> None:
        self._cuts.erase(row, tenant, self._table.vectors)
        if self._journal is not None:
            self._journal.append((False, row, tenant))

    def build(self) -> None:
        """After a bulk load: store the vectors leaf by leaf, drop spare capacity, recompute every tenant's search arrays.

        A search scans a tenant's rows under a few nodes, scattered over the table in insertion
        order; renumbered leaf by leaf (and each shortlist ascending) they sit in a few contiguous
        stretches, which the scan reads far faster than rows spread over the whole table. A
        retraining under way is abandoned: its rows would no longer be the table's.
        """
        self._end_retraining()
        live = np.flatnonzero(self._table.ids >= 0)
        order = live[np.argsort(self._cuts.leaf[live], kind="stable")]
        new_of_old = self._table.compact(order)
        self._readers.reorder(order, new_of_old)
        self._cuts.leaf = self._cuts.leaf[order]
        self._cuts.renumber(new_of_old, self._table.vectors)

    # ---- retraining

    def retrain(self, sample_size: int, seed: int = 0, lock: AbstractContextManager = nullcontext()) -> bool:
        """Train a new tree on a sample of the stored vectors and move every vector into it: vectors,
        ids and readers stay; leaves and every tenant's cut are made anew. For an index grown far
        past the sample its tree was trained on.

        `lock` is the caller's lock around this index; the calling thread must not hold it. The
        work (training, placing every vector, cutting every tenant's sub-tree) runs without it, on
        a snapshot: the lock is taken to snapshot the index, for each round that hands over the
        writes made since, and to swap the new tree in after replaying the last few of them, so
        searches and writes go on meanwhile. True once swapped in; False if a `build()` or another
        retraining overtook this one (the index is then as that left it).
        """
        with lock:
            job = self._start_retraining(sample_size, seed)
        try:
            job.build(self.config)
            while True:
                with lock:
                    if self._retraining is not job:
                        return False
                    pending, vectors = self._journal[job.replayed :], self._table.vectors
                    if len(pending) <= FINAL_REPLAY:
                        job.replay(pending, vectors)
                        job.cuts.reserve(self._table.capacity)
                        self._cuts, self.trained_on = job.cuts, len(job.sample)
                        self._end_retraining()
                        return True
                job.replay(pending, vectors)
                del vectors  # the table may move its map again in place
        finally:
            with lock:
                if self._retraining is job:
                    self._end_retraining()

    def _start_retraining(self, sample_size: int, seed: int) -> "_Retraining":
        live = np.flatnonzero(self._table.ids >= 0)
        if len(live) == 0:
            raise ValueError("retrain: the index is empty")
        self._end_retraining()
        self._table.reserve(self._table.capacity + self._table.capacity // RETRAIN_HEADROOM)
        self._readers.grow(self._table.capacity)
        self._cuts.reserve(self._table.capacity)
        self._retraining = _Retraining(live, live[sample_rows(len(live), sample_size, seed)], self._readers.copy(), self._table.vectors)
        self._journal = []
        self._table.hold_freed()
        return self._retraining

    def _end_retraining(self) -> None:
        self._retraining, self._journal = None, None
        self._table.release_freed()

    # ---- searching

    def search(
        self, queries: np.ndarray, tenant: int, k: int, where: IdPredicate | None = None, ef: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """With `where`, the scan tests the rows it reaches and goes further the fewer pass (until
        the geometric mean of rows seen and rows passed reaches `ef`: `top_k_in_terminals`), so it
        is exact when few of the tenant's rows pass. A `ChunkFilter` is run inside the scan; any
        other predicate is first evaluated over all the tenant's rows."""
        queries = check_vectors(queries, self.dim, "queries")
        k = check_k(k)
        ef = max(k, self.config.ef if ef is None else check_k(ef))
        sub = self._cuts.tenants.get(check_tenant(tenant))
        exact = max(self.config.exact_threshold, ef)
        if sub is None:
            distances, found = top_k(queries, self._table.vectors, np.empty(0, np.int64), k, self.config.metric)
        elif where is None:
            cover = sub.size if sub.size <= exact else ef
            distances, found = top_k_in_terminals(queries, self._table.vectors, *sub.lists.search_arrays(), cover, k, self.config.metric)
        else:
            arrays = sub.lists.search_arrays()
            if not isinstance(where, ChunkFilter):
                where = allowed_positions(self._allowed(where, *arrays[2:]))
            distances, found = top_k_in_terminals(
                queries, self._table.vectors, *arrays, ef, k, self.config.metric, where, self._table.ids
            )
        return distances, ids_of(self._table.ids, found)

    def _allowed(self, where: IdPredicate, starts: np.ndarray, lengths: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """bool per entry of the tenant's arena `rows`: which of its terminals' rows `where` passes."""
        positions = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(lengths.sum())
        allowed = np.zeros(len(rows), dtype=np.bool_)
        allowed[positions] = where(self._table.ids[rows[positions]])
        return allowed

    # ---- accounting and persistence

    def memory_bytes(self) -> int:
        """Vector table, readers, tree, leaf map, and every tenant's node table and shortlists (spare room included)."""
        return self._table.nbytes + self._readers.nbytes + self._cuts.nbytes

    def save(self, path: Path) -> float:
        """Write the whole index to one file (atomically); returns the seconds it took. A retraining
        under way is not saved: the loaded index has the tree it has now."""
        started = time.perf_counter()
        path = Path(path)
        staging = path.with_name(path.name + ".tmp")
        state = {**self.__dict__, "_retraining": None, "_journal": None}
        with staging.open("wb") as f:
            pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)
        staging.replace(path)
        return time.perf_counter() - started

    @classmethod
    def load(cls, path: Path) -> "CuratorIndex":
        index = cls.__new__(cls)
        with Path(path).open("rb") as f:
            index.__dict__.update(pickle.load(f))
        return index


class _Retraining:
    """A retraining's snapshot (live rows, the training sample's rows, the readers, a view of the
    vectors) and the cuts it builds from it without the caller's lock, then brings up to date."""

    def __init__(self, live: np.ndarray, sample: np.ndarray, readers: Readers, vectors: np.ndarray) -> None:
        self.live, self.sample, self.readers, self.vectors = live, sample, readers, vectors
        self.cuts: Cuts | None = None
        self.replayed = 0  # journal entries applied to `cuts`

    def build(self, config: CuratorConfig) -> None:
        tree = ClusterTree.train(self.vectors[self.sample], config.metric, config.tree)
        cuts = Cuts(tree, np.full(len(self.vectors), -1, dtype=np.int32), config.split_threshold)
        for start in range(0, len(self.live), ASSIGN_BATCH):
            rows = self.live[start : start + ASSIGN_BATCH]
            cuts.leaf[rows] = tree.assign(self.vectors[rows])
        cuts.tenants = {tenant: cuts.cut(rows, self.vectors) for tenant, rows in self.readers.rows_by_tenant().items()}
        self.cuts, self.vectors, self.readers = cuts, None, None

    def replay(self, pending: list[tuple[bool, int, int]], vectors: np.ndarray) -> None:
        """Apply writes made since the snapshot; rows added since are placed in the new tree first."""
        self.cuts.reserve(len(vectors))
        fresh = np.unique(np.array([row for insert, row, _ in pending if insert], dtype=np.int64))
        fresh = fresh[self.cuts.leaf[fresh] < 0]
        if len(fresh):
            self.cuts.leaf[fresh] = self.cuts.tree.assign(vectors[fresh])
        for insert, row, tenant in pending:
            (self.cuts.insert if insert else self.cuts.erase)(row, tenant, vectors)
        self.replayed += len(pending)
