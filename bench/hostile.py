"""A table of hostile inputs for every RPC, each with the status a correct server answers.

Each case is a name, the method, the request's bytes (several for a client stream) built for a
prepared `Target`, the call metadata, and the expected status code. Client mistakes must get a
precise status naming the field, never INTERNAL or UNKNOWN. tests/server/test_errors.py runs the
table against a test server; bench/chaos.py can run it against a server under load.

    .venv/bin/python bench/hostile.py --address 127.0.0.1:50051 --admin-key-file tenantkv-data/admin.key
"""

import argparse
import math
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import grpc
import numpy as np
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protos.tenantkv.v1 import ingest_pb2, kv_cache_pb2, retrieval_pb2, tenant_admin_pb2  # noqa: E402
from client.api import Client, DocumentText, bearer  # noqa: E402
from server.convert import struct_from_dict  # noqa: E402

CODE = grpc.StatusCode
DIM = 384
MAX_SEND_BYTES = 64 << 20  # above the server's 4 MiB limit, so the server's own limit is what answers
TIMEOUT_S = 120.0

ADMIN = "/tenantkv.v1.TenantAdmin/"
INGEST = "/tenantkv.v1.Ingest/"
RETRIEVAL = "/tenantkv.v1.Retrieval/"
KV = "/tenantkv.v1.KVCache/"
HEALTH = "/grpc.health.v1.Health/"
HEALTH_CHECK = HEALTH + "Check"

# Every method the server offers: its request type, and whether requests and responses stream.
DESCRIPTORS = [
    *(module.DESCRIPTOR.services_by_name[name] for module, name in [
        (tenant_admin_pb2, "TenantAdmin"), (ingest_pb2, "Ingest"), (retrieval_pb2, "Retrieval"), (kv_cache_pb2, "KVCache"),
    ]),
    health_pb2.DESCRIPTOR.services_by_name["Health"],
    reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
]
METHODS = {f"/{service.full_name}/{m.name}": m for service in DESCRIPTORS for m in service.methods}


@dataclass(frozen=True, slots=True)
class Target:
    """A running server prepared for the table: a tenant with a few stored chunks and both kinds of key."""

    address: str
    admin_key: str
    tenant_id: str
    tenant_key: str
    chunk_id: int  # one of the tenant's chunks


Build = Callable[[Target], Sequence[bytes]]
Metadata = Callable[[Target], tuple[tuple[str, str], ...]]


def tenant_key(target: Target) -> tuple[tuple[str, str], ...]:
    return bearer(target.tenant_key)


def admin_key(target: Target) -> tuple[tuple[str, str], ...]:
    return bearer(target.admin_key)


def no_key(target: Target) -> tuple[tuple[str, str], ...]:
    return ()


@dataclass(frozen=True, slots=True)
class HostileCase:
    name: str
    method: str  # the full gRPC path, a key of METHODS
    requests: Build  # the serialized request; several messages for a client stream
    expected: grpc.StatusCode
    metadata: Metadata = tenant_key

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method: {self.method!r} is not a method of the server")


@dataclass(frozen=True, slots=True)
class Outcome:
    case: HostileCase
    code: grpc.StatusCode
    details: str

    @property
    def internal(self) -> bool:
        """A status that means the server, not the client, is at fault."""
        return self.code in (CODE.INTERNAL, CODE.UNKNOWN)


# ---- request builders


def _one(message: Message) -> Build:
    return lambda target: [message.SerializeToString()]


