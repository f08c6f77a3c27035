"""The shared hierarchical k-means tree every tenant's sub-tree lives in."""

import logging
from dataclasses import dataclass

import faiss
import llvmlite.ir as llvm_ir
import numba
import numpy as np
from numba.extending import intrinsic

from index.contract import Metric
from index.topk import keep_best

log = logging.getLogger(__name__)

UNIT_TOLERANCE = 1e-3  # 'ip' training rows must have |norm - 1| within this
MAX_L2_NORM = 1e9  # 'l2' training rows must be shorter: faiss sums squares in float32, which overflow past ~1.8e19


@dataclass(frozen=True, slots=True)
class TreeConfig:
    fanout: int = 16
    leaf_size: int = 64  # a training node with more sample points than this is split
    max_depth: int = 4
    kmeans_iterations: int = 10
    seed: int = 1234
    assign_beam: int = 8  # nodes kept per level when a vector descends to its leaf


class ClusterTree:
    """Nodes numbered breadth first from the root (0), so a node's children are consecutive numbers;
    each vector belongs to one leaf."""

    def __init__(self, centroids: np.ndarray, parent: np.ndarray, metric: Metric, beam: int = TreeConfig().assign_beam) -> None:
        self._centroids = to_bfloat16(centroids)  # half the bytes of float32: the tree was a fifth of the index's overhead
        self.parent = parent
        self.metric = metric
        self.beam = beam
        self.children: list[np.ndarray] = [np.flatnonzero(parent == n) for n in range(len(parent))]
        if any(len(c) and c[-1] - c[0] + 1 != len(c) for c in self.children):
            raise ValueError("parent: children of a node must be numbered consecutively (breadth first)")
        self._first_child = np.array([c[0] if len(c) else -1 for c in self.children], dtype=np.int64)
        self._child_count = np.array([len(c) for c in self.children], dtype=np.int64)
        self._half_norms = 0.5 * (self.centroids**2).sum(1)
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
        self._ancestor = np.full((len(parent), int(depth.max()) + 1), -1, dtype=np.int64)  # leaf -> node at each depth
        for leaf, path in self.paths.items():
            self._ancestor[leaf, : len(path)] = path

    @property
    def centroids(self) -> np.ndarray:
        """float32 [nodes, dim]: the centroids as stored, rounded to bfloat16."""
        return from_bfloat16(self._centroids)

    @classmethod
    def root_only(cls, dim: int, metric: Metric) -> "ClusterTree":
        """The tree of an untrained index: one node, so each tenant is one shortlist."""
        return cls(np.zeros((1, dim), dtype=np.float32), np.array([-1], dtype=np.int64), metric)

    @classmethod
    def train(cls, sample: np.ndarray, metric: Metric, config: TreeConfig) -> "ClusterTree":
        """A tree from the rows of `sample` that k-means can take (see `trainable_rows`); the others
        are skipped and logged. faiss aborts the process from C++ on values that overflow, so no
        row it has not been proven safe for reaches it. ValueError if none is left."""
        usable = trainable_rows(sample, metric)
        if not usable.all():
            log.warning("index training: %d of %d sample rows skipped (not finite, or of a norm k-means cannot take)", int((~usable).sum()), len(sample))
            sample = sample[usable]
        if len(sample) == 0:
            raise ValueError("sample: no row is finite and of a usable norm")
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
        return cls(np.asarray(centroids, dtype=np.float32), np.asarray(parent, dtype=np.int64), metric, config.assign_beam)

    def assign(self, vectors: np.ndarray) -> np.ndarray:
        """Leaf of each vector by beam descent: the `beam` closest nodes kept at every level, the
        closest leaf among them chosen at the end.

        Greedy descent (beam 1) sends a vector down the wrong branch whenever noise outweighs the
        small margin between the broad clusters near the root, and then its neighbours sit in
        leaves far apart; on bench/index.py's synth set that cost Curator recall 0.84 -> 0.97
        at ef 128 (beam 8 came within 0.005 of choosing among all leaves).
        """
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        return _beam_descend(
            vectors, self._centroids, self._half_norms, self._first_child, self._child_count, self.beam, self.metric == "l2"
        )

    def ancestors(self, leaves: np.ndarray, depth: int) -> np.ndarray:
        """The node at `depth` on each leaf's path from the root (-1 for a leaf above that depth)."""
        return self._ancestor[leaves, depth]

    def is_leaf(self, node: int) -> bool:
        return len(self.children[node]) == 0

    @property
    def nbytes(self) -> int:
        arrays = (self._centroids, self.parent, self.depth, self._ancestor, *self.paths.values())
        return sum(a.nbytes for a in arrays)


