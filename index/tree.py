"""The shared hierarchical k-means tree every tenant's sub-tree lives in."""

from dataclasses import dataclass

import faiss
import numpy as np

from index.contract import Metric


@dataclass(frozen=True, slots=True)
class TreeConfig:
    fanout: int = 16
    leaf_size: int = 64  # a training node with more sample points than this is split
    max_depth: int = 4
    kmeans_iterations: int = 10
    seed: int = 1234


class ClusterTree:
    """Nodes numbered breadth first from the root (0), so a node's children are consecutive numbers;
    each vector belongs to one leaf."""

    def __init__(self, centroids: np.ndarray, parent: np.ndarray, metric: Metric) -> None:
        self.centroids = centroids
        self.parent = parent
        self.metric = metric
        self.children: list[np.ndarray] = [np.flatnonzero(parent == n) for n in range(len(parent))]
        if any(len(c) and c[-1] - c[0] + 1 != len(c) for c in self.children):
            raise ValueError("parent: children of a node must be numbered consecutively (breadth first)")
        depth = np.zeros(len(parent), dtype=np.int64)
        for node in range(1, len(parent)):
            depth[node] = depth[parent[node]] + 1
        self.depth = depth
        self.paths: dict[int, np.ndarray] = {}
        for node in range(len(parent)):
            if len(self.children[node]) == 0:
                path = [node]
                while parent[path[-1]] >= 0:
                    path.append(int(parent[path[-1]]))
                self.paths[node] = np.array(path[::-1], dtype=np.int64)

    @classmethod
    def root_only(cls, dim: int, metric: Metric) -> "ClusterTree":
        """The tree of an untrained index: one node, so each tenant is one shortlist."""
        return cls(np.zeros((1, dim), dtype=np.float32), np.array([-1], dtype=np.int64), metric)

    @classmethod
    def train(cls, sample: np.ndarray, metric: Metric, config: TreeConfig) -> "ClusterTree":
        centroids = [sample.mean(0)]
        parent = [-1]
        frontier = [(0, np.arange(len(sample)), 0)]
        while frontier:
            node, members, depth = frontier.pop(0)
            if len(members) <= config.leaf_size or depth >= config.max_depth:
                continue
            k = min(config.fanout, max(2, len(members) // max(1, config.leaf_size // 2)))
            kmeans = faiss.Kmeans(
                sample.shape[1], k, niter=config.kmeans_iterations, seed=config.seed + node,
                spherical=metric == "ip", min_points_per_centroid=1, max_points_per_centroid=1 << 20,
            )
            kmeans.train(sample[members])
            assignment = _nearest(sample[members], kmeans.centroids, metric)
            for cluster in range(k):
                chosen = members[assignment == cluster]
                if len(chosen) == 0:
                    continue
                centroids.append(kmeans.centroids[cluster])
                parent.append(node)
                frontier.append((len(parent) - 1, chosen, depth + 1))
        return cls(np.asarray(centroids, dtype=np.float32), np.asarray(parent, dtype=np.int64), metric)

    def assign(self, vectors: np.ndarray) -> np.ndarray:
        """Leaf of each vector by greedy descent: the closest child centroid at every level."""
        if len(vectors) == 1:  # an online insert: descend directly, no grouping by node
            node = 0
            while len(children := self.children[node]):
                first = int(children[0])
                node = first + int(_nearest(vectors, self.centroids[first : first + len(children)], self.metric)[0])
            return np.array([node], dtype=np.int64)
        nodes = np.zeros(len(vectors), dtype=np.int64)
        active = np.arange(len(vectors))
        while len(active):
            still = []
            for node in np.unique(nodes[active]):
                children = self.children[node]
                if len(children) == 0:
                    continue
                members = active[nodes[active] == node]
                nodes[members] = children[_nearest(vectors[members], self.centroids[children], self.metric)]
                still.append(members)
            active = np.concatenate(still) if still else np.empty(0, dtype=np.int64)
        return nodes

    def is_leaf(self, node: int) -> bool:
        return len(self.children[node]) == 0

    @property
    def nbytes(self) -> int:
        return self.centroids.nbytes + self.parent.nbytes + self.depth.nbytes + sum(p.nbytes for p in self.paths.values())


def _nearest(vectors: np.ndarray, centroids: np.ndarray, metric: Metric) -> np.ndarray:
    scores = vectors @ centroids.T
    if metric == "l2":
        scores = 2 * scores - (centroids**2).sum(1)[None, :]
    return scores.argmax(1)
