"""Ingest.Upsert with precomputed KV and Ingest.Unchanged, through a real server and the real model.

An upload is accepted when its blobs are what the server's own worker computes; every way of
lying about a blob is refused with INVALID_ARGUMENT naming the chunk, and nothing of its batch is
stored. The sampled recompute runs on every upload here (fraction 1).
"""

import dataclasses

import grpc
import numpy as np
import pytest
import torch

import kvcodec
from client.api import KV_PIECE_BYTES, ChunkUpload, DocumentText, DocumentUpload, upsert_requests
from protos.tenantkv.v1 import ingest_pb2, tenant_admin_pb2
from server import uploads
from server.config import ServerConfig
from worker.chunker import token_ids

TEXTS = [
    "Paris is the capital and largest city of France, on the river Seine.",
    "The Loire is the longest river in France, flowing into the Atlantic.",
    "Lyon lies where the Rhone and the Saone meet.",
]


@pytest.fixture
def server_config(server_config):
    """Every upload recomputed: the forged-values test relies on it."""
    return dataclasses.replace(server_config, upload_recompute_fraction=1.0)


@pytest.fixture
def runtime(server):
    return server.server.runtime


def chunk_kv(runtime, texts: list[str]) -> tuple[list[np.ndarray], list[torch.Tensor]]:
    """The texts' token ids and their chunk KV as the server's in-process worker computes it."""
    ids = token_ids(runtime.models.tokenizer, texts)
    return ids, [c.kv for c in runtime.node.engine.chunks_kv(ids)]


def upload(runtime, external_id: str, texts: list[str], codec: str = "fp16", content_hash: str = "") -> DocumentUpload:
    """A document whose chunks carry what the server would compute: vectors, token ids and KV blobs
    encoded under the engine's fingerprint."""
    ids, kvs = chunk_kv(runtime, texts)
    vectors = runtime.models.embedder.embed(texts)
    fingerprint = runtime.node.engine.kv_fingerprint
    chunks = [ChunkUpload(t, v, i, kvcodec.encode(kv, codec, fingerprint)) for t, v, i, kv in zip(texts, vectors, ids, kvs)]
    return DocumentUpload(external_id, chunks, {"source": "upload"}, content_hash)


def with_blob(document: DocumentUpload, index: int, blob: bytes, **changes) -> DocumentUpload:
    chunks = list(document.chunks)
    chunks[index] = dataclasses.replace(chunks[index], kv_blob=blob, **changes)
    return dataclasses.replace(document, chunks=chunks)


def refused(client, requests) -> str:
    with pytest.raises(grpc.RpcError) as err:
        client.ingest.Upsert(iter(requests), metadata=client._metadata)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    return err.value.details()


def assert_nothing_stored(admin, tenant: str) -> None:
    stats = admin.get_tenant(tenant).stats
    assert (stats.documents, stats.chunks, stats.kv_bytes) == (0, 0, 0)


def first_token(client, question: str) -> int:
    events = list(client.ask(question, k=2, max_new_tokens=1))
    return next(e.token.token_id for e in events if e.WhichOneof("event") == "token")


def test_uploaded_kv_is_stored_searchable_and_answers_like_the_server_path(runtime, make_tenant, admin) -> None:
    computed, uploaded = make_tenant("computed"), make_tenant("uploaded")
    computed.client.upsert([[DocumentText("france", chunks=TEXTS)]])
    document = upload(runtime, "france", TEXTS)
    reply = uploaded.client.upsert([[document]])
    assert (reply.documents, reply.chunks, reply.batches) == (1, 3, 1)
    hits = uploaded.client.search("Which river flows into the Atlantic?", k=1).hits
    assert (hits[0].external_id, hits[0].chunk_index, hits[0].metadata["source"]) == ("france", 1, "upload")
    exact = uploaded.client.search(document.chunks[2].vector, k=1).hits[0]
    assert exact.chunk_index == 2 and exact.score == pytest.approx(1.0, abs=1e-5)
    fetched = uploaded.client.fetch_kv([exact.chunk_id])
    assert fetched[exact.chunk_id] == ("fp16", document.chunks[2].kv_blob)  # stored as sent, not recomputed
    question = "What is the capital of France?"
    assert first_token(uploaded.client, question) == first_token(computed.client, question)


def test_quantised_uploads_pass_the_recompute(runtime, alice, admin) -> None:
    admin.update_tenant("alice", tenant_admin_pb2.TenantSettings(kv_codec="kivi4"))
    reply = alice.client.upsert([[upload(runtime, "kivi", TEXTS[:2], codec="kivi4")]])
    assert reply.chunks == 2