def _raw(*messages: bytes) -> Build:
    return lambda target: list(messages)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field_bytes(number: int, payload: bytes) -> bytes:
    """One length-delimited field, written by hand so it may hold bytes a client library refuses (bad UTF-8)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def nested(depth: int) -> dict:
    """A metadata object `depth` levels deep."""
    value: dict = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"x": value}
    return value


def nested_struct_bytes(depth: int) -> bytes:
    """`nested(depth)` as Struct bytes, written by hand: past ~49 levels the Python library refuses to build it."""
    value = b"\x11" + struct.pack("<d", 1.0)  # Value.number_value
    key = b"leaf"
    for _ in range(depth):
        entry = field_bytes(1, key) + field_bytes(2, value)  # a map<string, Value> entry
        value, key = field_bytes(5, field_bytes(1, entry)), b"x"  # Value.struct_value
    return field_bytes(1, entry)


def _vector(seed: int = 0) -> list[float]:
    v = np.random.default_rng(seed).standard_normal(DIM)
    return (v / np.linalg.norm(v)).astype(np.float32).tolist()


def _upsert(*documents: ingest_pb2.Document) -> ingest_pb2.UpsertRequest:
    return ingest_pb2.UpsertRequest(documents=documents)


def _doc(external_id: str = "hostile-doc", text: str = "", chunks: Sequence[ingest_pb2.ChunkInput] = (), metadata: dict | None = None) -> ingest_pb2.Document:
    return ingest_pb2.Document(
        external_id=external_id, text=text, chunks=chunks, metadata=struct_from_dict(metadata) if metadata is not None else None
    )


def _chunk(text: str = "a passage", vector: Sequence[float] | None = None) -> ingest_pb2.ChunkInput:
    return ingest_pb2.ChunkInput(text=text, vector=_vector() if vector is None else vector)


def _ask(question: str = "What is stored?", **fields) -> Build:
    return _one(retrieval_pb2.RetrieveAndGenerateRequest(question=question, **fields))


def _metadata_upsert(metadata: dict) -> Build:
    return _one(_upsert(_doc(chunks=[_chunk()], metadata=metadata)))


def _metadata_bytes_upsert(struct_bytes: bytes) -> Build:
    """An Upsert of one document whose metadata Struct is `struct_bytes`."""
    return _raw(field_bytes(1, _doc(chunks=[_chunk()]).SerializeToString() + field_bytes(4, struct_bytes)))


def _bad_external_id(raw_id: bytes) -> Build:
    """An Upsert whose document's external id is `raw_id`, bytes no conforming client would send."""
    document = field_bytes(1, raw_id) + field_bytes(2, b"some text")
    return _raw(field_bytes(1, document))


# A Struct map entry {"k": Value()} with no kind set: no client library writes it, the wire allows it.
_UNSET_ENTRY = field_bytes(1, field_bytes(1, b"k") + field_bytes(2, b""))


def _good_then(*tail: bytes) -> Build:
    good = _upsert(_doc("hostile-good-first", chunks=[_chunk()])).SerializeToString()
    return _raw(good, *tail)


def _for_tenant(make: Callable[[Target], Message]) -> Build:
    return lambda target: [make(target).SerializeToString()]


# Bytes that are not a protobuf message of any type: each breaks the wire format a different way.
GARBAGE = {
    "truncated_varint": b"\x08\xff\xff",
    "wire_type_7": b"\x0f\x00",
    "varint_too_long": b"\x08" + b"\xff" * 10 + b"\x01",
    "end_group_alone": b"\x0c",
    "length_past_end": b"\x0a\xff\xff\xff\xff\x0fab",
    "unterminated_group": b"\x0b\x08\x01",
}
# Request types whose field 1 is a string, so a length-delimited field 1 with bad UTF-8 fails to parse.
STRING_FIELD_1 = [ADMIN + m for m in ("CreateTenant", "GetTenant", "UpdateTenant", "DeleteTenant", "RevokeApiKey", "GrantChunks", "RevokeChunks")]
STRING_FIELD_1 += [INGEST + "Delete", RETRIEVAL + "Search", RETRIEVAL + "RetrieveAndGenerate", HEALTH_CHECK]


def _key_for(method: str) -> Metadata:
    """The key a method needs: none for the open services (health, reflection)."""
    if method.startswith(ADMIN):
        return admin_key
    return tenant_key if method.startswith("/tenantkv.") else no_key


def _garbage_cases() -> list[HostileCase]:
    cases = [
        HostileCase(f"{method.rsplit('/', 1)[1]}/garbage/{kind}", method, _raw(raw), CODE.INVALID_ARGUMENT, _key_for(method))
        for method in METHODS
        for kind, raw in GARBAGE.items()
    ]
    cases += [
        HostileCase(f"{method.rsplit('/', 1)[1]}/garbage/invalid_utf8", method, _raw(field_bytes(1, b"ab\xff\xfe")), CODE.INVALID_ARGUMENT, _key_for(method))
        for method in STRING_FIELD_1
    ]
    cases += [  # parsed only after authentication: a caller without a key learns nothing about parsing
        HostileCase(f"{method.rsplit('/', 1)[1]}/garbage/no_key", method, _raw(GARBAGE["wire_type_7"]), CODE.UNAUTHENTICATED, no_key)
        for method in (ADMIN + "CreateTenant", INGEST + "Upsert", RETRIEVAL + "Search", KV + "Fetch")
    ]
    return cases


