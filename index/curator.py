"""A Curator-style tenant index: one shared clustering tree, each tenant's index a sub-tree of it.

For each tenant the index keeps a cut through the shared tree: internal nodes where the tenant
has more than `split_threshold` vectors below, and terminal nodes holding the tenant's shortlist
(the row numbers of its vectors below that node, never a copy of a vector). A terminal that grows
past the threshold splits into its children; when deletions bring a node back under it, the
sub-tree merges back into one shortlist. The membership test "does tenant t have vectors under
node n" is a dictionary lookup in the tenant's own node table, which measured smaller and faster
here than a Bloom filter per node (a tenant's table has one entry per node of its sub-tree).

Search scores the query against the centroids of the tenant's terminals (best first) and scans
their shortlists until `ef` vectors have been seen, then keeps the exact top k of those. A tenant
with at most `exact_threshold` vectors is scanned exactly, as the big-ann-benchmarks filter
baseline does for small tenants.
"""

import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from index.contract import Metric, check_ids, check_k, check_tenant, check_vectors
from index.topk import ids_of, top_k, top_k_in_terminals
from index.tree import ClusterTree, TreeConfig, sample_rows
from index.vectors import VectorTable, grown


@dataclass(frozen=True, slots=True)
class CuratorConfig:
    tree: TreeConfig = TreeConfig()
    split_threshold: int = 256
    exact_threshold: int = 128  # tenants this small (or no larger than ef) are scanned exactly
    ef: int = 256  # vectors scanned per query, the search-effort knob
    metric: Metric = "ip"


@dataclass(slots=True)
class _SubTree:
    """One tenant's cut through the shared tree."""

    counts: dict[int, int] = field(default_factory=dict)  # internal and terminal nodes -> vectors below
    terminals: dict[int, np.ndarray] = field(default_factory=dict)  # terminal node -> rows
    view: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None  # nodes, centroids, offsets, rows

    @property
    def size(self) -> int:
        return self.counts.get(0, 0)