def test_every_codec_has_a_recompute_tolerance() -> None:
    assert set(uploads.RECOMPUTE_TOLERANCE) == set(kvcodec.CODECS)


def forged(runtime, case: str) -> tuple[DocumentUpload, str]:
    """A document whose second chunk lies in one way, and the words its refusal must contain."""
    document = upload(runtime, "lies", TEXTS)
    ids, kvs = chunk_kv(runtime, [TEXTS[1]])
    kv, fingerprint = kvs[0], runtime.node.engine.kv_fingerprint
    if case == "fingerprint":
        return with_blob(document, 1, kvcodec.encode(kv, "fp16", "0000000000000000")), "documents[0].chunks[1].kv: computed with model fingerprint"
    if case == "no fingerprint":
        return with_blob(document, 1, kvcodec.encode(kv, "fp16")), "documents[0].chunks[1].kv: computed with model fingerprint ''"
    if case == "codec":  # the tenant's is fp16
        return with_blob(document, 1, kvcodec.encode(kv, "int8", fingerprint)), "documents[0].chunks[1].kv: encoded in int8, the tenant's codec is fp16"
    if case == "shape":
        return with_blob(document, 1, kvcodec.encode(kv[:, :, :2], "fp16", fingerprint)), "documents[0].chunks[1].kv: shape"
    if case == "token count":
        return with_blob(document, 1, kvcodec.encode(kv[:, :, :, 1:], "fp16", fingerprint)), "documents[0].chunks[1].kv: shape"
    if case == "corrupted":
        blob = bytearray(document.chunks[1].kv_blob)
        blob[len(blob) // 2] ^= 0x40
        return with_blob(document, 1, bytes(blob)), "documents[0].chunks[1].kv: does not decode"
    if case == "unparseable payload":  # header and checksum sound: only the sampled recompute parses it
        header, _ = kvcodec.header.unpack(document.chunks[1].kv_blob)
        return with_blob(document, 1, kvcodec.header.pack(header, b"not zstd")), "documents[0].chunks[1].kv: does not decode"
    if case == "forged values":
        return with_blob(document, 1, kvcodec.encode(kv * 1.1, "fp16", fingerprint)), "documents[0].chunks[1].kv: differs from the server's recompute"
    if case == "token ids":
        other = ids[0].copy()
        other[0] = (other[0] + 1) % 1000
        blob = document.chunks[1].kv_blob
        return with_blob(document, 1, blob, token_ids=other), "documents[0].chunks[1].token_ids"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["fingerprint", "no fingerprint", "codec", "shape", "token count", "corrupted", "unparseable payload", "forged values", "token ids"])
def test_a_lying_blob_refuses_its_whole_batch(runtime, alice, admin, case: str) -> None:
    document, words = forged(runtime, case)
    honest = upload(runtime, "honest", TEXTS[:1])
    details = refused(alice.client, upsert_requests([[honest, document]]))
    assert words.replace("documents[0]", "documents[1]") in details
    assert_nothing_stored(admin, "alice")


