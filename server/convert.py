"""Protobuf messages to validated Python values and back; every error names the request field."""

import math
from dataclasses import dataclass

import numpy as np
from google.protobuf import struct_pb2

from protos.tenantkv.v1 import common_pb2, ingest_pb2, tenant_admin_pb2
from server.indexed_store import Hit
from server.runtime import ChunkSpec, DocumentSpec
from store.errors import InvalidArgument
from store.records import TenantSettings
from store.vectors import unit_rows


def vector_from(values, dim: int, field: str) -> np.ndarray:
    """A float32 [dim] vector; its norm is checked where it is used (the store, `Runtime.search`)."""
    vector = np.asarray(values, dtype=np.float32)
    if vector.shape != (dim,):
        raise InvalidArgument(f"{field}: expected {dim} values, got {vector.size}")
    return vector


def bounded_int(value: int, low: int, high: int, field: str) -> int:
    if not low <= value <= high:
        raise InvalidArgument(f"{field}: must be between {low} and {high}, got {value}")
    return value


MAX_METADATA_DEPTH = 32  # JSON nesting the store accepts; orjson refuses past 255, and nothing needs near that


def dict_from_struct(struct: struct_pb2.Struct, field: str) -> dict:
    """A Struct as plain JSON values; InvalidArgument naming the path of a value nested more than
    MAX_METADATA_DEPTH levels, a number that is not finite (JSON has none), or a Value left unset."""
    return _object(struct, field, 1)


def _object(struct: struct_pb2.Struct, field: str, depth: int) -> dict:
    if depth > MAX_METADATA_DEPTH:
        raise InvalidArgument(f"{field}: nested more than {MAX_METADATA_DEPTH} levels deep")
    return {key: _json_value(value, f"{field}.{key}", depth) for key, value in struct.fields.items()}


def _json_value(value: struct_pb2.Value, field: str, depth: int):
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return _object(value.struct_value, field, depth + 1)
    if kind == "list_value":
        if depth + 1 > MAX_METADATA_DEPTH:
            raise InvalidArgument(f"{field}: nested more than {MAX_METADATA_DEPTH} levels deep")
        return [_json_value(item, f"{field}[{i}]", depth + 1) for i, item in enumerate(value.list_value.values)]
    if kind == "number_value":
        if not math.isfinite(value.number_value):
            raise InvalidArgument(f"{field}: numbers must be finite (no NaN or infinity)")
        return value.number_value
    if kind is None:
        raise InvalidArgument(f"{field}: a metadata value must be set (null is null_value)")
    return None if kind == "null_value" else getattr(value, kind)


def struct_from_dict(values: dict) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


@dataclass(frozen=True, slots=True)
class ChunkClaim:
    """What the caller sent with one of its chunks beyond text and vector."""

    field: str  # "documents[i].chunks[j]", for errors
    token_ids: np.ndarray | None  # int32: what the caller says the server's tokenizer makes of the text; None: not sent
    kv_size: int  # bytes of the chunk's encoded KV, sent next in KVPiece messages; 0: none


@dataclass(frozen=True, slots=True)
class UpsertBatch:
    """One Upsert batch: its documents, each one's content hash, and each given chunk's claim."""

    documents: list[DocumentSpec]
    content_hashes: list[str]
    claims: list[list[ChunkClaim]]  # per document, one per given chunk (none for text documents)


MAX_TOKEN_ID = (1 << 31) - 1  # the store keeps token ids as int32


