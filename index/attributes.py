"""Each chunk's top-level metadata values, in columns beside the index, so a filtered search tests
many chunks with a few numpy operations instead of reading their records.

One sparse column per key: the sorted chunk ids that hold the key, and per id its number (NaN if
the value is not a number) and its interned string or bool code (-1 if it is neither). A key
only some chunks have costs only those chunks; lists and objects are kept as neither, so no
condition matches them. Chunk ids grow with each write, so appends stay sorted; a removed id is
blanked and its room reclaimed once half a column is blank.
"""

import numba
import numpy as np

from index.filters import AllOf, AnyOf, Equals, Filter, Not, OneOf, Range, Scalar


class _Column:
    """Sorted ids and their values; arrays with spare room at the end, so appends cost their own size."""

    def __init__(self) -> None:
        self._ids = np.empty(0, dtype=np.int64)
        self._numbers = np.empty(0, dtype=np.float64)
        self._codes = np.empty(0, dtype=np.int32)
        self._used = 0
        self._blank = 0  # removed entries still in the arrays

    @property
    def sorted_ids(self) -> np.ndarray:
        return self._ids[: self._used]

    @property
    def numbers(self) -> np.ndarray:
        return self._numbers[: self._used]

    @property
    def codes(self) -> np.ndarray:
        return self._codes[: self._used]

    def append(self, ids: np.ndarray, numbers: np.ndarray, codes: np.ndarray) -> None:
        """Entries for ids in increasing order; an id already here (re-added) replaces its entry."""
        if self._used and len(ids) and ids[0] <= self._ids[self._used - 1]:
            self._rewrite(np.concatenate([self.sorted_ids, ids]), np.concatenate([self.numbers, numbers]), np.concatenate([self.codes, codes]))
            return
        end = self._used + len(ids)
        if end > len(self._ids):
            capacity = max(end, 2 * len(self._ids), 64)
            self._ids, self._numbers, self._codes = (np.resize(a, capacity) for a in (self._ids, self._numbers, self._codes))
        self._ids[self._used : end], self._numbers[self._used : end], self._codes[self._used : end] = ids, numbers, codes
        self._used = end

    def remove(self, ids: np.ndarray) -> None:
        if not self._used:
            return
        positions = np.minimum(np.searchsorted(self.sorted_ids, ids), self._used - 1)
        at = positions[self.sorted_ids[positions] == ids]
        self._blank += int(_holds(self.numbers[at], self.codes[at]).sum())
        self._numbers[at] = np.nan
        self._codes[at] = -1
        if self._blank * 2 > self._used:
            keep = _holds(self.numbers, self.codes)
            self._rewrite(self.sorted_ids[keep], self.numbers[keep], self.codes[keep])

    def nbytes(self) -> int:
        return self._ids.nbytes + self._numbers.nbytes + self._codes.nbytes

    def _rewrite(self, ids: np.ndarray, numbers: np.ndarray, codes: np.ndarray) -> None:
        """Hold exactly these entries, sorted by id, the last entry of a repeated id winning."""
        last = len(ids) - 1 - np.unique(ids[::-1], return_index=True)[1]
        self._ids, self._numbers, self._codes = ids[last], numbers[last], codes[last]
        self._used = len(last)
        self._blank = int((~_holds(self._numbers, self._codes)).sum())


