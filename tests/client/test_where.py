"""`--where` text to the filter message, read back by the server's conversion into the index's filter."""

import pytest

from client.where import parse_where
from index.filters import AllOf, AnyOf, Equals, Not, OneOf, Range
from server.filters import filter_from


@pytest.mark.parametrize(
    "text, expected",
    [
        ('kind = "contract"', Equals("kind", "contract")),
        ("year >= 2020 and year < 2024.5", AllOf((Range("year", gte=2020), Range("year", lt=2024.5)))),
        ("a = 1 or b = 2 and c = 3", AnyOf((Equals("a", 1), AllOf((Equals("b", 2), Equals("c", 3)))))),
        ("(a = 1 or b = 2) and not c == true", AllOf((AnyOf((Equals("a", 1), Equals("b", 2))), Not(Equals("c", True))))),
        ('region in ["eu", "uk", 3, false]', OneOf("region", ("eu", "uk", 3, False))),
        ('draft != false', Not(Equals("draft", False))),
        ('"two words" = "a \\"quoted\\" value"', Equals("two words", 'a "quoted" value')),
        ("x > -1e3", Range("x", gt=-1000)),
    ],
)
def test_where_text_reads_as_the_filter_it_says(text: str, expected) -> None:
    assert filter_from(parse_where(text)) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("kind =", "ends too early"),
        ('year >= "2020"', ">= compares with a number"),
        ("a = 1 b = 2", "expected and, or or the end, found 'b' at 6"),
        ("(a = 1", "expected \\)"),
        ("a ~ 2", "cannot read '~ 2' at 2"),
        ("a in 1", "expected \\["),
        ("a = kind", "expected a string in double quotes"),
    ],
)
def test_unreadable_where_text_says_where(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_where(text)
