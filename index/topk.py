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

from index.attributes import ChunkFilter, matches_into
from index.contract import Metric


def top_k(queries: np.ndarray, table: np.ndarray, rows: np.ndarray, k: int, metric: Metric) -> tuple[np.ndarray, np.ndarray]:
    """(distances [nq, k], table rows [nq, k]): every query scans the same `rows` [m]."""
    one = np.ones(1, dtype=np.float32)
    starts, lengths = np.zeros(1, dtype=np.int64), np.array([len(rows)], dtype=np.int64)
    centroids = np.zeros((1, table.shape[1]), dtype=np.float32)
    return top_k_in_terminals(queries, table, centroids, one, starts, lengths, rows, len(rows), k, metric)


def top_k_in_terminals(
    queries: np.ndarray, table: np.ndarray, sums: np.ndarray, scale: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
    rows: np.ndarray, cover: int, k: int, metric: Metric, where: ChunkFilter | None = None, table_ids: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per query: rank the terminals by their centroid (`sums[t] * scale[t]`: a direction for "ip",
    a mean for "l2"), scan their rows (`rows[starts[t]:starts[t] + lengths[t]]`) best first until
    `cover` rows are seen, and keep the top k. With `where`, each terminal's rows are tested as the
    scan reaches it (a row's chunk is `table_ids[row]`, its position its index in `rows`), only
    rows that pass are scored, and the scan goes on until the geometric mean of the rows seen and
    the rows passed reaches `cover` (and at least min(cover, 4k) passed): all rows passing, that
    is `cover` rows seen; a filter passing a share s of them widens the scan to cover / sqrt(s)
    rows. Rows it never reaches are never tested."""
    l2 = metric == "l2"
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if where is None:
        scores, found = _scan(queries, table, sums, scale, starts, lengths, rows, cover, k, l2)
    else:
        scores, found = _scan_filtered(
            queries, table, sums, scale, starts, lengths, rows, cover, k, l2, table_ids, where.entries, where.program, where.floats,
            where.codes, where.mask,
        )
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


@numba.njit(cache=True, fastmath=True, inline="always")
def _score_rows(table, rows, j, end, query, l2, found, best, k):
    """Score rows[j:end] and keep the best k in (found, best), which start full of -inf placeholders."""
    while j + 4 <= end:
        s0, s1, s2, s3 = _score4(table, rows[j], rows[j + 1], rows[j + 2], rows[j + 3], query, l2)
        keep_best(found, best, k, rows[j], s0)
        keep_best(found, best, k, rows[j + 1], s1)
        keep_best(found, best, k, rows[j + 2], s2)
        keep_best(found, best, k, rows[j + 3], s3)
        j += 4
    while j < end:
        keep_best(found, best, k, rows[j], _score(table, rows[j], query, l2))
        j += 1


@numba.njit(cache=True, fastmath=True)
def _ranked(sums, scale, query, l2, ranking):
    """The terminals, closest centroid first."""
    for t in range(sums.shape[0]):
        ranking[t] = -_rank(sums, scale, t, query, l2)
    return np.argsort(ranking)


@numba.njit(cache=True, fastmath=True)
def _scan(queries, table, sums, scale, starts, lengths, rows, cover, k, l2):
    nq = queries.shape[0]
    best = np.full((nq, k), -np.inf, dtype=np.float32)
    found = np.full((nq, k), -1, dtype=np.int64)
    ranking = np.empty(sums.shape[0], dtype=np.float32)
    for q in range(nq):
        query = queries[q]
        seen = 0
        for t in _ranked(sums, scale, query, l2, ranking):
            _score_rows(table, rows, starts[t], starts[t] + lengths[t], query, l2, found[q], best[q], k)
            seen += lengths[t]
            if seen >= cover:
                break
    return best, found


@numba.njit(cache=True)  # no fastmath: matches_into, inlined, compares values that may be NaN or infinite
def _scan_filtered(
    queries, table, sums, scale, starts, lengths, rows, cover, k, l2, table_ids, entries, program, floats, wanted, mask
):
    """`_scan` testing each terminal's chunks against a compiled filter (`index.attributes`) as it is reached."""
    nq = queries.shape[0]
    best = np.full((nq, k), -np.inf, dtype=np.float32)
    found = np.full((nq, k), -1, dtype=np.int64)
    ranking = np.empty(sums.shape[0], dtype=np.float32)
    longest = lengths.max() if len(lengths) else 0
    chunk_ids, at, passed = np.empty(longest, np.int64), np.empty(longest, np.int64), np.empty(longest, np.bool_)
    stack = np.empty((len(program), longest), dtype=np.bool_)
    floor = min(cover, 4 * k)
    for q in range(nq):
        query = queries[q]
        seen, matched = 0, 0
        for t in _ranked(sums, scale, query, l2, ranking):
            start, length = starts[t], lengths[t]
            for b in range(length):
                chunk_ids[b] = table_ids[rows[start + b]]
            matches_into(chunk_ids, length, start, entries, program, floats, wanted, mask, at, stack, passed)
            count = 0
            for b in range(length):
                if passed[b]:
                    chunk_ids[count] = rows[start + b]  # the passing rows, in place of the chunk ids
                    count += 1
            _score_rows(table, chunk_ids, 0, count, query, l2, found[q], best[q], k)
            matched += count
            seen += length
            if matched * seen >= cover * cover and matched >= floor:
                break
    return best, found