def _auth_cases() -> list[HostileCase]:
    search = _one(retrieval_pb2.SearchRequest(query_vector=_vector(), k=1))
    two = lambda t: (*bearer(t.tenant_key), *bearer(t.tenant_key))  # noqa: E731
    return [
        HostileCase("Search/no_key", RETRIEVAL + "Search", search, CODE.UNAUTHENTICATED, no_key),
        HostileCase("Search/two_authorization_headers", RETRIEVAL + "Search", search, CODE.UNAUTHENTICATED, two),
        HostileCase("Search/tenant_and_admin_headers", RETRIEVAL + "Search", search, CODE.UNAUTHENTICATED,
                    lambda t: (*bearer(t.tenant_key), *bearer(t.admin_key))),
        HostileCase("Search/basic_scheme", RETRIEVAL + "Search", search, CODE.UNAUTHENTICATED,
                    lambda t: (("authorization", f"Basic {t.tenant_key}"),)),
        HostileCase("Search/empty_bearer", RETRIEVAL + "Search", search, CODE.UNAUTHENTICATED, lambda t: (("authorization", "Bearer "),)),
        HostileCase("Search/unknown_key", RETRIEVAL + "Search", search, CODE.UNAUTHENTICATED, lambda t: bearer("tkv_0123456789abcdef_nope")),
        HostileCase("Search/huge_key", RETRIEVAL + "Search", search, CODE.UNAUTHENTICATED, lambda t: bearer("tkv_" + "a" * 4000)),
        HostileCase("Search/admin_key", RETRIEVAL + "Search", search, CODE.PERMISSION_DENIED, admin_key),
        HostileCase("ListTenants/tenant_key", ADMIN + "ListTenants", _one(tenant_admin_pb2.ListTenantsRequest()), CODE.PERMISSION_DENIED),
        HostileCase("CreateTenant/no_key", ADMIN + "CreateTenant", _one(tenant_admin_pb2.CreateTenantRequest(tenant_id="x")),
                    CODE.UNAUTHENTICATED, no_key),
        HostileCase("Upsert/admin_key", INGEST + "Upsert", _one(_upsert(_doc(chunks=[_chunk()]))), CODE.PERMISSION_DENIED, admin_key),
        HostileCase("Fetch/no_key", KV + "Fetch", _one(kv_cache_pb2.FetchRequest(chunk_ids=[1])), CODE.UNAUTHENTICATED, no_key),
        HostileCase("Search/long_request_id", RETRIEVAL + "Search", _one(retrieval_pb2.SearchRequest(query_vector=_vector(), k=0)),
                    CODE.INVALID_ARGUMENT, lambda t: (*bearer(t.tenant_key), ("x-request-id", "r" * 4000))),
    ]


def _settings(**fields) -> tenant_admin_pb2.TenantSettings:
    return tenant_admin_pb2.TenantSettings(**fields)


