"""`--where` text made into the API's filter message, on the client's side (the server takes
messages, never text to parse):

    kind = "contract" and (year >= 2020 or not draft = true) and region in ["eu", "uk"]

Comparisons `=` (or `==`), `!=`, `<`, `<=`, `>`, `>=` and `in [...]` of a key against strings in
double quotes, numbers, true or false; `and` binds tighter than `or`; `not` and parentheses.
"""

import json
import re

from google.protobuf import struct_pb2

from protos.tenantkv.v1 import retrieval_pb2

_TOKEN = re.compile(r'\s*(?:(?P<string>"(?:[^"\\]|\\.)*")|(?P<number>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)|(?P<op>==|!=|<=|>=|=|<|>|\(|\)|\[|\]|,)|(?P<word>[A-Za-z_][A-Za-z0-9_.-]*))')
_RANGES = {"<": "lt", "<=": "lte", ">": "gt", ">=": "gte"}


def parse_where(text: str) -> retrieval_pb2.Filter:
    """ValueError naming the position of what cannot be read."""
    parser = _Parser(text)
    where = parser.disjunction()
    if parser.peek() is not None:
        parser.fail("expected and, or or the end")
    return where


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, str, int]] = []  # (kind, text, position)
        position = 0
        while text[position:].strip():
            match = _TOKEN.match(text, position)
            if match is None:
                rest = text[position:].lstrip()
                raise ValueError(f"where: cannot read {rest[:20]!r} at {len(text) - len(rest)}")
            self.tokens.append((match.lastgroup, match.group(match.lastgroup), match.start(match.lastgroup)))
            position = match.end()
        self.at = 0

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self) -> tuple[str, str, int]:
        token = self.peek()
        if token is None:
            raise ValueError("where: ends too early")
        self.at += 1
        return token

    def fail(self, expected: str):
        token = self.peek()
        where = f"{token[1]!r} at {token[2]}" if token else "the end"
        raise ValueError(f"where: {expected}, found {where}")

    def accept(self, text: str) -> bool:
        token = self.peek()
        if token is not None and token[0] in ("op", "word") and token[1].lower() == text:
            self.at += 1
            return True
        return False

    def disjunction(self) -> retrieval_pb2.Filter:
        parts = [self.conjunction()]
        while self.accept("or"):
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else retrieval_pb2.Filter(any_of=retrieval_pb2.Filters(filters=parts))

    def conjunction(self) -> retrieval_pb2.Filter:
        parts = [self.unary()]
        while self.accept("and"):
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else retrieval_pb2.Filter(all_of=retrieval_pb2.Filters(filters=parts))

    def unary(self) -> retrieval_pb2.Filter:
        if self.accept("not"):
            return retrieval_pb2.Filter(not_=self.unary())
        if self.accept("("):
            inner = self.disjunction()
            if not self.accept(")"):
                self.fail("expected )")
            return inner
        return self.comparison()

    def comparison(self) -> retrieval_pb2.Filter:
        kind, key, _ = self.take()
        if kind not in ("word", "string"):
            self.at -= 1
            self.fail("expected a metadata key")
        key = json.loads(key) if kind == "string" else key
        if self.accept("in"):
            return _condition(key, **{"in": self.values()})
        op = self.take()[1]
        if op in ("=", "=="):
            return _condition(key, equals=self.value())
        if op == "!=":
            return retrieval_pb2.Filter(not_=_condition(key, equals=self.value()))
        if op in _RANGES:
            value = self.value()
            if value.WhichOneof("kind") != "number_value":
                self.at -= 1
                self.fail(f"{op} compares with a number")
            return _condition(key, range=retrieval_pb2.NumericRange(**{_RANGES[op]: value.number_value}))
        self.at -= 1
        self.fail("expected =, !=, <, <=, >, >= or in")

    def values(self) -> struct_pb2.ListValue:
        if not self.accept("["):
            self.fail("expected [")
        values = [self.value()]
        while self.accept(","):
            values.append(self.value())
        if not self.accept("]"):
            self.fail("expected , or ]")
        return struct_pb2.ListValue(values=values)

    def value(self) -> struct_pb2.Value:
        kind, text, _ = self.take()
        if kind == "string":
            return struct_pb2.Value(string_value=json.loads(text))
        if kind == "number":
            return struct_pb2.Value(number_value=float(text))
        if kind == "word" and text in ("true", "false"):
            return struct_pb2.Value(bool_value=text == "true")
        self.at -= 1
        self.fail("expected a string in double quotes, a number, true or false")


def _condition(key: str, **test) -> retrieval_pb2.Filter:
    return retrieval_pb2.Filter(condition=retrieval_pb2.Condition(key=key, **test))
