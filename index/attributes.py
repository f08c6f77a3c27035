"""Each chunk's top-level metadata values, in one table beside the index, and filters compiled
against it, so a filtered search tests a chunk in a few memory reads inside its compiled scan.

The table holds one entry per (chunk, key), a 24-byte record so that a test reads one cache
line: the chunk id, the key's code, the value's interned string or bool code (-1 for a number)
and its number, sorted by chunk id, a chunk's entries together. Lists and objects get no entry,
so no condition matches them. Chunk ids grow with each write, so appends stay sorted and evenly
spread: a chunk's first entry is found by interpolating its id between the ends and galloping
from there, in a read or two where a binary search takes a read per halving. A removed chunk's
entries are blanked and their room reclaimed once half the table is blank.

A filter compiles (`Attributes.compile`) to a `ChunkFilter`: a postfix program over key codes.
It is an `IdPredicate` (callable over chunk ids), and `index.topk` runs its program as it scans,
over one terminal's rows at a time (`matches_into`), so a filtered search tests only the rows it
visits.
"""

from dataclasses import dataclass

import numba
import numpy as np

from index.filters import AllOf, AnyOf, Equals, Filter, Not, OneOf, Range, Scalar

# program operations; a program row is (operation, key code or operand count, float slice, code slice)
RANGE, EQUAL, ALL, ANY, NOT, NEVER, ALLOWED = range(7)  # ALLOWED: the row's flag in a caller's mask
LOW, HIGH = (1, 2), (4, 8)  # a RANGE's flags: (has the bound, the bound is inclusive) on each side
BLANK = -1  # the key code of a removed chunk's entries
MATCH_BATCH = 4096  # chunks a call over ids tests at a time
ENTRY = np.dtype([("id", np.int64), ("key", np.int32), ("code", np.int32), ("number", np.float64)])


@dataclass(frozen=True, slots=True)
class ChunkFilter:
    """A filter compiled against an `Attributes` table as it was then; `mask` (bool per scanned
    position) backs an ALLOWED program, made by `allowed_positions` for a plain predicate."""

    program: np.ndarray  # int32 [m, 6]: operation, key or count, floats start, end (RANGE: bound flags), codes start, end
    floats: np.ndarray  # float64: range bounds (low, high) and wanted numbers
    codes: np.ndarray  # int32: wanted string and bool codes
    entries: np.ndarray  # ENTRY records
    mask: np.ndarray

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        """bool [len(ids)]: which chunks satisfy the filter (an id never added: a chunk without metadata)."""
        ids = np.asarray(ids, dtype=np.int64)
        return _matching(ids, self.entries, self.program, self.floats, self.codes, self.mask)


def allowed_positions(mask: np.ndarray) -> ChunkFilter:
    """A filter passing the scanned positions where `mask` is true, whatever the chunk."""
    program = np.array([[ALLOWED, 0, 0, 0, 0, 0]], dtype=np.int32)
    return ChunkFilter(program, np.empty(0, np.float64), np.empty(0, np.int32), np.empty(0, ENTRY), mask)