class CuratorIndex:
    def __init__(self, dim: int, config: CuratorConfig = CuratorConfig()) -> None:
        if config.metric not in ("ip", "l2"):
            raise ValueError(f"metric: 'ip' or 'l2', got {config.metric!r}")
        self.dim = dim
        self.config = config
        self._table = VectorTable(dim)
        self._tree = ClusterTree.root_only(dim, config.metric)  # until trained: every tenant scanned whole
        self.trained_on = 0  # sample size of the last training
        self._leaf = np.empty(0, dtype=np.int32)  # row -> leaf node
        self._readers = _Readers()
        self._tenants: dict[int, _SubTree] = {}

    def __len__(self) -> int:
        return len(self._table)

    # ---- building

    def train(self, sample: np.ndarray) -> None:
        """Build the shared tree from a sample; the index must be empty."""
        sample = check_vectors(sample, self.dim, "sample")
        if len(self._table):
            raise ValueError("sample: train before adding vectors")
        if len(sample) == 0:
            raise ValueError("sample: needs at least one vector")
        self._tree = ClusterTree.train(sample, self.config.metric, self.config.tree)
        self.trained_on = len(sample)

    @property
    def tree(self) -> ClusterTree:
        return self._tree

    def add(self, ids: np.ndarray, vectors: np.ndarray, tenant: int) -> None:
        vectors = check_vectors(vectors, self.dim)
        ids = check_ids(ids, len(vectors))
        tenant = check_tenant(tenant)
        leaves = self.tree.assign(vectors)
        rows = self._table.add(ids, vectors)
        if len(self._leaf) < self._table.capacity:
            self._leaf = grown(self._leaf, self._table.capacity)
            self._readers.grow(self._table.capacity)
        self._leaf[rows] = leaves
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
        sub = self._tenants.setdefault(tenant, _SubTree())
        sub.view = None
        for node in self.tree.paths[int(self._leaf[row])].tolist():
            count = sub.counts.get(node, 0) + 1
            sub.counts[node] = count
            if node in sub.terminals:
                sub.terminals[node] = np.concatenate((sub.terminals[node], (row,)))
                if count > self.config.split_threshold and not self.tree.is_leaf(node):
                    self._split(sub, node)
                return
            if count == 1:  # the tenant's first vector below this node
                sub.terminals[node] = np.array([row], dtype=np.int64)
                return

    def _split(self, sub: _SubTree, node: int) -> None:
        """Replace terminal `node` by its children's shortlists, splitting further where they are still too long."""
        rows = sub.terminals.pop(node)
        below = self.tree.ancestors(self._leaf[rows], int(self.tree.depth[node]) + 1)
        for child in np.unique(below).tolist():
            sub.terminals[child] = rows[below == child]
            sub.counts[child] = len(sub.terminals[child])
            if sub.counts[child] > self.config.split_threshold and not self.tree.is_leaf(child):
                self._split(sub, child)

    def retrain(self, sample_size: int, seed: int = 0) -> None:
        """Train a new tree on a sample of the stored vectors and move every vector into it, in
        place: vectors, ids and readers stay; leaves, shortlists and search arrays are rebuilt.

        For an index grown far past the sample its tree was trained on. Nothing is re-read or
        re-added one vector at a time: the leaves come from one batched descent and each tenant's
        sub-tree is cut top-down from its rows.
        """
        live = np.flatnonzero(self._table.ids >= 0)
        if len(live) == 0:
            raise ValueError("retrain: the index is empty")
        picks = live[sample_rows(len(live), sample_size, seed)]
        self._tree = ClusterTree.train(self._table.vectors[picks], self.config.metric, self.config.tree)
        self.trained_on = len(picks)
        self._leaf[live] = self.tree.assign(self._table.vectors[live])
        self._tenants = {tenant: self._subtree(rows) for tenant, rows in self._readers.rows_by_tenant().items()}
        self.build()

    def _subtree(self, rows: np.ndarray) -> _SubTree:
        """A tenant's cut through the tree for its `rows`: what adding them one by one would leave."""
        sub = _SubTree(counts={0: len(rows)}, terminals={0: rows})
        if len(rows) > self.config.split_threshold and not self.tree.is_leaf(0):
            self._split(sub, 0)
        return sub

    def _erase(self, row: int, tenant: int) -> None:
        sub = self._tenants[tenant]
        sub.view = None
        visited = []
        for node in self.tree.paths[int(self._leaf[row])].tolist():
            sub.counts[node] -= 1
            if sub.counts[node] == 0:
                del sub.counts[node]
            if node in sub.terminals:
                remaining = sub.terminals[node][sub.terminals[node] != row]
                if len(remaining):
                    sub.terminals[node] = remaining
                else:
                    del sub.terminals[node]
                break
            visited.append(node)
        for node in reversed(visited):  # merge sub-trees that fell back under the threshold
            if 0 < sub.counts.get(node, 0) <= self.config.split_threshold:
                sub.terminals[node] = self._collect(sub, node)
        if not sub.counts:
            del self._tenants[tenant]

    def _collect(self, sub: _SubTree, node: int) -> np.ndarray:
        """Every row of the tenant below `node`, its sub-tree's entries folded into `node`."""
        if node in sub.terminals:
            return sub.terminals.pop(node)
        parts = []
        for child in self.tree.children[node].tolist():
            if child in sub.counts:
                parts.append(self._collect(sub, child))
                if child != node:
                    del sub.counts[child]
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    # ---- searching

    def search(self, queries: np.ndarray, tenant: int, k: int, ef: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        queries = check_vectors(queries, self.dim, "queries")
        k = check_k(k)
        ef = self.config.ef if ef is None else check_k(ef)
        sub = self._tenants.get(check_tenant(tenant))
        if sub is None:
            distances, found = top_k(queries, self._table.vectors, np.empty(0, np.int64), k, self.config.metric)
        else:
            _, centroids, offsets, rows = self._view(sub)
            cover = sub.size if sub.size <= max(self.config.exact_threshold, ef) else ef
            distances, found = top_k_in_terminals(queries, self._table.vectors, centroids, offsets, rows, cover, k, self.config.metric)
        return distances, ids_of(self._table.ids, found)

    def _view(self, sub: _SubTree):
        """The tenant's terminals as arrays, built on the first search after a change.

        Each terminal is ranked by the mean of the tenant's own vectors in its shortlist, not by
        the shared node's centroid: the shared centroid summarises every tenant below the node,
        the tenant's mean is where its vectors actually are (as a per-tenant IVF's centroid is).
        """
        if sub.view is None:
            nodes = np.fromiter(sub.terminals, dtype=np.int64, count=len(sub.terminals))
            lists = [sub.terminals[n] for n in nodes.tolist()]
            sizes = np.array([len(r) for r in lists], dtype=np.int64)
            offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
            rows = np.concatenate(lists)
            means = np.add.reduceat(self._table.vectors[rows], offsets[:-1], axis=0) / sizes[:, None]
            if self.config.metric == "ip":
                means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
            sub.view = (nodes, means.astype(np.float32), offsets, rows)
        return sub.view

    def build(self) -> None:
        """After a bulk load: store the vectors leaf by leaf, drop spare capacity, prepare every tenant's search arrays.

        A search scans a tenant's rows under a few nodes, scattered over the table in insertion
        order; renumbered leaf by leaf (and each shortlist ascending) they sit in a few contiguous
        stretches, which the scan reads far faster than rows spread over the whole table.
        """
        live = np.flatnonzero(self._table.ids >= 0)
        order = live[np.argsort(self._leaf[live], kind="stable")]
        new_of_old = self._table.compact(order)
        self._leaf = self._leaf[order]
        self._readers.reorder(order, new_of_old)
        for sub in self._tenants.values():
            sub.terminals = {node: np.sort(new_of_old[rows]) for node, rows in sub.terminals.items()}
            sub.view = None
            self._view(sub)

    # ---- accounting and persistence

    def memory_bytes(self) -> int:
        """Vector table, tree, leaf map, readers, and every tenant's node table, shortlists and view."""
        total = self._table.nbytes + self._leaf.nbytes + self.tree.nbytes
        total += self._readers.nbytes
        for sub in self._tenants.values():
            total += 16 * len(sub.counts) + sum(r.nbytes + 16 for r in sub.terminals.values())
            if sub.view is not None:
                total += sum(a.nbytes for a in sub.view)
        return total

    def save(self, path: Path) -> float:
        """Write the whole index to one file (atomically); returns the seconds it took."""
        started = time.perf_counter()
        path = Path(path)
        staging = path.with_name(path.name + ".tmp")
        state = {k: v for k, v in self.__dict__.items()}
        for sub in self._tenants.values():
            sub.view = None
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


class _Readers:
    """Which tenants may read each row: up to SLOTS in a dense int32 array, any more in a side table."""

    SLOTS = 4

    def __init__(self) -> None:
        self._slots = np.full((0, self.SLOTS), -1, dtype=np.int32)
        self._overflow: dict[int, set[int]] = {}

    def grow(self, capacity: int) -> None:
        self._slots = grown(self._slots, capacity, fill=-1)

    def reorder(self, order: np.ndarray, new_of_old: np.ndarray) -> None:
        """Follow a renumbering of the rows: new row r is old row order[r]."""
        self._slots = self._slots[order]
        self._overflow = {int(new_of_old[row]): tenants for row, tenants in self._overflow.items()}

    def set_owner(self, row: int, tenant: int) -> None:
        self._slots[row] = -1
        self._slots[row, 0] = tenant
        self._overflow.pop(row, None)

    def rows_by_tenant(self) -> dict[int, np.ndarray]:
        """Every tenant's readable rows, ascending."""
        tenant_of = [self._slots.ravel()]
        row_of = [np.repeat(np.arange(len(self._slots)), self.SLOTS)]
        for row, tenants in self._overflow.items():
            tenant_of.append(np.fromiter(tenants, dtype=np.int32, count=len(tenants)))
            row_of.append(np.full(len(tenants), row, dtype=np.int64))
        tenant_of, row_of = np.concatenate(tenant_of), np.concatenate(row_of)
        keep = tenant_of >= 0
        tenant_of, row_of = tenant_of[keep], row_of[keep]
        order = np.lexsort((row_of, tenant_of))
        tenant_of, row_of = tenant_of[order], row_of[order]
        if len(tenant_of) == 0:
            return {}
        starts = np.flatnonzero(np.r_[True, tenant_of[1:] != tenant_of[:-1]])
        return {int(tenant_of[s]): rows for s, rows in zip(starts, np.split(row_of, starts[1:]))}

    def tenants(self, row: int) -> list[int]:
        return [t for t in self._slots[row].tolist() if t >= 0] + sorted(self._overflow.get(row, ()))

    def add(self, row: int, tenant: int) -> bool:
        """Record `tenant` as a reader; False if it was one already."""
        slots = self._slots[row].tolist()
        if tenant in slots or tenant in self._overflow.get(row, ()):
            return False
        if -1 in slots:
            self._slots[row, slots.index(-1)] = tenant
        else:
            self._overflow.setdefault(row, set()).add(tenant)
        return True

    def discard(self, row: int, tenant: int) -> bool:
        """Forget `tenant` as a reader; False if it was not one."""
        hit = np.flatnonzero(self._slots[row] == tenant)
        if len(hit):
            self._slots[row, hit[0]] = -1
            return True
        extra = self._overflow.get(row)
        if extra and tenant in extra:
            extra.discard(tenant)
            return True
        return False

    def pop(self, row: int) -> list[int]:
        tenants = self.tenants(row)
        self._slots[row] = -1
        self._overflow.pop(row, None)
        return tenants

    @property
    def nbytes(self) -> int:
        return self._slots.nbytes + sum(64 + 8 * len(s) for s in self._overflow.values())
