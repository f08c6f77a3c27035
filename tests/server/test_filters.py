"""Filter messages the parser never makes (empty, out of bounds, wrongly typed): INVALID_ARGUMENT naming the part."""

import pytest
from google.protobuf import struct_pb2

from index.filters import MAX_DEPTH
from protos.tenantkv.v1.retrieval_pb2 import Condition, Filter, Filters, NumericRange
from server.filters import filter_from
from store.errors import InvalidArgument


def nested(depth: int) -> Filter:
    where = Filter(condition=Condition(key="k", equals=struct_pb2.Value(number_value=1)))
    for _ in range(depth):
        where = Filter(not_=where)
    return where


@pytest.mark.parametrize(
    "message, part",
    [
        (Filter(), "filter: names no condition"),
        (Filter(condition=Condition(key="k")), "filter.condition: names no test"),
        (Filter(condition=Condition(key="", equals=struct_pb2.Value(string_value="x"))), "filter.condition.key"),
        (Filter(condition=Condition(key="k", equals=struct_pb2.Value(null_value=0))), "filter.condition.equals: must be a string, number or bool"),
        (Filter(condition=Condition(key="k", range=NumericRange())), "filter.condition.range: needs at least one bound"),
        (Filter(all_of=Filters(filters=[nested(0), Filter()])), "filter.all_of[1]: names no condition"),
        (Filter(any_of=Filters()), "filter.any_of: needs at least one filter"),
        (nested(MAX_DEPTH + 1), "nested deeper"),
        (Filter(condition=Condition(key="k", **{"in": struct_pb2.ListValue(values=[struct_pb2.Value(number_value=i) for i in range(65)])})), "filter.condition: 65 terms"),
    ],
)
def test_bad_filter_messages_name_the_part(message: Filter, part: str) -> None:
    with pytest.raises(InvalidArgument, match=part.replace("[", "\\[").replace("]", "\\]")):
        filter_from(message)


def test_a_nan_bound_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="filter.condition.range.lt"):
        filter_from(Filter(condition=Condition(key="k", range=NumericRange(lt=float("nan")))))