class Attributes:
    def __init__(self) -> None:
        self._entries = np.empty(0, dtype=ENTRY)
        self._used = 0
        self._blank = 0  # blanked entries still in the table
        self._key_codes: dict[str, int] = {}
        self._value_codes: dict[tuple[str, Scalar], int] = {}

    def add(self, ids: np.ndarray, metadatas: list[dict]) -> None:
        """Record each chunk's metadata, ids in increasing order; a chunk already here has its values replaced."""
        ids = np.asarray(ids, dtype=np.int64)
        fresh = []
        for chunk_id, metadata in zip(ids.tolist(), metadatas):
            for key, value in metadata.items():
                if _is_number(value):
                    fresh.append((chunk_id, self._key_codes.setdefault(key, len(self._key_codes)), -1, float(value)))
                elif isinstance(value, (str, bool)):
                    code = self._value_codes.setdefault(_tagged(value), len(self._value_codes))
                    fresh.append((chunk_id, self._key_codes.setdefault(key, len(self._key_codes)), code, np.nan))
                # a list or an object: no condition matches it, as if absent
        fresh = np.array(fresh, dtype=ENTRY)
        if self._used and len(ids) and ids[0] <= self._entries["id"][self._used - 1]:
            self.remove(ids)
            self._rewrite(np.concatenate([self._entries[: self._used], fresh]))
            return
        end = self._used + len(fresh)
        if end > len(self._entries):
            self._entries = np.resize(self._entries, max(end, 2 * len(self._entries), 64))
        self._entries[self._used : end] = fresh
        self._used = end

    def remove(self, ids: np.ndarray) -> None:
        """Blank the entries of these chunks; ids never added are ignored."""
        self._blank += _blank(self._entries[: self._used], np.asarray(ids, dtype=np.int64))
        if self._blank * 2 > self._used:
            self._rewrite(self._entries[: self._used])

    def compile(self, where: Filter) -> ChunkFilter:
        """`where` (a checked filter) as a program over this table's entries as they are now."""
        program: list[tuple[int, int, int, int, int, int]] = []
        floats: list[float] = []
        codes: list[int] = []
        self._emit(where, program, floats, codes)
        return ChunkFilter(
            np.array(program, np.int32), np.array(floats, np.float64), np.array(codes, np.int32), self._entries[: self._used],
            np.empty(0, np.bool_),
        )

    def nbytes(self) -> int:
        return self._entries.nbytes

    def _emit(self, where: Filter, program: list, floats: list, codes: list) -> None:
        """Append `where`'s postfix program: conditions push a bool, ALL/ANY pop their operands."""
        match where:
            case Equals(key, value):
                self._emit(OneOf(key, (value,)), program, floats, codes)
            case OneOf(key=key) | Range(key=key) if key not in self._key_codes:
                program.append((NEVER, 0, 0, 0, 0, 0))
            case OneOf(key, values):
                start, begin = len(floats), len(codes)
                floats.extend(float(v) for v in values if _is_number(v))
                codes.extend(self._value_codes.get(_tagged(v), -2) for v in values if not _is_number(v))
                program.append((EQUAL, self._key_codes[key], start, len(floats), begin, len(codes)))
            case Range(key, gt, gte, lt, lte):
                (low, low_flags), (high, high_flags) = _bound(gt, gte, max, LOW), _bound(lt, lte, min, HIGH)
                floats.extend((low, high))
                program.append((RANGE, self._key_codes[key], len(floats) - 2, low_flags | high_flags, 0, 0))
            case AllOf(parts) | AnyOf(parts):
                for part in parts:
                    self._emit(part, program, floats, codes)
                program.append((ALL if isinstance(where, AllOf) else ANY, len(parts), 0, 0, 0, 0))
            case Not(part):
                self._emit(part, program, floats, codes)
                program.append((NOT, 0, 0, 0, 0, 0))
            case _:
                raise TypeError(f"not a filter: {where!r}")

    def _rewrite(self, entries: np.ndarray) -> None:
        """Hold exactly the unblanked of these entries, sorted by chunk id (stable: a chunk's entries keep their order)."""
        entries = entries[entries["key"] != BLANK]
        self._entries = entries[np.argsort(entries["id"], kind="stable")]
        self._used, self._blank = len(self._entries), 0


def _bound(strict: float | None, inclusive: float | None, tighter, flags: tuple[int, int]) -> tuple[float, int]:
    """One side of a range as (value, flags): the tighter of its strict and inclusive bounds, if any
    (the strict one when they are equal)."""
    if strict is None and inclusive is None:
        return 0.0, 0
    if inclusive is None or (strict is not None and tighter(strict, inclusive) == strict):
        return float(strict), flags[0]
    return float(inclusive), flags[0] | flags[1]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _tagged(value: Scalar) -> tuple[str, Scalar]:
    """Strings and bools share one code table; the tag keeps "true" apart from True."""
    return ("b" if isinstance(value, bool) else "s", value)


@numba.njit(cache=True, inline="always")
def first_entry(entries, chunk_id):
    """The first position in `entries` (sorted by id) whose id is `chunk_id` or more: guessed by
    interpolating between the ends, then bracketed by galloping from the guess and bisected within."""
    n = len(entries)
    if n == 0 or chunk_id <= entries[0].id:
        return 0
    if chunk_id > entries[n - 1].id:
        return n
    guess = int(float(chunk_id - entries[0].id) / float(entries[n - 1].id - entries[0].id) * (n - 1))
    step = 1
    if entries[guess].id < chunk_id:  # the answer is in (guess, n - 1]
        low, high = guess + 1, guess + 1
        while entries[high].id < chunk_id:
            low = high + 1
            high = min(high + step, n - 1)
            step *= 2
    else:  # in (0, guess]
        low, high = guess, guess
        while low > 0 and entries[low - 1].id >= chunk_id:
            high = low - 1
            low = max(low - step, 0)
            step *= 2
    while low < high:  # the first of entries[low:high + 1] whose id is >= chunk_id, as entries[high]'s is
        middle = (low + high) >> 1
        if entries[middle].id < chunk_id:
            low = middle + 1
        else:
            high = middle
    return low