def _admin_cases() -> list[HostileCase]:
    def create(tenant_id: str, expected: grpc.StatusCode, name: str, **settings) -> HostileCase:
        request = tenant_admin_pb2.CreateTenantRequest(tenant_id=tenant_id, settings=_settings(**settings))
        return HostileCase(f"CreateTenant/{name}", ADMIN + "CreateTenant", _one(request), expected, admin_key)

    def key(name: str, expected: grpc.StatusCode, tenant: bool = True, **fields) -> HostileCase:
        make = lambda t: tenant_admin_pb2.CreateApiKeyRequest(  # noqa: E731
            **{"scope": tenant_admin_pb2.KEY_SCOPE_TENANT, "tenant_id": t.tenant_id if tenant else "", **fields}
        )
        return HostileCase(f"CreateApiKey/{name}", ADMIN + "CreateApiKey", _for_tenant(make), expected, admin_key)

    def by_name(method: str, name: str, tenant_id: str, expected: grpc.StatusCode) -> HostileCase:
        request = {"GetTenant": tenant_admin_pb2.GetTenantRequest, "DeleteTenant": tenant_admin_pb2.DeleteTenantRequest}[method]
        return HostileCase(f"{method}/{name}", ADMIN + method, _one(request(tenant_id=tenant_id)), expected, admin_key)

    def grant(
        method: str, name: str, expected: grpc.StatusCode, owner: str | None = None, ids: Sequence[str] = ("hostile-0",), grantee: str | None = "nobody"
    ) -> HostileCase:
        """A grant or revoke; `owner` and `grantee` default to the target's tenant when None."""
        request = tenant_admin_pb2.GrantChunksRequest if method == "GrantChunks" else tenant_admin_pb2.RevokeChunksRequest
        make = lambda t: request(  # noqa: E731
            owner_tenant_id=owner or t.tenant_id, external_ids=ids, grantee_tenant_id=grantee or t.tenant_id
        )
        return HostileCase(f"{method}/{name}", ADMIN + method, _for_tenant(make), expected, admin_key)

    return [
        create("", CODE.INVALID_ARGUMENT, "empty_id"),
        create("Not Valid!", CODE.INVALID_ARGUMENT, "punctuation"),
        create("a" * 10_000, CODE.INVALID_ARGUMENT, "id_10k_chars"),
        create("a\x00b", CODE.INVALID_ARGUMENT, "nul_in_id"),
        create("\ud7ff\u202e", CODE.INVALID_ARGUMENT, "bidi_override"),
        create("hostile-x", CODE.INVALID_ARGUMENT, "unknown_codec", kv_codec="zip"),
        create("hostile-x", CODE.INVALID_ARGUMENT, "codec_10k_chars", kv_codec="z" * 10_000),
        create("hostile-x", CODE.INVALID_ARGUMENT, "rate_nan", requests_per_second=math.nan),
        create("hostile-x", CODE.INVALID_ARGUMENT, "rate_infinite", requests_per_second=math.inf),
        create("hostile-x", CODE.INVALID_ARGUMENT, "rate_negative", requests_per_second=-1.0),
        HostileCase("CreateTenant/exists", ADMIN + "CreateTenant",
                    _for_tenant(lambda t: tenant_admin_pb2.CreateTenantRequest(tenant_id=t.tenant_id)), CODE.ALREADY_EXISTS, admin_key),
        HostileCase("UpdateTenant/unknown", ADMIN + "UpdateTenant",
                    _one(tenant_admin_pb2.UpdateTenantRequest(tenant_id="nobody", settings=_settings())), CODE.NOT_FOUND, admin_key),
        HostileCase("UpdateTenant/rate_nan", ADMIN + "UpdateTenant",
                    _for_tenant(lambda t: tenant_admin_pb2.UpdateTenantRequest(tenant_id=t.tenant_id, settings=_settings(requests_per_second=math.nan))),
                    CODE.INVALID_ARGUMENT, admin_key),
        HostileCase("UpdateTenant/unknown_codec", ADMIN + "UpdateTenant",
                    _for_tenant(lambda t: tenant_admin_pb2.UpdateTenantRequest(tenant_id=t.tenant_id, settings=_settings(kv_codec="zip"))),
                    CODE.INVALID_ARGUMENT, admin_key),
        by_name("GetTenant", "unknown", "nobody", CODE.NOT_FOUND),
        by_name("GetTenant", "empty_id", "", CODE.INVALID_ARGUMENT),
        by_name("GetTenant", "id_10k_chars", "a" * 10_000, CODE.INVALID_ARGUMENT),
        by_name("DeleteTenant", "unknown", "nobody", CODE.NOT_FOUND),
        by_name("DeleteTenant", "empty_id", "", CODE.INVALID_ARGUMENT),
        by_name("DeleteTenant", "id_10k_chars", "a" * 10_000, CODE.INVALID_ARGUMENT),
        *(
            HostileCase(f"ListTenants/{name}", ADMIN + "ListTenants", _one(tenant_admin_pb2.ListTenantsRequest(**fields)),
                        CODE.INVALID_ARGUMENT, admin_key)
            for name, fields in (
                ("page_size_over_max", {"page_size": 1001}),
                ("page_size_negative", {"page_size": -1}),
                ("page_token_not_base64", {"page_token": "not a token!"}),
                ("page_token_10k_chars", {"page_token": "QQ" * 5_000}),
                ("page_token_not_a_name", {"page_token": "Tm90IEEgTmFtZQ=="}),
            )
        ),
        key("ttl_2_pow_62", CODE.INVALID_ARGUMENT, ttl_seconds=2**62),
        key("ttl_int64_max", CODE.INVALID_ARGUMENT, ttl_seconds=2**63 - 1),
        key("ttl_negative", CODE.INVALID_ARGUMENT, ttl_seconds=-1),
        key("ttl_int64_min", CODE.INVALID_ARGUMENT, ttl_seconds=-(2**63)),
        key("scope_unspecified", CODE.INVALID_ARGUMENT, scope=0),
        key("scope_unknown", CODE.INVALID_ARGUMENT, scope=99),
        key("right_unknown", CODE.INVALID_ARGUMENT, rights=[99]),
        key("right_unspecified", CODE.INVALID_ARGUMENT, rights=[0]),
        key("tenant_scope_without_tenant", CODE.INVALID_ARGUMENT, tenant=False),
        key("admin_scope_with_tenant", CODE.INVALID_ARGUMENT, scope=tenant_admin_pb2.KEY_SCOPE_ADMIN),
        HostileCase("CreateApiKey/unknown_tenant", ADMIN + "CreateApiKey",
                    _one(tenant_admin_pb2.CreateApiKeyRequest(scope=tenant_admin_pb2.KEY_SCOPE_TENANT, tenant_id="nobody")), CODE.NOT_FOUND, admin_key),
        HostileCase("CreateApiKey/tenant_10k_chars", ADMIN + "CreateApiKey",
                    _one(tenant_admin_pb2.CreateApiKeyRequest(scope=tenant_admin_pb2.KEY_SCOPE_TENANT, tenant_id="a" * 10_000)),
                    CODE.INVALID_ARGUMENT, admin_key),
        HostileCase("RevokeApiKey/empty_id", ADMIN + "RevokeApiKey", _one(tenant_admin_pb2.RevokeApiKeyRequest()), CODE.NOT_FOUND, admin_key),
        HostileCase("RevokeApiKey/unknown", ADMIN + "RevokeApiKey", _one(tenant_admin_pb2.RevokeApiKeyRequest(key_id="0123456789abcdef")),
                    CODE.NOT_FOUND, admin_key),
        HostileCase("RevokeApiKey/id_10k_chars", ADMIN + "RevokeApiKey", _one(tenant_admin_pb2.RevokeApiKeyRequest(key_id="a" * 10_000)),
                    CODE.NOT_FOUND, admin_key),
        grant("GrantChunks", "unknown_grantee", CODE.NOT_FOUND),
        grant("GrantChunks", "unknown_owner", CODE.NOT_FOUND, owner="nobody", grantee="nobody-either"),
        grant("GrantChunks", "unknown_document", CODE.NOT_FOUND, ids=["no-such-doc"], grantee="nobody"),
        grant("GrantChunks", "control_character_id", CODE.INVALID_ARGUMENT, ids=["bad\nid"], grantee=None),
        grant("GrantChunks", "id_10k_chars", CODE.INVALID_ARGUMENT, ids=["a" * 10_000], grantee=None),
        grant("GrantChunks", "no_ids", CODE.INVALID_ARGUMENT, ids=[], grantee=None),
        grant("RevokeChunks", "unknown_grantee", CODE.NOT_FOUND),
        grant("RevokeChunks", "owner_10k_chars", CODE.INVALID_ARGUMENT, owner="a" * 10_000, grantee=None),
    ]