def documents_from(request: ingest_pb2.UpsertRequest, dim: int, max_documents: int, max_text_bytes: int) -> UpsertBatch:
    """The documents of one upsert batch, with text xor chunks, and vectors of the store's dimension;
    a chunk announcing KV (kv_size) carries its token ids and its vector."""
    if not request.documents:
        raise InvalidArgument("documents: a batch needs at least one document")
    if len(request.documents) > max_documents:
        raise InvalidArgument(f"documents: at most {max_documents} per batch, got {len(request.documents)}")
    seen: set[str] = set()
    specs, claims = [], []
    vectors, fields = [], []
    for i, doc in enumerate(request.documents):
        field = f"documents[{i}]"
        if doc.external_id in seen:
            raise InvalidArgument(f"{field}.external_id: {doc.external_id!r} appears twice in one batch")
        seen.add(doc.external_id)
        if bool(doc.text.strip()) == bool(doc.chunks):
            raise InvalidArgument(f"{field}: give either non-empty text or chunks")
        chunks = []
        for j, chunk in enumerate(doc.chunks):
            if not chunk.text.strip():
                raise InvalidArgument(f"{field}.chunks[{j}].text: must not be empty")
            vector = None
            if chunk.vector:
                fields.append(f"{field}.chunks[{j}].vector")
                vectors.append(vector := vector_from(chunk.vector, dim, fields[-1]))
            chunks.append(ChunkSpec(text=chunk.text, vector=vector))
        claims.append([_claim(chunk, f"{field}.chunks[{j}]") for j, chunk in enumerate(doc.chunks)])
        size = len(doc.text.encode()) + sum(len(c.text.encode()) for c in chunks)
        if size > max_text_bytes:
            raise InvalidArgument(f"{field}: text of {size} bytes exceeds the limit of {max_text_bytes}")
        specs.append(DocumentSpec(external_id=doc.external_id, metadata=dict_from_struct(doc.metadata, f"{field}.metadata"), text=doc.text, chunks=chunks))
    if vectors:
        unit_rows(np.stack(vectors), fields)  # refused before any model work; the store keeps them scaled
    return UpsertBatch(specs, [doc.content_hash for doc in request.documents], claims)


def _claim(chunk: ingest_pb2.ChunkInput, field: str) -> ChunkClaim:
    if chunk.kv_size and not (chunk.token_ids and chunk.vector):
        raise InvalidArgument(f"{field}: a chunk with kv_size needs its token_ids and its vector")
    if chunk.token_ids and max(chunk.token_ids) > MAX_TOKEN_ID:
        raise InvalidArgument(f"{field}.token_ids: at most {MAX_TOKEN_ID}")
    token_ids = np.asarray(chunk.token_ids, dtype=np.int32) if chunk.token_ids else None
    return ChunkClaim(field=field, token_ids=token_ids, kv_size=chunk.kv_size)


def settings_from(message: tenant_admin_pb2.TenantSettings) -> TenantSettings:
    return TenantSettings(
        max_chunks=message.max_chunks,
        max_kv_bytes=message.max_kv_bytes,
        requests_per_second=message.requests_per_second,
        kv_codec=message.kv_codec,
        kv_policy=message.kv_policy,
        kv_admit_after=message.kv_admit_after,
        kv_share_group=message.kv_share_group,
    )


def settings_message(settings: TenantSettings) -> tenant_admin_pb2.TenantSettings:
    return tenant_admin_pb2.TenantSettings(
        max_chunks=settings.max_chunks,
        max_kv_bytes=settings.max_kv_bytes,
        requests_per_second=settings.requests_per_second,
        kv_codec=settings.kv_codec,
        kv_policy=settings.kv_policy,
        kv_admit_after=settings.kv_admit_after,
        kv_share_group=settings.kv_share_group,
    )


def hit_message(hit: Hit) -> common_pb2.ChunkHit:
    chunk = hit.chunk
    return common_pb2.ChunkHit(
        chunk_id=chunk.chunk_id,
        external_id=chunk.external_id,
        chunk_index=chunk.index,
        score=hit.score if math.isfinite(hit.score) else 0.0,
        text=chunk.text,
        metadata=struct_from_dict(chunk.metadata) if chunk.metadata else None,  # building a Struct costs even when empty
        owner_tenant_id=chunk.owner,
    )
