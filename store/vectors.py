"""Vectors as the store keeps them: float32 rows of unit L2 norm, so every score is a cosine.

Norms are taken in float64: a float32 sum of squares overflows from about 1.8e19 per value, and a
client may send any finite float32 (up to 3.4e38). A row whose norm is zero or not finite cannot
be made a unit vector: a client's is refused, naming its field; a stored one becomes zeros.
"""

import numpy as np

from store.errors import InvalidArgument


def unit_rows(vectors: np.ndarray, fields: list[str]) -> np.ndarray:
    """float32 [n, dim] rows scaled to unit norm; InvalidArgument naming the first row of `fields`
    that holds NaN or infinity or is all zeros."""
    wide = np.asarray(vectors, dtype=np.float64)
    norms = _norms(wide)
    bad = ~np.isfinite(norms) | (norms == 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        reason = "must be finite (no NaN or infinity)" if not np.isfinite(wide[row]).all() else "must not be all zeros"
        raise InvalidArgument(f"{fields[row]}: values {reason}")
    return (wide / norms[:, None]).astype(np.float32)


def safe_rows(vectors: np.ndarray) -> tuple[np.ndarray, int]:
    """Stored rows, which are not trusted, made safe to index: each scaled to unit norm where it
    can be and all zeros where it cannot (it then scores 0 against every query); returns the rows
    and how many became zeros."""
    wide = np.asarray(vectors, dtype=np.float64)
    norms = _norms(wide)
    usable = np.isfinite(norms) & (norms > 0)
    out = np.zeros_like(wide)
    out[usable] = wide[usable] / norms[usable, None]
    return out.astype(np.float32), int((~usable).sum())


def _norms(wide: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):
        return np.sqrt(np.einsum("ij,ij->i", wide, wide))
