"""Attributes against a plain evaluation of each filter over each chunk's metadata dict."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from index.attributes import Attributes
from index.filters import MAX_DEPTH, MAX_TERMS, AllOf, AnyOf, Equals, FilterError, Not, OneOf, Range, check_filter
from tests.index.filter_oracle import filters, holds, metadata

@settings(max_examples=150, deadline=None)
@given(st.lists(metadata, min_size=1, max_size=40), st.lists(st.integers(0, 39), max_size=15), st.lists(metadata, max_size=5), filters)
def test_matching_equals_a_plain_evaluation(metas, removed, readded, where) -> None:
    """Adds, removals and re-adds (an id written again replaces its values), then one filter over every id."""
    attributes = Attributes()
    truth = dict(enumerate(metas))
    attributes.add(np.arange(len(metas)), metas)
    gone = sorted({i for i in removed if i < len(metas)})
    attributes.remove(np.array(gone, dtype=np.int64))
    for i in gone:
        truth.pop(i)
    again = gone[: len(readded)]
    attributes.add(np.array(again, dtype=np.int64), readded[: len(again)])
    truth.update(zip(again, readded))
    ids = np.arange(-1, len(metas) + 1)
    expected = [holds(where, truth.get(i, {})) for i in ids.tolist()]  # an unknown id: no metadata
    assert attributes.compile(check_filter(where))(ids).tolist() == expected


def test_columns_give_their_room_back() -> None:
    attributes = Attributes()
    attributes.add(np.arange(10_000), [{"year": i} for i in range(10_000)])
    full = attributes.nbytes()
    attributes.remove(np.arange(9_000))
    assert attributes.nbytes() < full / 4
    assert attributes.compile(Range("year", gte=8_999))(np.array([8_999, 9_000, 9_999])).tolist() == [False, True, True]


@pytest.mark.parametrize(
    "where, part",
    [
        (Range("year"), "filter.range"),
        (Range("year", gt="2020"), "filter.range.gt"),
        (Equals("kind", ["a"]), "filter.equals"),
        (OneOf("kind", ()), "filter.in"),
        (AllOf((Equals("k", 1), AnyOf(()))), "filter.all_of[1].any_of"),
        (Equals("", 1), "filter.key"),
        (OneOf("k", tuple(range(MAX_TERMS + 1))), "filter"),
    ],
)
def test_bad_filters_name_their_part(where, part) -> None:
    with pytest.raises(FilterError) as error:
        check_filter(where)
    assert error.value.part == part


def test_filters_nest_only_so_deep() -> None:
    where = Equals("k", 1)
    for _ in range(MAX_DEPTH + 1):
        where = Not(where)
    with pytest.raises(FilterError, match="deeper"):
        check_filter(where)
