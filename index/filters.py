"""Filters over a document's top-level metadata, as Search takes them: what a filter is and its bounds.

A condition names one key: `Equals` a string, number or bool; `OneOf` a list of those; `Range`
with numeric bounds. `AllOf`, `AnyOf` and `Not` combine them. A key that is absent, or holds a
value of another type (a list, an object, a string for a range), matches no condition on it.
`index.attributes` evaluates filters over many chunks at once.
"""

from dataclasses import dataclass

Scalar = str | float | bool

MAX_DEPTH = 8  # nesting of AllOf / AnyOf / Not
MAX_TERMS = 64  # conditions and the values of every OneOf, together


class FilterError(ValueError):
    """A filter out of bounds or of the wrong type; `part` names where, e.g. "all_of[1].range"."""

    def __init__(self, part: str, reason: str) -> None:
        super().__init__(f"{part}: {reason}")
        self.part = part


@dataclass(frozen=True, slots=True)
class Equals:
    key: str
    value: Scalar


@dataclass(frozen=True, slots=True)
class OneOf:
    key: str
    values: tuple[Scalar, ...]


@dataclass(frozen=True, slots=True)
class Range:
    """Numeric bounds; None: unbounded on that side."""

    key: str
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None


@dataclass(frozen=True, slots=True)
class AllOf:
    parts: tuple["Filter", ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    parts: tuple["Filter", ...]


@dataclass(frozen=True, slots=True)
class Not:
    part: "Filter"


Filter = Equals | OneOf | Range | AllOf | AnyOf | Not


def check_filter(where: Filter, part: str = "filter") -> Filter:
    """`where` itself if it is within MAX_DEPTH and MAX_TERMS and well typed; FilterError otherwise."""
    terms = _check(where, part, 0)
    if terms > MAX_TERMS:
        raise FilterError(part, f"{terms} terms; at most {MAX_TERMS}")
    return where


def _check(where: Filter, part: str, depth: int) -> int:
    if depth > MAX_DEPTH:
        raise FilterError(part, f"nested deeper than {MAX_DEPTH}")
    match where:
        case Equals(key, value):
            _check_key(key, part)
            _check_scalar(value, f"{part}.equals")
            return 1
        case OneOf(key, values):
            _check_key(key, part)
            if not values:
                raise FilterError(f"{part}.in", "needs at least one value")
            for i, value in enumerate(values):
                _check_scalar(value, f"{part}.in[{i}]")
            return len(values)
        case Range(key, gt, gte, lt, lte):
            _check_key(key, part)
            bounds = {"gt": gt, "gte": gte, "lt": lt, "lte": lte}
            if all(v is None for v in bounds.values()):
                raise FilterError(f"{part}.range", "needs at least one bound")
            for name, bound in bounds.items():
                if bound is not None and (isinstance(bound, bool) or not isinstance(bound, (int, float)) or bound != bound):
                    raise FilterError(f"{part}.range.{name}", f"must be a number, got {bound!r}")
            return 1
        case AllOf(parts) | AnyOf(parts):
            name = "all_of" if isinstance(where, AllOf) else "any_of"
            if not parts:
                raise FilterError(f"{part}.{name}", "needs at least one filter")
            return sum(_check(p, f"{part}.{name}[{i}]", depth + 1) for i, p in enumerate(parts))
        case Not(inner):
            return _check(inner, f"{part}.not", depth + 1)
    raise FilterError(part, f"not a filter: {type(where).__name__}")


def _check_key(key: str, part: str) -> None:
    if not isinstance(key, str) or not key:
        raise FilterError(f"{part}.key", "must name a metadata key")


def _check_scalar(value, part: str) -> None:
    if not isinstance(value, (str, int, float, bool)) or (isinstance(value, float) and value != value):
        raise FilterError(part, f"must be a string, number or bool, got {type(value).__name__}")
