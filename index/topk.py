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
    one = np.ones(1, dtype=np.float32)
    starts, lengths = np.zeros(1, dtype=np.int64), np.array([len(rows)], dtype=np.int64)
    centroids = np.zeros((1, table.shape[1]), dtype=np.float32)
    return top_k_in_terminals(queries, table, centroids, one, starts, lengths, rows, len(rows), k, metric)


def top_k_in_terminals(
    queries: np.ndarray, table: np.ndarray, sums: np.ndarray, scale: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
    rows: np.ndarray, cover: int, k: int, metric: Metric, allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per query: rank the terminals by their centroid (`sums[t] * scale[t]`: a direction for "ip",
    a mean for "l2"), scan their rows (`rows[starts[t]:starts[t] + lengths[t]]`) best first until
    `cover` rows are seen, and keep the top k. With `allowed` (bool per entry of `rows`), only allowed
    rows are scored and counted towards `cover`: a selective filter widens the scan."""
    l2 = metric == "l2"
    allowed = np.empty(0, dtype=np.bool_) if allowed is None else allowed
    scores, found = _scan(np.ascontiguousarray(queries, dtype=np.float32), table, sums, scale, starts, lengths, rows, cover, k, l2, allowed)
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


@numba.njit(cache=True, inline="always")
def keep_best(items, scores, kept, item, score):
    """Insert (item, score) into a best-first buffer holding `kept` entries; returns the new count.
    A full buffer drops its worst entry, or the new one if that is no better."""
    if kept == len(items):
        if score <= scores[kept - 1]:
            return kept
        kept -= 1
    i = kept
    while i > 0 and scores[i - 1] < score:
        items[i] = items[i - 1]
        scores[i] = scores[i - 1]
        i -= 1
    items[i] = item
    scores[i] = score
    return kept + 1


@numba.njit(cache=True, fastmath=True)
def _rank(sums, scale, t, query, l2):
    """How close terminal t's centroid is to the query, higher closer."""
    total = numba.float32(0.0)
    if l2:
        for d in range(query.shape[0]):
            diff = sums[t, d] * scale[t] - query[d]
            total -= diff * diff
        return total
    for d in range(query.shape[0]):
        total += sums[t, d] * query[d]
    return total * scale[t]


@numba.njit(cache=True, fastmath=True)
def _scan(queries, table, sums, scale, starts, lengths, rows, cover, k, l2, allowed):
    nq = queries.shape[0]
    terminals = sums.shape[0]
    best = np.full((nq, k), -np.inf, dtype=np.float32)
    found = np.full((nq, k), -1, dtype=np.int64)
    ranking = np.empty(terminals, dtype=np.float32)
    for q in range(nq):
        query = queries[q]
        for t in range(terminals):
            ranking[t] = -_rank(sums, scale, t, query, l2)
        seen = 0
        for t in np.argsort(ranking):
            j = starts[t]
            end = j + lengths[t]
            if len(allowed):
                for j in range(starts[t], end):
                    if allowed[j]:
                        keep_best(found[q], best[q], k, rows[j], _score(table, rows[j], query, l2))
                        seen += 1
                if seen >= cover:
                    break
                continue
            while j + 4 <= end:
                s0, s1, s2, s3 = _score4(table, rows[j], rows[j + 1], rows[j + 2], rows[j + 3], query, l2)
                keep_best(found[q], best[q], k, rows[j], s0)  # the buffers start full of -inf placeholders
                keep_best(found[q], best[q], k, rows[j + 1], s1)
                keep_best(found[q], best[q], k, rows[j + 2], s2)
                keep_best(found[q], best[q], k, rows[j + 3], s3)
                j += 4
            while j < end:
                keep_best(found[q], best[q], k, rows[j], _score(table, rows[j], query, l2))
                j += 1
            seen += lengths[t]
            if seen >= cover:
                break
    return best, found