class Attributes:
    def __init__(self) -> None:
        self._columns: dict[str, _Column] = {}
        self._codes: dict[tuple[str, Scalar], int] = {}

    def add(self, ids: np.ndarray, metadatas: list[dict]) -> None:
        """Record each chunk's metadata (ids new, or re-added after `remove`); ids in increasing order."""
        ids = np.asarray(ids, dtype=np.int64)
        by_key: dict[str, tuple[list[int], list[float], list[int]]] = {}
        for chunk_id, metadata in zip(ids.tolist(), metadatas):
            for key, value in metadata.items():
                if not (_is_number(value) or isinstance(value, (str, bool))):
                    continue  # a list or an object: no condition matches it, as if absent
                column = by_key.setdefault(key, ([], [], []))
                column[0].append(chunk_id)
                column[1].append(float(value) if _is_number(value) else np.nan)
                column[2].append(self._intern(value))
        for key, (column_ids, numbers, codes) in by_key.items():
            self._columns.setdefault(key, _Column()).append(
                np.array(column_ids, dtype=np.int64), np.array(numbers, dtype=np.float64), np.array(codes, dtype=np.int32)
            )

    def remove(self, ids: np.ndarray) -> None:
        ids = np.sort(np.asarray(ids, dtype=np.int64))
        for column in self._columns.values():
            column.remove(ids)

    def matching(self, where: Filter, ids: np.ndarray) -> np.ndarray:
        """bool [len(ids)]: which chunks' metadata satisfies `where` (a checked filter); an id never
        added counts as a chunk without metadata."""
        ids = np.asarray(ids, dtype=np.int64)
        match where:
            case Equals(key, value):
                return self._equal(key, ids, (value,))
            case OneOf(key, values):
                return self._equal(key, ids, values)
            case Range(key, gt, gte, lt, lte):
                column = self._columns.get(key)
                if column is None:
                    return np.zeros(len(ids), dtype=bool)
                bounds = (np.nan if b is None else float(b) for b in (gt, gte, lt, lte))
                return _in_range(column.sorted_ids, column.numbers, ids, *bounds)
            case AllOf(parts):
                return np.logical_and.reduce([self.matching(p, ids) for p in parts])
            case AnyOf(parts):
                return np.logical_or.reduce([self.matching(p, ids) for p in parts])
            case Not(part):
                return ~self.matching(part, ids)
        raise TypeError(f"not a filter: {where!r}")

    def nbytes(self) -> int:
        return sum(c.nbytes() for c in self._columns.values())

    def _equal(self, key: str, ids: np.ndarray, values: tuple[Scalar, ...]) -> np.ndarray:
        column = self._columns.get(key)
        if column is None:
            return np.zeros(len(ids), dtype=bool)
        numbers = np.array([float(v) for v in values if _is_number(v)], dtype=np.float64)
        codes = np.array([self._codes.get(_tagged(v), -2) for v in values if not _is_number(v)], dtype=np.int32)
        return _equal_any(column.sorted_ids, column.numbers, column.codes, ids, numbers, codes)

    def _intern(self, value) -> int:
        if not isinstance(value, (str, bool)):
            return -1
        return self._codes.setdefault(_tagged(value), len(self._codes))


def _holds(numbers: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Entries that hold a number or a code (not blanked, nor a list or object)."""
    return ~np.isnan(numbers) | (codes >= 0)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _tagged(value: Scalar) -> tuple[str, Scalar]:
    """Strings and bools share one code table; the tag keeps "true" apart from True."""
    return ("b" if isinstance(value, bool) else "s", value)


@numba.njit(cache=True)
def _position(sorted_ids, chunk_id):
    """Where `chunk_id` lies in `sorted_ids`, -1 if absent."""
    low, high = 0, len(sorted_ids)
    while low < high:
        middle = (low + high) >> 1
        if sorted_ids[middle] < chunk_id:
            low = middle + 1
        else:
            high = middle
    return low if low < len(sorted_ids) and sorted_ids[low] == chunk_id else -1


@numba.njit(cache=True)
def _in_range(sorted_ids, numbers, ids, gt, gte, lt, lte):
    """A NaN bound is no bound; a NaN value (no number) is in no range. One compiled pass: a
    filtered search calls this per query, where a dozen numpy calls cost more than the scan."""
    inside = np.zeros(len(ids), dtype=np.bool_)
    for i in range(len(ids)):
        at = _position(sorted_ids, ids[i])
        if at < 0:
            continue
        v = numbers[at]
        inside[i] = not (
            np.isnan(v) or (not np.isnan(gt) and v <= gt) or (not np.isnan(gte) and v < gte)
            or (not np.isnan(lt) and v >= lt) or (not np.isnan(lte) and v > lte)
        )
    return inside


@numba.njit(cache=True)
def _equal_any(sorted_ids, numbers, codes, ids, wanted_numbers, wanted_codes):
    found = np.zeros(len(ids), dtype=np.bool_)
    for i in range(len(ids)):
        at = _position(sorted_ids, ids[i])
        if at < 0:
            continue
        for number in wanted_numbers:
            found[i] |= numbers[at] == number
        for code in wanted_codes:
            found[i] |= codes[at] == code
    return found
