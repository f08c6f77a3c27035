"""One tenant's terminals as the arrays a search scans, changed in place by each write.

Each terminal (a node where the tenant's cut through the shared tree stops) owns a slot: a
stretch of the tenant's row arena, with room to grow at its end, and the running sum of the
tenant's vectors in it, by which a search ranks the terminals (the sum's direction for "ip", the
sum over the count, the mean, for "l2"). An append writes into the stretch (moved to the arena's
end at twice its length when full) and adds the vector to the sum; a discard moves the stretch's
last row into the hole and subtracts it. A terminal that empties hands its slot to the last one,
so the slots stay dense (and shrink once half of them are free), and stretches left behind by
moves are reclaimed by compacting the arena once they pass half the entries in use. Every change costs O(1) (moves and compaction
amortised), however many vectors the tenant has.
"""

import numba
import numpy as np

from index.vectors import grown

ROW = np.int32  # table rows: 4 bytes a reference
MIN_STRETCH = 4
ARENA_GROWTH = 8  # a full arena grows by 1/8 (amortised O(1) a row still): spare room counts against the 12% memory budget


def _grown_stretch(length: int) -> int:
    """A full stretch's new capacity: half as large again, so that a write into each terminal of a
    compacted arena (no spare room) does not double the tenant's rows."""
    return length + length // 2 + MIN_STRETCH


