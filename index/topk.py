"""Exact top-k of queries against candidate vectors, the scan every index ends with."""

import numpy as np

from index.contract import Metric


def top_k(queries: np.ndarray, candidates: np.ndarray, ids: np.ndarray, k: int, metric: Metric) -> tuple[np.ndarray, np.ndarray]:
    """(distances [nq, k], ids [nq, k]) best first; -1 ids and worst distances pad missing results."""
    nq = len(queries)
    worst = -np.inf if metric == "ip" else np.inf
    distances = np.full((nq, k), worst, dtype=np.float32)
    found = np.full((nq, k), -1, dtype=np.int64)
    if len(candidates) == 0:
        return distances, found
    scores = queries @ candidates.T
    if metric == "l2":
        scores = 2 * scores - (candidates**2).sum(1)[None, :] - (queries**2).sum(1, keepdims=True)
    top = min(k, len(candidates))
    best = np.argpartition(-scores, top - 1, axis=1)[:, :top] if top < len(candidates) else np.tile(np.arange(top), (nq, 1))
    order = np.argsort(-np.take_along_axis(scores, best, 1), axis=1, kind="stable")
    best = np.take_along_axis(best, order, 1)
    chosen = np.take_along_axis(scores, best, 1)
    distances[:, :top] = chosen if metric == "ip" else -chosen
    found[:, :top] = ids[best]
    return distances, found
