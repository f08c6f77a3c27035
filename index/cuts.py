"""Every tenant's cut through one shared tree, kept as each write arrives.

For each tenant a cut: internal nodes where the tenant has more than `split_threshold` vectors
below, and terminal nodes holding the tenant's rows below them (`Shortlists`, which are also the
arrays a search scans). A terminal that grows past the threshold splits into its children; when
deletions bring a node back under it, the sub-tree merges back into one terminal. Only the
terminals a write touches change, so a write costs the same in a tenant of a hundred vectors
and of a million. The membership test "does tenant t have vectors under node n" is a lookup
in the tenant's own node table, smaller and faster here than a Bloom filter per node.

`vectors` arguments are the vector table (rows index it); a retraining passes a view of it that
it reads without the caller's lock (see `CuratorIndex.retrain`).
"""

from dataclasses import dataclass, field

import numpy as np

from index.shortlists import Shortlists
from index.tree import ClusterTree
from index.vectors import grown


@dataclass(slots=True)
class SubTree:
    """One tenant's cut: vectors below each of its nodes, internal and terminal, and its terminals."""

    lists: Shortlists
    counts: dict[int, int] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.lists.size


class Cuts:
    def __init__(self, tree: ClusterTree, leaf: np.ndarray, split_threshold: int) -> None:
        self.tree = tree
        self.leaf = leaf  # row -> leaf node, -1 for rows not placed in this tree
        self.split_threshold = split_threshold
        self.tenants: dict[int, SubTree] = {}
        self.terminals_built = 0  # terminals whose sum was computed from their rows: the cost a write may not grow with

    def reserve(self, rows: int) -> None:
        if len(self.leaf) < rows:
            self.leaf = grown(self.leaf, rows, fill=-1)

    def insert(self, row: int, tenant: int, vectors: np.ndarray) -> None:
        sub = self.tenants.get(tenant)
        if sub is None:
            sub = self.tenants[tenant] = SubTree(Shortlists(vectors.shape[1], self.tree.metric == "l2"))
        for node in self.tree.paths[int(self.leaf[row])].tolist():
            count = sub.counts.get(node, 0) + 1
            sub.counts[node] = count
            if node in sub.lists:
                sub.lists.append(node, row, vectors[row])
                if count > self.split_threshold and not self.tree.is_leaf(node):
                    self._place(sub, sub.lists.pop(node), node, vectors)
                return
            if count == 1:  # the tenant's first vector below this node
                self._terminal(sub, node, np.array([row]), vectors)
                return

    def erase(self, row: int, tenant: int, vectors: np.ndarray) -> None:
        sub = self.tenants[tenant]
        merge = None  # the highest internal node the erase brings down to the threshold
        for node in self.tree.paths[int(self.leaf[row])].tolist():
            count = sub.counts[node] - 1
            if count:
                sub.counts[node] = count
            else:
                del sub.counts[node]
            if node in sub.lists:
                sub.lists.discard(node, row, vectors[row])
                break
            if merge is None and 0 < count <= self.split_threshold:
                merge = node
        if merge is not None:
            self._terminal(sub, merge, self._collect(sub, merge), vectors)
        if not sub.counts:
            del self.tenants[tenant]

    def cut(self, rows: np.ndarray, vectors: np.ndarray) -> SubTree:
        """A tenant's cut for its `rows`: what inserting them one by one would leave, computed top-down."""
        counts: dict[int, int] = {}
        terminals: dict[int, np.ndarray] = {}
        self._divide(rows, 0, counts, terminals)
        self.terminals_built += len(terminals)
        return SubTree(Shortlists.of(vectors.shape[1], self.tree.metric == "l2", terminals, vectors), counts)

    def _place(self, sub: SubTree, rows: np.ndarray, node: int, vectors: np.ndarray) -> None:
        """Put `rows` (all the tenant's rows below `node`) into terminals at or below `node`."""
        terminals: dict[int, np.ndarray] = {}
        self._divide(rows, node, sub.counts, terminals)
        for child, part in terminals.items():
            self._terminal(sub, child, part, vectors)

    def _divide(self, rows: np.ndarray, node: int, counts: dict[int, int], terminals: dict[int, np.ndarray]) -> None:
        """Record the counts and terminals of the cut of `rows` below `node`: a node with more than
        the threshold below it, and not a leaf, is divided among its children."""
        counts[node] = len(rows)
        if len(rows) <= self.split_threshold or self.tree.is_leaf(node):
            terminals[node] = rows
            return
        below = self.tree.ancestors(self.leaf[rows], int(self.tree.depth[node]) + 1)
        order = np.argsort(below, kind="stable")
        children, starts = np.unique(below[order], return_index=True)
        for child, part in zip(children.tolist(), np.split(rows[order], starts[1:])):
            self._divide(part, child, counts, terminals)

    def _terminal(self, sub: SubTree, node: int, rows: np.ndarray, vectors: np.ndarray) -> None:
        self.terminals_built += 1
        sub.lists.add_terminal(node, rows, vectors[rows].sum(0))

    def _collect(self, sub: SubTree, node: int) -> np.ndarray:
        """Every row of the tenant below `node`, its terminals there removed and its counts below dropped."""
        if node in sub.lists:
            return sub.lists.pop(node)
        parts = []
        for child in self.tree.children[node].tolist():
            if child in sub.counts:
                parts.append(self._collect(sub, child))
                del sub.counts[child]
        return np.concatenate(parts)

    def renumber(self, new_of_old: np.ndarray, vectors: np.ndarray) -> None:
        """Follow a renumbering of the table's rows; each terminal's rows ascending, no spare room, sums recomputed."""
        for sub in self.tenants.values():
            terminals = {node: np.sort(new_of_old[rows]) for node, rows in sub.lists.terminals().items()}
            self.terminals_built += len(terminals)
            sub.lists = Shortlists.of(vectors.shape[1], self.tree.metric == "l2", terminals, vectors)

    @property
    def nbytes(self) -> int:
        """Tree, leaf map, and every tenant's node table (~16 bytes an entry) and shortlists."""
        total = self.tree.nbytes + self.leaf.nbytes
        return total + sum(16 * len(sub.counts) + sub.lists.nbytes for sub in self.tenants.values())