@numba.njit(cache=True, inline="always")
def matches_into(chunk_ids, count, first_position, entries, program, floats, wanted, mask, at, stack, out):
    """out[b] for b < count: whether chunk `chunk_ids[b]` passes the program, its place in a scan
    being `first_position + b` (for an ALLOWED program). `at` (int64, count) and `stack` (bool,
    [program rows, count]) are scratch room.

    The program runs over the whole batch one operation at a time, so each operation is a tight
    loop over the chunks and the chunks' entries are looked up all at once (their memory reads
    overlap): a row at a time, the stack machine's branches cost more than scoring the row
    (docs/performance-log.md, session 11). Inlined (a call counts references to each array
    argument, per terminal), so no caller may be compiled with fastmath, which would assume NaN
    and infinite values away."""
    for b in range(count):
        at[b] = first_entry(entries, chunk_ids[b])
    depth = 0
    for i in range(program.shape[0]):
        operation, key = program[i, 0], program[i, 1]
        if operation == ALL or operation == ANY:
            depth -= key
            for j in range(depth + 1, depth + key):
                if operation == ALL:
                    for b in range(count):
                        stack[depth, b] &= stack[j, b]
                else:
                    for b in range(count):
                        stack[depth, b] |= stack[j, b]
        elif operation == NOT:
            depth -= 1
            for b in range(count):
                stack[depth, b] = not stack[depth, b]
        elif operation == NEVER:
            stack[depth, :count] = False
        elif operation == ALLOWED:
            stack[depth, :count] = mask[first_position : first_position + count]
        else:
            for b in range(count):
                result = False
                e = at[b]
                while e < len(entries) and entries[e].id == chunk_ids[b]:
                    if entries[e].key == key:
                        result = _condition(operation, entries[e].number, entries[e].code, floats, wanted, program, i)
                        break
                    e += 1
                stack[depth, b] = result
        depth += 1
    out[:count] = stack[0, :count]


@numba.njit(cache=True, inline="always")
def _condition(operation, number, code, floats, wanted, program, i):
    """Program row i's RANGE or EQUAL test of one value: a number if its code is -1. Without
    branches on the value (its outcome is what a branch predictor cannot guess), and rows are
    indexed, not sliced (a slice counts references)."""
    if operation == RANGE:
        low, high, flags = floats[program[i, 2]], floats[program[i, 2] + 1], program[i, 3]
        above = ((flags & 1) == 0) | (number > low) | (((flags & 2) != 0) & (number == low))
        below = ((flags & 4) == 0) | (number < high) | (((flags & 8) != 0) & (number == high))
        return (code < 0) & above & below
    found = False
    for f in range(program[i, 2], program[i, 3]):
        found |= (code < 0) & (number == floats[f])
    for c in range(program[i, 4], program[i, 5]):
        found |= code == wanted[c]
    return found


@numba.njit(cache=True)
def _matching(chunk_ids, entries, program, floats, wanted, mask):
    """`matches_into` over any number of chunks, MATCH_BATCH at a time (bounding its scratch room)."""
    n = len(chunk_ids)
    out = np.empty(n, dtype=np.bool_)
    at, stack = np.empty(min(n, MATCH_BATCH), np.int64), np.empty((len(program), min(n, MATCH_BATCH)), np.bool_)
    for start in range(0, n, MATCH_BATCH):
        end = min(n, start + MATCH_BATCH)
        matches_into(chunk_ids[start:end], end - start, start, entries, program, floats, wanted, mask, at, stack, out[start:end])
    return out


@numba.njit(cache=True)
def _blank(entries, removed):
    """Blank the entries of the `removed` chunks; how many were not blank already."""
    count = 0
    for chunk_id in removed:
        e = first_entry(entries, chunk_id)
        while e < len(entries) and entries[e].id == chunk_id:
            count += entries[e].key != BLANK
            entries[e].key = BLANK
            e += 1
    return count