def _ingest_cases() -> list[HostileCase]:
    upsert = INGEST + "Upsert"

    def up(name: str, build: Build, expected: grpc.StatusCode = CODE.INVALID_ARGUMENT) -> HostileCase:
        return HostileCase(f"Upsert/{name}", upsert, build, expected)

    def delete(name: str, ids: Sequence[str]) -> HostileCase:
        return HostileCase(f"Delete/{name}", INGEST + "Delete", _one(ingest_pb2.DeleteRequest(external_ids=ids)), CODE.INVALID_ARGUMENT)

    return [
        up("empty_batch", _one(_upsert())),
        up("too_many_documents", _one(_upsert(*(_doc(f"d{i}", text="t") for i in range(1001))))),
        up("neither_text_nor_chunks", _one(_upsert(_doc()))),
        up("text_and_chunks", _one(_upsert(_doc(text="t", chunks=[_chunk()])))),
        up("blank_chunk_text", _one(_upsert(_doc(chunks=[_chunk(" \n\t")])))),
        up("same_id_twice", _one(_upsert(_doc(text="a"), _doc(text="b")))),
        up("empty_external_id", _one(_upsert(_doc("", text="t")))),
        up("control_character_id", _one(_upsert(_doc("bad\nid", text="t")))),
        up("external_id_10k_chars", _one(_upsert(_doc("a" * 10_000, text="t")))),
        up("external_id_invalid_utf8", _bad_external_id(b"doc-\xff\xfe")),
        up("external_id_lone_surrogate", _bad_external_id(b"doc-\xed\xa0\x80")),
        up("external_id_overlong_utf8", _bad_external_id(b"doc-\xc0\xaf")),
        up("vector_short", _one(_upsert(_doc(chunks=[_chunk(vector=_vector()[:5])])))),
        up("vector_long", _one(_upsert(_doc(chunks=[_chunk(vector=_vector() * 2)])))),
        up("vector_nan", _one(_upsert(_doc(chunks=[_chunk(vector=[math.nan] * DIM)])))),
        up("vector_infinite", _one(_upsert(_doc(chunks=[_chunk(vector=[math.inf] + [0.0] * (DIM - 1))])))),
        up("metadata_nested_33", _metadata_upsert(nested(33))),
        up("metadata_nested_50", _metadata_bytes_upsert(nested_struct_bytes(50))),
        up("metadata_nested_100", _metadata_bytes_upsert(nested_struct_bytes(100))),
        up("metadata_list_nested_40", _metadata_upsert({"l": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]})),
        up("metadata_nan", _metadata_upsert({"x": math.nan})),
        up("metadata_infinity", _metadata_upsert({"x": math.inf})),
        up("metadata_minus_infinity_in_list", _metadata_upsert({"x": [1, -math.inf]})),
        up("metadata_unset_value", _metadata_bytes_upsert(_UNSET_ENTRY)),
        up("metadata_too_large", _metadata_upsert({"blob": "x" * 100_000})),
        up("text_over_limit", _one(_upsert(_doc(text="word " * 220_000)))),
        up("message_over_4_mib", _one(_upsert(_doc(text="word " * (1 << 20)))), CODE.RESOURCE_EXHAUSTED),
        up("good_batch_then_garbage", _good_then(GARBAGE["wire_type_7"])),
        up("good_batch_then_invalid_utf8", _good_then(field_bytes(1, field_bytes(1, b"\xff")))),
        up("good_batch_then_empty_batch", _good_then(b"")),
        delete("no_ids", []),
        delete("control_character_id", ["bad\x07id"]),
        delete("id_10k_chars", ["a" * 10_000]),
        delete("empty_id", [""]),
    ]


