"""Each chunk's top-level metadata values, in columns beside the index, so a filtered search tests
many chunks with a few numpy operations instead of reading their records.

One sparse column per key: the sorted chunk ids that hold the key, and per id its number (NaN if
the value is not a number) and its interned string or bool code (-1 if it is neither). A key
only some chunks have costs only those chunks; lists and objects are kept as neither, so no
condition matches them. Chunk ids grow with each write, so appends stay sorted; a removed id is
blanked and its room reclaimed once half a column is blank.
"""

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

    def __len__(self) -> int:
        return self._used

    @property
    def numbers(self) -> np.ndarray:
        return self._numbers[: self._used]

    @property
    def codes(self) -> np.ndarray:
        return self._codes[: self._used]

    def append(self, ids: np.ndarray, numbers: np.ndarray, codes: np.ndarray) -> None:
        """Entries for ids in increasing order; an id already here (re-added) replaces its entry."""
        if self._used and len(ids) and ids[0] <= self._ids[self._used - 1]:
            self._rewrite(np.concatenate([self._ids[: self._used], ids]), np.concatenate([self.numbers, numbers]), np.concatenate([self.codes, codes]))
            return
        end = self._used + len(ids)
        if end > len(self._ids):
            capacity = max(end, 2 * len(self._ids), 64)
            self._ids, self._numbers, self._codes = (np.resize(a, capacity) for a in (self._ids, self._numbers, self._codes))
        self._ids[self._used : end], self._numbers[self._used : end], self._codes[self._used : end] = ids, numbers, codes
        self._used = end

    def remove(self, ids: np.ndarray) -> None:
        positions, present = self.find(ids)
        at = positions[present]
        self._blank += int(_holds(self.numbers[at], self.codes[at]).sum())
        self._numbers[at] = np.nan
        self._codes[at] = -1
        if self._blank * 2 > self._used:
            keep = _holds(self.numbers, self.codes)
            self._rewrite(self._ids[: self._used][keep], self.numbers[keep], self.codes[keep])

    def find(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions, present): where each id lies in the column, and whether it is there at all."""
        if not self._used:
            return np.zeros(len(ids), dtype=np.int64), np.zeros(len(ids), dtype=bool)
        stored = self._ids[: self._used]
        positions = np.minimum(np.searchsorted(stored, ids), self._used - 1)
        return positions, stored[positions] == ids

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
                return self._condition(key, ids, lambda c, at: self._equal(c, at, (value,)))
            case OneOf(key, values):
                return self._condition(key, ids, lambda c, at: self._equal(c, at, values))
            case Range(key, gt, gte, lt, lte):
                return self._condition(key, ids, lambda c, at: _within(c.numbers[at], gt, gte, lt, lte))
            case AllOf(parts):
                return np.logical_and.reduce([self.matching(p, ids) for p in parts])
            case AnyOf(parts):
                return np.logical_or.reduce([self.matching(p, ids) for p in parts])
            case Not(part):
                return ~self.matching(part, ids)
        raise TypeError(f"not a filter: {where!r}")

    def nbytes(self) -> int:
        return sum(c.nbytes() for c in self._columns.values())

    def _condition(self, key: str, ids: np.ndarray, test) -> np.ndarray:
        column = self._columns.get(key)
        if column is None or not len(column):
            return np.zeros(len(ids), dtype=bool)
        positions, present = column.find(ids)
        return present & test(column, positions)

    def _equal(self, column: _Column, at: np.ndarray, values: tuple[Scalar, ...]) -> np.ndarray:
        numbers = [float(v) for v in values if _is_number(v)]
        codes = [self._codes[_tagged(v)] for v in values if not _is_number(v) and _tagged(v) in self._codes]
        found = np.isin(column.numbers[at], numbers) if numbers else np.zeros(len(at), dtype=bool)
        return found | np.isin(column.codes[at], codes) if codes else found

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


def _within(numbers: np.ndarray, gt, gte, lt, lte) -> np.ndarray:
    """NaN (no number) is outside every range: comparisons with NaN are false."""
    inside = ~np.isnan(numbers)
    for bound, compare in ((gt, np.greater), (gte, np.greater_equal), (lt, np.less), (lte, np.less_equal)):
        if bound is not None:
            inside &= compare(numbers, bound)
    return inside