def to_bfloat16(values: np.ndarray) -> np.ndarray:
    """uint16: the upper half of each float32's bits, rounded to nearest (ties to even). Finite values only."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    return ((bits + np.uint32(0x7FFF) + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def from_bfloat16(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def trainable_rows(sample: np.ndarray, metric: Metric) -> np.ndarray:
    """bool [n]: rows that are finite and of unit norm ('ip') or of norm at most MAX_L2_NORM ('l2'),
    the norm taken in float64 so that no value overflows while it is checked."""
    wide = np.asarray(sample, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        norms = np.sqrt(np.einsum("ij,ij->i", wide, wide))
    if metric == "ip":
        return np.isfinite(norms) & (np.abs(norms - 1.0) <= UNIT_TOLERANCE)
    return np.isfinite(norms) & (norms <= MAX_L2_NORM)


def sample_rows(count: int, size: int, seed: int = 0) -> np.ndarray:
    """Ascending row numbers of a random training sample of at most `size` of `count` rows."""
    return np.sort(np.random.default_rng(seed).choice(count, size=min(count, size), replace=False))


def _nearest(vectors: np.ndarray, centroids: np.ndarray, metric: Metric) -> np.ndarray:
    scores = vectors @ centroids.T
    if metric == "l2":
        scores = 2 * scores - (centroids**2).sum(1)[None, :]
    return scores.argmax(1)


@intrinsic
def _widened(typingctx, bits):
    """The float32 a bfloat16's uint16 bits stand for (the bits as its upper half), in registers:
    the descent's dot product then reads each centroid once, instead of widening it into a buffer
    first and reading that back (bench/README.md, tenant index)."""

    def codegen(context, builder, signature, args):
        upper = builder.shl(builder.zext(args[0], llvm_ir.IntType(32)), llvm_ir.Constant(llvm_ir.IntType(32), 16))
        return builder.bitcast(upper, llvm_ir.FloatType())

    return numba.types.float32(numba.types.uint16), codegen


@numba.njit(cache=True, fastmath=True, nogil=True)
def _beam_descend(vectors, centroids, half_norms, first_child, child_count, beam, l2):
    out = np.empty(vectors.shape[0], dtype=np.int64)
    nodes = np.empty(beam, dtype=np.int64)
    scores = np.empty(beam, dtype=np.float32)
    next_nodes = np.empty(beam, dtype=np.int64)
    next_scores = np.empty(beam, dtype=np.float32)
    for i in range(vectors.shape[0]):
        vector = vectors[i]
        nodes[0], scores[0], count = 0, 0.0, 1
        expanded = True
        while expanded:
            expanded = False
            kept = 0
            for f in range(count):
                node = nodes[f]
                if child_count[node] == 0:  # a leaf competes with the next level as it is
                    kept = keep_best(next_nodes, next_scores, kept, node, scores[f])
                    continue
                expanded = True
                for child in range(first_child[node], first_child[node] + child_count[node]):
                    score = numba.float32(0.0)
                    for d in range(vector.shape[0]):
                        score += vector[d] * _widened(centroids[child, d])
                    if l2:
                        score -= half_norms[child]
                    kept = keep_best(next_nodes, next_scores, kept, child, score)
            nodes[:kept] = next_nodes[:kept]
            scores[:kept] = next_scores[:kept]
            count = kept
        out[i] = nodes[0]
    return out