def piece_requests(runtime) -> list[ingest_pb2.UpsertRequest]:
    """One batch of one document whose blob goes in three pieces, so they can be reordered or lost."""
    document = upload(runtime, "long", TEXTS[:1])
    blob = document.chunks[0].kv_blob
    (announce,) = [r for r in upsert_requests([[document]]) if r.documents]
    cuts = [0, len(blob) // 3, 2 * len(blob) // 3, len(blob)]
    return [announce, *(piece_request(0, blob[a:b], a) for a, b in zip(cuts, cuts[1:]))]


def piece_request(chunk: int, data: bytes, offset: int) -> ingest_pb2.UpsertRequest:
    return ingest_pb2.UpsertRequest(kv_pieces=[ingest_pb2.KVPiece(external_id="long", chunk=chunk, offset=offset, data=data)])


@pytest.mark.parametrize(
    "case, words",
    [
        ("out of order", "documents[0].chunks[0].kv: piece at offset"),
        ("a piece missing", "documents[0].chunks[0].kv: piece at offset"),
        ("last piece lost", "the stream ended before the batch's KV was complete: documents[0].chunks[0].kv:"),
        ("overflow", "documents[0].chunks[0].kv: pieces overflow the announced kv_size"),
        ("unannounced chunk", "kv_pieces: no blob announced for external_id 'long' chunk 5"),
        ("next batch too soon", "a batch began before the last one's KV was complete"),
        ("oversized piece", f"documents[0].chunks[0].kv: a piece of {KV_PIECE_BYTES + 1} bytes"),
        ("oversized batch", f"documents: the batch announces {ServerConfig().max_upload_kv_bytes + 1} bytes of KV"),
    ],
)
def test_pieces_must_arrive_in_order_and_complete(runtime, alice, admin, case: str, words: str) -> None:
    announce, first, second, third = piece_requests(runtime)
    last = third.kv_pieces[0]
    oversized = ingest_pb2.UpsertRequest()
    oversized.CopyFrom(announce)
    oversized.documents[0].chunks[0].kv_size = ServerConfig().max_upload_kv_bytes + 1
    streams = {
        "out of order": [announce, second, first, third],
        "a piece missing": [announce, first, third],
        "last piece lost": [announce, first, second],
        "overflow": [announce, first, second, piece_request(0, last.data + b"extra", last.offset)],
        "unannounced chunk": [announce, piece_request(5, b"x", 0)],
        "next batch too soon": [announce, first, announce],
        "oversized piece": [announce, piece_request(0, bytes(KV_PIECE_BYTES + 1), 0)],
        "oversized batch": [oversized],
    }
    details = refused(alice.client, streams[case])
    assert words in details, details
    assert_nothing_stored(admin, "alice")
    reply = alice.client.ingest.Upsert(iter([announce, first, second, third]), metadata=alice.client._metadata)
    assert (reply.documents, reply.chunks) == (1, 1)


def test_a_chunk_announcing_kv_needs_token_ids_and_a_vector(runtime, alice, admin) -> None:
    document = upload(runtime, "bare", TEXTS[:1])
    (announce, *_) = upsert_requests([[document]])
    del announce.documents[0].chunks[0].vector[:]
    assert "documents[0].chunks[0]: a chunk with kv_size needs its token_ids and its vector" in refused(alice.client, [announce])
    assert_nothing_stored(admin, "alice")


def test_unchanged_names_documents_stored_with_that_hash(runtime, make_tenant) -> None:
    writer = make_tenant("writer")
    writer.client.upsert([[upload(runtime, "a", TEXTS[:1], content_hash="h-a"), upload(runtime, "b", TEXTS[1:2], content_hash="h-b")]])
    assert writer.client.unchanged([("a", "h-a"), ("b", "changed"), ("c", "h-c")]) == ["a"]
    reader = make_tenant("reader", rights=("read",))
    assert reader.client.unchanged([("a", "h-a")]) == []  # the reader's own tenant holds nothing
    with pytest.raises(grpc.RpcError) as err:
        writer.client._call(writer.client.ingest.Unchanged, ingest_pb2.UnchangedRequest(external_ids=["a"], content_hashes=[]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "content_hashes" in err.value.details()
    too_many = ingest_pb2.UnchangedRequest(external_ids=["a"] * 4097, content_hashes=["h"] * 4097)
    with pytest.raises(grpc.RpcError) as err:
        writer.client._call(writer.client.ingest.Unchanged, too_many)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "external_ids" in err.value.details()


def test_unchanged_needs_the_read_right(make_tenant) -> None:
    writer_only = make_tenant("scribe", rights=("write",))
    with pytest.raises(grpc.RpcError) as err:
        writer_only.client.unchanged([("a", "h")])
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_upload_spec_names_what_uploads_must_match(runtime, alice, admin, make_tenant) -> None:
    spec = alice.client.upload_spec()
    assert (spec.kv_fingerprint, spec.kv_codec, spec.stores_kv) == (runtime.node.engine.kv_fingerprint, "fp16", True)
    assert spec.chunk_tokens == runtime.config.chunk_tokens
    admin.update_tenant("alice", tenant_admin_pb2.TenantSettings(kv_codec="kivi4", kv_policy="lazy"))
    spec = alice.client.upload_spec()
    assert (spec.kv_codec, spec.stores_kv) == ("kivi4", False)
    with pytest.raises(grpc.RpcError) as err:
        make_tenant("reader", rights=("read",)).client.upload_spec()
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_uploaded_kv_is_ignored_under_a_policy_that_stores_none_at_ingestion(runtime, alice, admin) -> None:
    admin.update_tenant("alice", tenant_admin_pb2.TenantSettings(kv_policy="lazy"))
    reply = alice.client.upsert([[upload(runtime, "lazy", TEXTS[:2], codec="int8")]])  # not even checked
    assert (reply.documents, reply.chunks) == (1, 2)
    stats = admin.get_tenant("alice").stats
    assert (stats.chunks, stats.kv_bytes) == (2, 0)
