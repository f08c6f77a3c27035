"""Which tenants may read each row of the vector table."""

import numpy as np

from index.vectors import grown


class Readers:
    """Which tenants may read each row: up to SLOTS in a dense int32 array, any more in a side table."""

    SLOTS = 4

    def __init__(self) -> None:
        self._slots = np.full((0, self.SLOTS), -1, dtype=np.int32)
        self._overflow: dict[int, set[int]] = {}

    @property
    def capacity(self) -> int:
        return len(self._slots)

    def grow(self, capacity: int) -> None:
        self._slots = grown(self._slots, capacity, fill=-1)

    def reorder(self, order: np.ndarray, new_of_old: np.ndarray) -> None:
        """Follow a renumbering of the rows: new row r is old row order[r]."""
        self._slots = self._slots[order]
        self._overflow = {int(new_of_old[row]): tenants for row, tenants in self._overflow.items()}

    def copy(self) -> "Readers":
        """An independent copy, for a retraining to read without the caller's lock."""
        other = Readers()
        other._slots = self._slots.copy()
        other._overflow = {row: set(tenants) for row, tenants in self._overflow.items()}
        return other

    def set_owner(self, row: int, tenant: int) -> None:
        self._slots[row] = -1
        self._slots[row, 0] = tenant
        self._overflow.pop(row, None)

    def rows_by_tenant(self) -> dict[int, np.ndarray]:
        """Every tenant's readable rows, ascending."""
        tenant_of = [self._slots.ravel()]
        row_of = [np.repeat(np.arange(len(self._slots)), self.SLOTS)]
        for row, tenants in self._overflow.items():
            tenant_of.append(np.fromiter(tenants, dtype=np.int32, count=len(tenants)))
            row_of.append(np.full(len(tenants), row, dtype=np.int64))
        tenant_of, row_of = np.concatenate(tenant_of), np.concatenate(row_of)
        keep = tenant_of >= 0
        tenant_of, row_of = tenant_of[keep], row_of[keep]
        order = np.lexsort((row_of, tenant_of))
        tenant_of, row_of = tenant_of[order], row_of[order]
        if len(tenant_of) == 0:
            return {}
        starts = np.flatnonzero(np.r_[True, tenant_of[1:] != tenant_of[:-1]])
        return {int(tenant_of[s]): rows for s, rows in zip(starts, np.split(row_of, starts[1:]))}

    def tenants(self, row: int) -> list[int]:
        return [t for t in self._slots[row].tolist() if t >= 0] + sorted(self._overflow.get(row, ()))

    def add(self, row: int, tenant: int) -> bool:
        """Record `tenant` as a reader; False if it was one already."""
        slots = self._slots[row].tolist()
        if tenant in slots or tenant in self._overflow.get(row, ()):
            return False
        if -1 in slots:
            self._slots[row, slots.index(-1)] = tenant
        else:
            self._overflow.setdefault(row, set()).add(tenant)
        return True

    def discard(self, row: int, tenant: int) -> bool:
        """Forget `tenant` as a reader; False if it was not one."""
        hit = np.flatnonzero(self._slots[row] == tenant)
        if len(hit):
            self._slots[row, hit[0]] = -1
            return True
        extra = self._overflow.get(row)
        if extra and tenant in extra:
            extra.discard(tenant)
            return True
        return False

    def pop(self, row: int) -> list[int]:
        tenants = self.tenants(row)
        self._slots[row] = -1
        self._overflow.pop(row, None)
        return tenants

    @property
    def nbytes(self) -> int:
        return self._slots.nbytes + sum(64 + 8 * len(s) for s in self._overflow.values())
