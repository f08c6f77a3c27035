"""A growable table of vectors addressed by external id: the one copy every index here keeps."""

import numpy as np


class VectorTable:
    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.vectors = np.empty((0, dim), dtype=np.float32)
        self.ids = np.empty(0, dtype=np.int64)  # -1 on free rows
        self._row_of: dict[int, int] = {}
        self._free: list[int] = []
        self._used = 0  # rows handed out, live or freed

    def __len__(self) -> int:
        return len(self._row_of)

    def __contains__(self, chunk_id: int) -> bool:
        return int(chunk_id) in self._row_of

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """Store vectors under new ids; returns their rows."""
        if len(np.unique(ids)) != len(ids) or any(int(i) in self._row_of for i in ids):
            raise ValueError("ids: already present or repeated; remove them first")
        rows = np.array([self._free.pop() if self._free else self._grow() for _ in range(len(ids))], dtype=np.int64)
        self.vectors[rows] = vectors
        self.ids[rows] = ids
        self._row_of.update(zip(ids.tolist(), rows.tolist()))
        return rows

    def _grow(self) -> int:
        row = self._used
        if row == len(self.ids):
            capacity = max(1024, row + row // 16)  # 6.25% growth: small slack, copies amortised over cap/16 adds
            self.vectors = np.resize(self.vectors, (capacity, self.dim))
            self.ids = np.concatenate([self.ids, np.full(capacity - row, -1, dtype=np.int64)])
        self._used += 1
        return row

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Rows of present ids; KeyError naming the missing ones otherwise."""
        missing = [int(i) for i in ids if int(i) not in self._row_of]
        if missing:
            raise KeyError(f"ids: not in the index: {missing[:5]}")
        return np.fromiter((self._row_of[int(i)] for i in ids), dtype=np.int64, count=len(ids))

    def remove(self, ids: np.ndarray) -> np.ndarray:
        """Free the rows of present ids (absent ids are ignored); returns the freed rows."""
        rows = [self._row_of.pop(int(i)) for i in ids if int(i) in self._row_of]
        self.ids[rows] = -1
        self._free.extend(rows)
        return np.array(rows, dtype=np.int64)

    def shrink(self) -> None:
        """Drop the spare rows beyond the last one in use (growth leaves up to 6.25%)."""
        self.vectors = self.vectors[: self._used].copy()
        self.ids = self.ids[: self._used].copy()

    @property
    def capacity(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        """Allocated arrays (slack included) plus the id -> row map at ~24 bytes an entry."""
        return self.vectors.nbytes + self.ids.nbytes + 24 * len(self._row_of)
