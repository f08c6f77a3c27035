"""The contract every tenant index implements, and the argument checks they share."""

from typing import Callable, Literal, Protocol

import numpy as np

Metric = Literal["ip", "l2"]
IdPredicate = Callable[[np.ndarray], np.ndarray]  # int64 chunk ids [n] -> bool [n]: which may be returned


class TenantIndex(Protocol):
    dim: int

    def train(self, sample: np.ndarray) -> None: ...

    def add(self, ids: np.ndarray, vectors: np.ndarray, tenant: int) -> None: ...

    def grant(self, ids: np.ndarray, tenant: int) -> None: ...

    def revoke(self, ids: np.ndarray, tenant: int) -> None: ...

    def remove(self, ids: np.ndarray) -> None: ...

    def search(self, queries: np.ndarray, tenant: int, k: int, where: IdPredicate | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(distances float32 [nq, k], ids int64 [nq, k]); -1 pads ids where fewer than k are readable
        (and, with `where`, satisfy it).

        For "ip" distances are similarities, best first (descending); for "l2" squared distances, ascending.
        """
        ...

    def memory_bytes(self) -> int: ...


def check_vectors(vectors: np.ndarray, dim: int, name: str = "vectors") -> np.ndarray:
    """A C-contiguous float32 [n, dim] array; TypeError or ValueError naming `name` otherwise."""
    if not isinstance(vectors, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array, got {type(vectors).__name__}")
    if vectors.dtype != np.float32:
        raise TypeError(f"{name}: expected float32, got {vectors.dtype}")
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise ValueError(f"{name}: expected shape [n, {dim}], got {list(vectors.shape)}")
    return np.ascontiguousarray(vectors)


def check_ids(ids: np.ndarray, count: int | None = None, name: str = "ids") -> np.ndarray:
    """A 1-d int64 array of non-negative ids (uint64 or int64 in), `count` long if given."""
    if not isinstance(ids, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array, got {type(ids).__name__}")
    if ids.dtype not in (np.int64, np.uint64):
        raise TypeError(f"{name}: expected int64 or uint64, got {ids.dtype}")
    if ids.ndim != 1:
        raise ValueError(f"{name}: expected a 1-d array, got shape {list(ids.shape)}")
    if count is not None and len(ids) != count:
        raise ValueError(f"{name}: expected {count} ids, got {len(ids)}")
    ids = ids.astype(np.int64, copy=False)
    if len(ids) and (ids[0] < 0 if len(ids) == 1 else ids.min() < 0):  # one id, the online path: no reduction call
        raise ValueError(f"{name}: ids must be non-negative")
    return ids


def check_k(k: int) -> int:
    if not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"k: must be a positive integer, got {k!r}")
    return int(k)


def check_tenant(tenant: int) -> int:
    if not isinstance(tenant, (int, np.integer)) or tenant < 0:
        raise ValueError(f"tenant: must be a non-negative integer, got {tenant!r}")
    return int(tenant)
