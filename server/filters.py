"""A Search filter as the API sends it (`tenantkv.v1.Filter`) made into the index's filter, with
INVALID_ARGUMENT naming the part at fault ("filter.all_of[1].condition.range")."""

from google.protobuf import struct_pb2

from index.filters import MAX_DEPTH, AllOf, AnyOf, Equals, Filter, FilterError, Not, OneOf, Range, Scalar, check_filter
from protos.tenantkv.v1 import retrieval_pb2
from store.errors import InvalidArgument


def filter_from(message: retrieval_pb2.Filter, part: str = "filter") -> Filter:
    try:
        return check_filter(_filter(message, part, 0), part)
    except FilterError as error:
        raise InvalidArgument(str(error)) from None


def _filter(message: retrieval_pb2.Filter, part: str, depth: int) -> Filter:
    if depth > MAX_DEPTH:
        raise FilterError(part, f"nested deeper than {MAX_DEPTH}")
    kind = message.WhichOneof("kind")
    if kind == "condition":
        return _condition(message.condition, f"{part}.condition")
    if kind in ("all_of", "any_of"):
        group = AllOf if kind == "all_of" else AnyOf
        filters = getattr(message, kind).filters
        return group(tuple(_filter(f, f"{part}.{kind}[{i}]", depth + 1) for i, f in enumerate(filters)))
    if kind == "not_":
        return Not(_filter(message.not_, f"{part}.not_", depth + 1))
    raise FilterError(part, "names no condition, all_of, any_of or not_")


def _condition(message: retrieval_pb2.Condition, part: str) -> Filter:
    """Checked here, so its errors name the condition's part of the message."""
    test = message.WhichOneof("test")
    if test == "equals":
        return check_filter(Equals(message.key, _scalar(message.equals, f"{part}.equals")), part)
    if test == "in":
        return check_filter(OneOf(message.key, tuple(_scalar(v, f"{part}.in[{i}]") for i, v in enumerate(getattr(message, "in").values))), part)
    if test == "range":
        bounds = {name: getattr(message.range, name) if message.range.HasField(name) else None for name in ("gt", "gte", "lt", "lte")}
        return check_filter(Range(message.key, **bounds), part)
    raise FilterError(part, "names no test: equals, in or range")


def _scalar(value: struct_pb2.Value, part: str) -> Scalar:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        return value.number_value
    if kind == "bool_value":
        return value.bool_value
    raise FilterError(part, f"must be a string, number or bool, got {kind or 'nothing'}")