class Shortlists:
    __slots__ = ("l2", "slot_of", "nodes", "sums", "scale", "starts", "lengths", "capacities", "rows", "used", "reserved", "size")

    def __init__(self, dim: int, l2: bool) -> None:
        self.l2 = l2
        self.slot_of: dict[int, int] = {}  # terminal node -> slot
        self.nodes = np.empty(0, np.int32)  # slot -> terminal node
        self.sums = np.empty((0, dim), np.float32)  # slot -> sum of the tenant's vectors in the terminal
        self.scale = np.empty(0, np.float32)  # slot -> 1 / |sum| ("ip") or 1 / count ("l2")
        self.starts = np.empty(0, np.int32)
        self.lengths = np.empty(0, np.int32)
        self.capacities = np.empty(0, np.int32)
        self.rows = np.empty(0, ROW)  # the arena
        self.used = 0  # arena entries handed out to stretches, live or left behind
        self.reserved = 0  # arena entries in the stretches of live slots
        self.size = 0  # rows in all terminals

    @classmethod
    def of(cls, dim: int, l2: bool, terminals: dict[int, np.ndarray], table: np.ndarray) -> "Shortlists":
        """Shortlists holding exactly `terminals` (node -> rows, stored in that order), no spare room."""
        lists = cls(dim, l2)
        count = len(terminals)
        if count == 0:
            return lists
        lists.nodes = np.fromiter(terminals, dtype=np.int32, count=count)
        lists.lengths = np.array([len(r) for r in terminals.values()], dtype=np.int32)
        lists.capacities = lists.lengths.copy()
        lists.starts = (np.cumsum(lists.lengths) - lists.lengths).astype(np.int32)
        lists.rows = np.concatenate(list(terminals.values())).astype(ROW)
        lists.sums = np.add.reduceat(table[lists.rows], lists.starts, axis=0).astype(np.float32)
        lists.scale = np.empty(count, np.float32)
        lists.slot_of = dict(zip(lists.nodes.tolist(), range(count)))
        lists.used = lists.reserved = lists.size = len(lists.rows)
        for slot in range(count):
            lists._rescale(slot)
        return lists

    def __len__(self) -> int:
        return len(self.slot_of)

    def __contains__(self, node: int) -> bool:
        return node in self.slot_of

    def terminals(self) -> dict[int, np.ndarray]:
        """Every terminal's rows (copies), by node."""
        return {node: self.rows_of(node).copy() for node in self.slot_of}

    def rows_of(self, node: int) -> np.ndarray:
        slot = self.slot_of[node]
        start = int(self.starts[slot])
        return self.rows[start : start + int(self.lengths[slot])]

    def search_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(sums, scale, starts, lengths, rows) over the live slots, as `top_k_in_terminals` takes them."""
        count = len(self.slot_of)
        return self.sums[:count], self.scale[:count], self.starts[:count], self.lengths[:count], self.rows

    # ---- changes

    def add_terminal(self, node: int, rows: np.ndarray, total: np.ndarray) -> None:
        """A new terminal holding `rows`, whose vectors sum to `total`."""
        slot = len(self.slot_of)
        if slot == len(self.nodes):
            self._resize_slots(slot + slot // 16 + 1)  # little spare: each slot carries a sum of dim floats
        start = self._allocate(max(len(rows), MIN_STRETCH))
        self.slot_of[node] = slot
        self.nodes[slot], self.starts[slot], self.lengths[slot] = node, start, len(rows)
        self.capacities[slot] = max(len(rows), MIN_STRETCH)
        self.rows[start : start + len(rows)] = rows
        self.sums[slot] = total
        self.size += len(rows)
        self._rescale(slot)

    def append(self, node: int, row: int, vector: np.ndarray) -> None:
        slot = self.slot_of[node]
        while not _append(self.rows, self.starts, self.lengths, self.capacities, self.sums, self.scale, slot, row, vector, self.l2):
            self._move(slot, _grown_stretch(int(self.lengths[slot])))
        self.size += 1

    def discard(self, node: int, row: int, vector: np.ndarray) -> None:
        """Drop `row` from the terminal; a terminal left empty is removed."""
        slot = self.slot_of[node]
        length = int(self.lengths[slot])
        if not _swap_out(self.rows, int(self.starts[slot]), length, row):
            raise KeyError(f"row {row} is not in terminal {node}")
        self.lengths[slot] = length - 1
        self.size -= 1
        if length == 1:
            self._drop(slot)
        else:
            _accumulate(self.sums, self.scale, slot, vector, -1.0, length - 1, self.l2)

    def pop(self, node: int) -> np.ndarray:
        """Remove a terminal; its rows (a copy)."""
        rows = self.rows_of(node).copy()
        self.size -= len(rows)
        self._drop(self.slot_of[node])
        return rows

    def _rescale(self, slot: int) -> None:
        _accumulate(self.sums, self.scale, slot, self.sums[slot], 0.0, int(self.lengths[slot]), self.l2)

    def _drop(self, slot: int) -> None:
        """Free a slot, moving the last slot into it."""
        del self.slot_of[int(self.nodes[slot])]
        self.reserved -= int(self.capacities[slot])
        last = len(self.slot_of)
        if slot != last:
            for array in (self.nodes, self.sums, self.scale, self.starts, self.lengths, self.capacities):
                array[slot] = array[last]
            self.slot_of[int(self.nodes[slot])] = slot
        if last < len(self.nodes) // 2 - 8:  # deletions emptied most slots: give their memory back
            self._resize_slots(last + last // 16 + 4)

    def _move(self, slot: int, capacity: int) -> None:
        """Give a full stretch `capacity` entries at the arena's end (the old stretch is left behind)."""
        length = int(self.lengths[slot])
        old = self.rows[self.starts[slot] : self.starts[slot] + length].copy()
        self.reserved -= int(self.capacities[slot])
        self.lengths[slot] = 0  # compaction inside _allocate must not copy the old stretch
        self.capacities[slot] = 0
        start = self._allocate(capacity)
        self.rows[start : start + length] = old
        self.starts[slot], self.lengths[slot], self.capacities[slot] = start, length, capacity

    def _allocate(self, count: int) -> int:
        """The start of `count` fresh arena entries, compacting or growing the arena when it is full."""
        if self.used + count > len(self.rows):
            if 2 * (self.used - self.reserved) > self.reserved:  # stretches left behind past half the live ones
                self._compact()
            if self.used + count > len(self.rows):
                self.rows = np.concatenate((self.rows[: self.used], np.empty(max(count, self.used // ARENA_GROWTH + 16), ROW)))
        start = self.used
        self.used += count
        self.reserved += count
        return start

    def _compact(self) -> None:
        """Copy the live stretches (spare room kept) to the arena's front, in slot order."""
        count = len(self.slot_of)
        caps = self.capacities[:count].astype(np.int64)
        starts = np.cumsum(caps) - caps
        rows = np.empty(max(int(caps.sum()), 1), ROW)
        for slot in range(count):
            begin, length = int(self.starts[slot]), int(self.lengths[slot])
            rows[starts[slot] : starts[slot] + length] = self.rows[begin : begin + length]
        self.rows, self.starts[:count] = rows, starts
        self.used = self.reserved = int(caps.sum())

    def _resize_slots(self, count: int) -> None:
        def resized(array: np.ndarray) -> np.ndarray:
            return grown(array, count) if count > len(array) else array[:count].copy()

        self.nodes, self.sums, self.scale = resized(self.nodes), resized(self.sums), resized(self.scale)
        self.starts, self.lengths, self.capacities = resized(self.starts), resized(self.lengths), resized(self.capacities)

    @property
    def nbytes(self) -> int:
        """The arrays (spare room included) and ~16 bytes a slot_of entry."""
        arrays = (self.nodes, self.sums, self.scale, self.starts, self.lengths, self.capacities, self.rows)
        return sum(a.nbytes for a in arrays) + 16 * len(self.slot_of)


@numba.njit(cache=True)
def _accumulate(sums, scale, slot, vector, sign, count, l2):
    """sums[slot] += sign * vector, and the slot's scale for its new sum and `count` rows (one call, not four numpy ones)."""
    total = 0.0
    for d in range(sums.shape[1]):
        sums[slot, d] += sign * vector[d]
        total += sums[slot, d] * sums[slot, d]
    scale[slot] = 1.0 / max(count, 1) if l2 else 1.0 / max(np.sqrt(total), 1e-12)


@numba.njit(cache=True)
def _append(rows, starts, lengths, capacities, sums, scale, slot, row, vector, l2):
    """Write `row` at the end of the slot's stretch and add its vector; False (nothing done) if the stretch is full."""
    length = lengths[slot]
    if length == capacities[slot]:
        return False
    rows[starts[slot] + length] = row
    lengths[slot] = length + 1
    _accumulate(sums, scale, slot, vector, 1.0, length + 1, l2)
    return True


@numba.njit(cache=True)
def _swap_out(rows, start, length, row):
    """Remove `row` from rows[start:start + length] by moving the last entry into its place; False if absent."""
    for j in range(start, start + length):
        if rows[j] == row:
            rows[j] = rows[start + length - 1]
            return True
    return False
