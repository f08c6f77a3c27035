"""Exact top-k of queries over chosen rows of a vector table: the scan every index here ends with.

Compiled with numba: a search is a few hundred dot products over rows scattered in the table,
which numpy can only express as a gather of the rows, a product, a partition and an id mapping,
each a call with its own fixed cost. One compiled call ranks the tenant's terminals, scans their
rows in place and keeps the best k in a small sorted buffer (with the leaf-ordered table, Curator
on bench/index.py's synth_uniform went from 0.177 to 0.119 ms a query).

Scores are inner products for "ip" and negative squared L2 for "l2"; returned distances are inner
products and squared L2 distances respectively, best first, padded with -1 rows.
"""

import numba
import numpy as np

from index.contract import Metric


def top_k(queries: np.ndarray, table: np.ndarray, rows: np.ndarray, k: int, metric: Metric) -> tuple[np.ndarray, np.ndarray]:
    """(distances [nq, k], table rows [nq, k]): every query scans the same `rows` [m]."""
    offsets = np.array([0, len(rows)], dtype=np.int64)
    centroids = np.zeros((1, table.shape[1]), dtype=np.float32)
    return top_k_in_terminals(queries, table, centroids, offsets, rows, len(rows), k, metric)


def top_k_in_terminals(
    queries: np.ndarray, table: np.ndarray, centroids: np.ndarray, offsets: np.ndarray, rows: np.ndarray, cover: int, k: int, metric: Metric
) -> tuple[np.ndarray, np.ndarray]:
    """Per query: rank the terminals by their centroid, scan their rows (rows[offsets[t]:offsets[t + 1]])
    best first until `cover` rows are seen, and keep the top k."""
    l2 = metric == "l2"
    scores, found = _scan(np.ascontiguousarray(queries, dtype=np.float32), table, centroids, offsets, rows, cover, k, l2)
    return (-scores if l2 else scores), found


def ids_of(table_ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """External ids of table rows, -1 kept."""
    ids = np.full(rows.shape, -1, dtype=np.int64)
    present = rows >= 0
    ids[present] = table_ids[rows[present]]
    return ids


@numba.njit(cache=True, fastmath=True)
def _score(table, row, query, l2):
    total = numba.float32(0.0)
    if l2:
        for d in range(query.shape[0]):
            diff = table[row, d] - query[d]
            total -= diff * diff
    else:
        for d in range(query.shape[0]):
            total += table[row, d] * query[d]
    return total


@numba.njit(cache=True, fastmath=True)
def _score4(table, r0, r1, r2, r3, query, l2):
    """Four rows' scores in one pass over the query: four rows read at once keep more memory
    reads in flight, and the rows a search scans are mostly not in cache."""
    s0, s1, s2, s3 = numba.float32(0.0), numba.float32(0.0), numba.float32(0.0), numba.float32(0.0)
    if l2:
        for d in range(query.shape[0]):
            x = query[d]
            e0, e1, e2, e3 = table[r0, d] - x, table[r1, d] - x, table[r2, d] - x, table[r3, d] - x
            s0 -= e0 * e0
            s1 -= e1 * e1
            s2 -= e2 * e2
            s3 -= e3 * e3
    else:
        for d in range(query.shape[0]):
            x = query[d]
            s0 += table[r0, d] * x
            s1 += table[r1, d] * x
            s2 += table[r2, d] * x
            s3 += table[r3, d] * x
    return s0, s1, s2, s3


@numba.njit(cache=True)
def _push(best, found, score, row):
    """Insert (score, row) into the best-first buffers if it beats the worst kept."""
    i = best.shape[0] - 1
    if score <= best[i]:
        return
    while i > 0 and best[i - 1] < score:
        best[i] = best[i - 1]
        found[i] = found[i - 1]
        i -= 1
    best[i] = score
    found[i] = row


@numba.njit(cache=True, fastmath=True)
def _scan(queries, table, centroids, offsets, rows, cover, k, l2):
    nq = queries.shape[0]
    terminals = centroids.shape[0]
    best = np.full((nq, k), -np.inf, dtype=np.float32)
    found = np.full((nq, k), -1, dtype=np.int64)
    ranking = np.empty(terminals, dtype=np.float32)
    for q in range(nq):
        query = queries[q]
        for t in range(terminals):
            ranking[t] = -_score(centroids, t, query, l2)
        seen = 0
        for t in np.argsort(ranking):
            j, end = offsets[t], offsets[t + 1]
            while j + 4 <= end:
                s0, s1, s2, s3 = _score4(table, rows[j], rows[j + 1], rows[j + 2], rows[j + 3], query, l2)
                _push(best[q], found[q], s0, rows[j])
                _push(best[q], found[q], s1, rows[j + 1])
                _push(best[q], found[q], s2, rows[j + 2])
                _push(best[q], found[q], s3, rows[j + 3])
                j += 4
            while j < end:
                _push(best[q], found[q], _score(table, rows[j], query, l2), rows[j])
                j += 1
            seen += end - offsets[t]
            if seen >= cover:
                break
    return best, found