def _retrieval_cases() -> list[HostileCase]:
    def search(name: str, **fields) -> HostileCase:
        return HostileCase(f"Search/{name}", RETRIEVAL + "Search", _one(retrieval_pb2.SearchRequest(**fields)), CODE.INVALID_ARGUMENT)

    def ask(name: str, build: Build) -> HostileCase:
        return HostileCase(f"RetrieveAndGenerate/{name}", RETRIEVAL + "RetrieveAndGenerate", build, CODE.INVALID_ARGUMENT)

    return [
        search("neither_text_nor_vector", k=1),
        search("text_and_vector", query_text="x", query_vector=_vector(), k=1),
        search("blank_text", query_text=" \n ", k=1),
        search("vector_short", query_vector=_vector()[:10], k=1),
        search("vector_nan", query_vector=[math.nan] * DIM, k=1),
        search("vector_infinite", query_vector=[-math.inf] * DIM, k=1),
        search("k_zero", query_vector=_vector(), k=0),
        search("k_negative", query_vector=_vector(), k=-1),
        search("k_int32_max", query_vector=_vector(), k=2**31 - 1),
        search("k_int32_min", query_vector=_vector(), k=-(2**31)),
        ask("empty_question", _ask("")),
        ask("blank_question", _ask("   ")),
        ask("question_past_context", _ask("word " * 10_000, k=1, max_new_tokens=8)),
        ask("mode_unknown", _ask(mode=99)),
        ask("mode_negative", _ask(mode=-1)),
        ask("max_new_tokens_over_limit", _ask(max_new_tokens=100_000)),
        ask("max_new_tokens_negative", _ask(max_new_tokens=-5)),
        ask("max_new_tokens_int32_max", _ask(max_new_tokens=2**31 - 1)),
        ask("k_negative", _ask(k=-1)),
        ask("k_over_limit", _ask(k=100)),
    ]


