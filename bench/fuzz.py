"""A protobuf fuzzer for a running server: requests drawn from the message descriptors, and raw garbage.

Each example picks a method and sends one of: a request built field by field from its descriptor
(strings empty, huge, with control characters; integers at their type's extremes; floats NaN and
infinite; enums outside their values; repeated fields empty, short or vector-sized; metadata
Structs deep, with NaN), the bytes of such a request mutated, or random bytes. Every answer must be
a status the client caused; INTERNAL or UNKNOWN is a finding. tests/server/test_fuzz.py runs a
bounded number of examples; bench/chaos.py can run `fuzz` for longer.

    .venv/bin/python bench/fuzz.py --address 127.0.0.1:50051 --admin-key-file tenantkv-data/admin.key --examples 5000
"""

import argparse
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as seeded
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.hostile import DIM, METHODS, Target, admin_key, call, nested, no_key, open_channel, prepare, tenant_key  # noqa: E402
from server.convert import struct_from_dict  # noqa: E402

CODE = grpc.StatusCode
CALL_TIMEOUT_S = 30.0
# Methods fuzzed: all but Health.Watch, which streams for as long as the client listens.
FUZZED = sorted(m for m in METHODS if m != "/grpc.health.v1.Health/Watch")
INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_ENUM: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
# A valid RetrieveAndGenerate generates at most two tokens: the fuzzer hunts errors, not decode time.
OVERRIDES = {
    ("tenantkv.v1.RetrieveAndGenerateRequest", "max_new_tokens"): st.sampled_from([-(2**31), -1, 1, 2, 513, 2**31 - 1]),
}

HOSTILE_TEXT = st.sampled_from(["", " ", "\n\t", "\x00", "a\x07b", "\u202eevil", "é" * 300, "x" * 5000, "nobody", "Not Valid!", "ok-name"])
TEXT = st.one_of(HOSTILE_TEXT, st.text(st.characters(exclude_categories=("Cs",)), max_size=40))


def _json(depth: int = 4) -> st.SearchStrategy:
    """JSON-like values for a Struct, including what JSON cannot hold (NaN, infinity) and deep nesting."""
    leaves = st.one_of(st.none(), st.booleans(), st.floats(), TEXT, st.integers(-(2**53), 2**53))
    deep = st.integers(20, 28).map(nested)  # past ~33 levels the library cannot build the message (hostile.py sends those as bytes)
    return st.one_of(
        deep,
        st.recursive(leaves, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3), max_leaves=depth * 3),
    )


def _scalar(f: FieldDescriptor) -> st.SearchStrategy:
    if f.type in INT_RANGES:
        low, high = INT_RANGES[f.type]
        return st.one_of(st.sampled_from([low, high, 0, 1, -1 if low < 0 else 2]), st.integers(low, high))
    if f.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        width = 32 if f.type == FieldDescriptor.TYPE_FLOAT else 64
        return st.one_of(st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 3e38]), st.floats(width=width))
    if f.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if f.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    return TEXT


def _field(f: FieldDescriptor, depth: int) -> st.SearchStrategy:
    override = OVERRIDES.get((f.containing_type.full_name, f.name))
    if override is not None:
        return override
    one = message_strategy(f.message_type, depth + 1) if f.type == FieldDescriptor.TYPE_MESSAGE else _scalar(f)
    if not f.is_repeated:
        return one
    if f.type == FieldDescriptor.TYPE_FLOAT:  # vectors: sometimes exactly the store's dimension
        return st.one_of(st.lists(one, max_size=4), st.lists(one, min_size=DIM, max_size=DIM))
    return st.lists(one, max_size=3)


def message_strategy(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of `descriptor`'s type with any subset of fields set to hostile values."""
    cls = message_factory.GetMessageClass(descriptor)
    if descriptor.full_name == "google.protobuf.Struct":
        return st.dictionaries(TEXT, _json(), max_size=3).map(struct_from_dict)
    if depth > 3:
        return st.just(cls())
    fields = {f.name: _field(f, depth) for f in descriptor.fields}
    return st.fixed_dictionaries({}, optional=fields).map(lambda values: _build(cls, values))


def _build(cls: type[Message], values: dict) -> Message:
    message = cls()
    for name, value in values.items():
        if isinstance(value, list):
            getattr(message, name).extend(value)
        elif isinstance(value, Message):
            getattr(message, name).CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


def _mutated(raw: bytes, data: st.DataObject) -> bytes:
    """`raw` with a few bytes flipped, cut short, or extended."""
    if not raw:
        return data.draw(st.binary(min_size=1, max_size=16))
    out = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4))):
        out[data.draw(st.integers(0, len(out) - 1))] ^= data.draw(st.integers(1, 255))
    how = data.draw(st.sampled_from(["flip", "truncate", "append"]))
    if how == "truncate":
        return bytes(out[: data.draw(st.integers(0, len(out) - 1))])
    return bytes(out) + (data.draw(st.binary(min_size=1, max_size=8)) if how == "append" else b"")


@dataclass
class FuzzReport:
    examples: int = 0
    codes: Counter = field(default_factory=Counter)
    findings: list[tuple[str, str, str, bytes]] = field(default_factory=list)  # method, code, details, first request


def fuzz(target: Target, examples: int, seed: int = 0) -> FuzzReport:
    """Send `examples` fuzzed requests to the server behind `target`; INTERNAL or UNKNOWN answers become findings."""
    report = FuzzReport()

    with open_channel(target.address) as channel:

        @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        @given(st.data())
        def one(data: st.DataObject) -> None:
            method = data.draw(st.sampled_from(FUZZED), label="method")
            descriptor = METHODS[method]
            count = data.draw(st.integers(1, 3)) if descriptor.client_streaming else 1
            requests = []
            for _ in range(count):
                kind = data.draw(st.sampled_from(["message", "message", "mutated", "garbage"]))
                raw = data.draw(message_strategy(descriptor.input_type)).SerializeToString() if kind != "garbage" else b""
                requests.append(raw if kind == "message" else _mutated(raw, data))
            metadata = (admin_key if method.startswith("/tenantkv.v1.TenantAdmin/") else tenant_key)(target)
            if data.draw(st.sampled_from([False] * 19 + [True])):  # hypothesis favours the first choice: keyless 1 in ~20
                metadata = no_key(target)
            code, details = call(channel, method, requests, metadata, CALL_TIMEOUT_S)
            report.examples += 1
            report.codes[code.name] += 1
            if code in (CODE.INTERNAL, CODE.UNKNOWN):
                report.findings.append((method, code.name, details, requests[0]))

        seeded(seed)(one)()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", default="127.0.0.1:50051")
    parser.add_argument("--admin-key-file", type=Path, default=Path("tenantkv-data/admin.key"))
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    report = fuzz(prepare(args.address, args.admin_key_file.read_text().strip(), tenant_id="fuzz"), args.examples, args.seed)
    print(f"{report.examples} examples: {dict(report.codes)}; {len(report.findings)} INTERNAL or UNKNOWN")
    for method, code, details, raw in report.findings:
        print(f"{method} {code} {details[:100]} {raw[:64]!r}")


if __name__ == "__main__":
    main()