def _kv_cases() -> list[HostileCase]:
    def fetch(name: str, ids: Callable[[Target], Sequence[int]], expected: grpc.StatusCode) -> HostileCase:
        return HostileCase(f"Fetch/{name}", KV + "Fetch", _for_tenant(lambda t: kv_cache_pb2.FetchRequest(chunk_ids=ids(t))), expected)

    return [
        fetch("no_ids", lambda t: [], CODE.INVALID_ARGUMENT),
        fetch("too_many_ids", lambda t: range(1, 300), CODE.INVALID_ARGUMENT),
        fetch("duplicate_ids", lambda t: [t.chunk_id, t.chunk_id], CODE.INVALID_ARGUMENT),
        fetch("unknown_id", lambda t: [987_654_321], CODE.NOT_FOUND),
        fetch("id_zero", lambda t: [0], CODE.NOT_FOUND),
        fetch("id_uint64_max", lambda t: [2**64 - 1], CODE.NOT_FOUND),
    ]


def _health_cases() -> list[HostileCase]:
    request = health_pb2.HealthCheckRequest(service="no.such.Service")
    return [HostileCase("Check/unknown_service", HEALTH_CHECK, _one(request), CODE.NOT_FOUND, no_key)]


CASES: list[HostileCase] = [
    *_garbage_cases(), *_auth_cases(), *_admin_cases(), *_ingest_cases(), *_retrieval_cases(), *_kv_cases(), *_health_cases()
]


# ---- running the table


def open_channel(address: str) -> grpc.Channel:
    """A channel that sends what the table holds, even past the server's message limit."""
    return grpc.insecure_channel(address, options=[("grpc.max_send_message_length", MAX_SEND_BYTES)])


def call(channel: grpc.Channel, method: str, requests: Sequence[bytes], metadata, timeout_s: float = TIMEOUT_S) -> tuple[grpc.StatusCode, str]:
    """Send raw request bytes to `method` (no client-side serialisation) and return the final status."""
    descriptor = METHODS[method]
    shape = (descriptor.client_streaming, descriptor.server_streaming)
    callable_ = {
        (False, False): channel.unary_unary,
        (True, False): channel.stream_unary,
        (False, True): channel.unary_stream,
        (True, True): channel.stream_stream,
    }[shape](method, request_serializer=None, response_deserializer=None)
    request = iter(requests) if descriptor.client_streaming else requests[0]
    try:
        reply = callable_(request, metadata=metadata, timeout=timeout_s)
        if descriptor.server_streaming:
            for _ in reply:
                pass
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return CODE.OK, ""


def run_case(channel: grpc.Channel, target: Target, case: HostileCase) -> Outcome:
    code, details = call(channel, case.method, case.requests(target), case.metadata(target))
    return Outcome(case, code, details)


def prepare(address: str, admin_key: str, tenant_id: str = "hostile") -> Target:
    """A tenant with three stored chunks and a key of its own (the tenant is created if missing)."""
    with Client(address, admin_key) as admin:
        try:
            admin.create_tenant(tenant_id)
        except grpc.RpcError as exc:
            if exc.code() != CODE.ALREADY_EXISTS:
                raise
        key = admin.create_api_key(tenant_id).api_key
    vectors = [np.asarray(_vector(seed), np.float32) for seed in range(3)]
    with Client(address, key) as client:
        client.upsert([[DocumentText(f"hostile-{i}", chunks=[f"Stored passage {i}."], vectors=[v]) for i, v in enumerate(vectors)]])
        chunk_id = client.search(vectors[0], k=1).hits[0].chunk_id
    return Target(address=address, admin_key=admin_key, tenant_id=tenant_id, tenant_key=key, chunk_id=chunk_id)


def run(target: Target, cases: Sequence[HostileCase] = CASES) -> list[Outcome]:
    with open_channel(target.address) as channel:
        return [run_case(channel, target, case) for case in cases]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", default="127.0.0.1:50051")
    parser.add_argument("--admin-key-file", type=Path, default=Path("tenantkv-data/admin.key"))
    args = parser.parse_args()
    outcomes = run(prepare(args.address, args.admin_key_file.read_text().strip()))
    for o in outcomes:
        mark = "ok " if o.code == o.case.expected else "BAD"
        print(f"{mark} {o.case.name:55s} {o.code.name:20s} expected {o.case.expected.name:20s} {o.details[:80]}")
    wrong = [o for o in outcomes if o.code != o.case.expected]
    print(f"{len(outcomes)} cases, {len(wrong)} with another status, {sum(o.internal for o in outcomes)} INTERNAL or UNKNOWN")


if __name__ == "__main__":
    main()
