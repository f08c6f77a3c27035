"""Bad input gets the precise status with a message naming the field, and the server keeps serving."""

import logging
import queue
import time

import grpc
import numpy as np
import pytest

from bench import hostile
from protos.tenantkv.v1 import ingest_pb2, ingest_pb2_grpc, retrieval_pb2
from client.api import Client, DocumentText
from tests.server.conftest import unit_vectors, vector_documents

CODE = grpc.StatusCode


def expect(code: grpc.StatusCode, call, *args, match: str = "", **kwargs) -> None:
    with pytest.raises(grpc.RpcError) as err:
        result = call(*args, **kwargs)
        if hasattr(result, "__iter__") and not isinstance(result, (list, dict)):
            list(result)
    assert err.value.code() == code, err.value.details()
    assert match in err.value.details()


@pytest.fixture
def loaded(alice, bob):
    alice.client.upsert([vector_documents("a", unit_vectors(3, seed=21))])
    bob.client.upsert([vector_documents("b", unit_vectors(3, seed=22))])
    return alice, bob


def test_search_arguments(loaded) -> None:
    alice, _ = loaded
    good = unit_vectors(1, seed=23)[0]
    expect(CODE.INVALID_ARGUMENT, alice.client.search, good[:100], match="query_vector")
    expect(CODE.INVALID_ARGUMENT, alice.client.search, np.full(384, np.nan, np.float32), match="query_vector")
    expect(CODE.INVALID_ARGUMENT, alice.client.search, np.full(384, np.inf, np.float32), match="finite")
    expect(CODE.INVALID_ARGUMENT, alice.client.search, "   ", match="query_text")
    expect(CODE.INVALID_ARGUMENT, alice.client.search, good, k=0, match="k")
    expect(CODE.INVALID_ARGUMENT, alice.client.search, good, k=-3, match="k")
    expect(CODE.INVALID_ARGUMENT, alice.client.search, good, k=10**9, match="k")
    both = retrieval_pb2.SearchRequest(query_text="x", query_vector=good.tolist(), k=1)
    expect(CODE.INVALID_ARGUMENT, alice.client._call, alice.client.retrieval.Search, both, match="exactly one")
    assert len(alice.client.search(good, k=2).hits) == 2  # still serving


def test_upsert_arguments(alice) -> None:
    vector = unit_vectors(1, seed=24)[0]
    cases = [
        ([DocumentText("x", chunks=["t"], vectors=[vector[:5]])], "documents[0].chunks[0].vector"),
        ([DocumentText("x", chunks=["t"], vectors=[np.full(384, np.nan, np.float32)])], "finite"),
        (
            [DocumentText("x", chunks=["t"], vectors=[vector]), DocumentText("y", chunks=["t", "u"], vectors=[vector, np.full(384, np.inf, np.float32)])],
            "documents[1].chunks[1].vector: values must be finite",
        ),
        ([DocumentText("x", text="")], "documents[0]"),
        ([DocumentText("x", chunks=[" "])], "documents[0].chunks[0].text"),
        ([DocumentText("x", text="a"), DocumentText("x", text="b")], "twice"),
        ([DocumentText("", text="no id")], "external_id"),
        ([DocumentText("bad\nid", text="control characters")], "external_id"),
        ([DocumentText("x", text="big", metadata={"blob": "x" * 40_000})], "metadata"),
    ]
    for batch, field in cases:
        expect(CODE.INVALID_ARGUMENT, alice.client.upsert, [batch], match=field)
    expect(CODE.INVALID_ARGUMENT, alice.client.upsert, [[]], match="documents")
    too_many = [DocumentText(f"d{i}", chunks=["t"], vectors=[vector]) for i in range(1001)]
    expect(CODE.INVALID_ARGUMENT, alice.client.upsert, [too_many], match="at most 1000")
    assert alice.client.upsert([vector_documents("ok", unit_vectors(1, seed=25))]).chunks == 1


def test_too_large_message_is_resource_exhausted(server, alice) -> None:
    """The server's own 4 MiB limit, from a client whose send limit is higher."""
    huge = ingest_pb2.UpsertRequest(documents=[DocumentText("huge", text="word " * (1 << 20)).message()])
    with grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", 16 << 20)]) as channel:
        stub = ingest_pb2_grpc.IngestStub(channel)
        expect(CODE.RESOURCE_EXHAUSTED, stub.Upsert, iter([huge]), metadata=alice.client._metadata)
    assert alice.client.upsert([vector_documents("ok", unit_vectors(1, seed=26))]).chunks == 1


def test_credentials(server, loaded, admin) -> None:
    alice, _ = loaded
    vector = unit_vectors(1, seed=27)[0]
    with Client(server.address, "") as anonymous:
        expect(CODE.UNAUTHENTICATED, anonymous.search, vector, match="authorization")
    with Client(server.address, "tkv_nonsense") as wrong:
        expect(CODE.UNAUTHENTICATED, wrong.search, vector)
        expect(CODE.UNAUTHENTICATED, wrong.list_tenants)
    expect(CODE.PERMISSION_DENIED, alice.client.list_tenants, match="admin")
    expect(CODE.PERMISSION_DENIED, alice.client.create_tenant, "mallory")
    expect(CODE.PERMISSION_DENIED, admin.search, vector, match="tenant")
    assert len(alice.client.search(vector, k=1).hits) == 1


def test_admin_arguments(loaded, admin) -> None:
    expect(CODE.INVALID_ARGUMENT, admin.create_tenant, "Not Valid!", match="tenant")
    expect(CODE.INVALID_ARGUMENT, admin.create_tenant, "", match="tenant")
    expect(CODE.ALREADY_EXISTS, admin.create_tenant, "alice")
    expect(CODE.NOT_FOUND, admin.get_tenant, "nobody")
    expect(CODE.NOT_FOUND, admin.delete_tenant, "nobody")
    expect(CODE.NOT_FOUND, admin.create_api_key, "nobody")
    expect(CODE.NOT_FOUND, admin.revoke_api_key, "0123456789abcdef")
    expect(CODE.NOT_FOUND, admin.grant, "alice", ["no-such-doc"], "bob")
    expect(CODE.NOT_FOUND, admin.grant, "alice", ["b-0"], "bob", match="b-0")  # bob's document, named as alice's
    expect(CODE.NOT_FOUND, admin.grant, "alice", ["a-0"], "nobody")
    assert admin.get_tenant("alice").stats.chunks == 3


def test_other_tenants_objects_are_not_found(loaded) -> None:
    alice, bob = loaded
    bob_ids = [h.chunk_id for h in bob.client.search(unit_vectors(1, seed=22)[0], k=3).hits]
    expect(CODE.NOT_FOUND, alice.client.fetch_kv, bob_ids[:1], match="chunk")
    expect(CODE.INVALID_ARGUMENT, alice.client.fetch_kv, [], match="chunk_ids")
    expect(CODE.INVALID_ARGUMENT, alice.client.fetch_kv, list(range(1, 300)), match="chunk_ids")
    own = alice.client.search(unit_vectors(1, seed=21)[0], k=1).hits[0].chunk_id
    expect(CODE.INVALID_ARGUMENT, alice.client.fetch_kv, [own, own], match="chunk_ids")
    assert alice.client.delete(["b-0"]) == 0  # bob's id means nothing in alice's namespace
    assert len(bob.client.search(unit_vectors(1, seed=22)[0], k=3).hits) == 3


def test_generation_arguments(loaded) -> None:
    alice, _ = loaded
    expect(CODE.INVALID_ARGUMENT, alice.client.ask, "", match="question")
    expect(CODE.INVALID_ARGUMENT, alice.client.ask, "q?", k=-1, match="k")
    expect(CODE.INVALID_ARGUMENT, alice.client.ask, "q?", k=100, match="k")
    expect(CODE.INVALID_ARGUMENT, alice.client.ask, "q?", max_new_tokens=100_000, match="max_new_tokens")
    bad_mode = retrieval_pb2.RetrieveAndGenerateRequest(question="q?", mode=99)
    expect(CODE.INVALID_ARGUMENT, alice.client._call, alice.client.retrieval.RetrieveAndGenerate, bad_mode, match="mode")


def test_expired_keys_are_unauthenticated(server, loaded, admin) -> None:
    alice, _ = loaded
    expect(CODE.INVALID_ARGUMENT, admin.create_api_key, "alice", ttl_s=-5, match="ttl_seconds")
    reply = admin.create_api_key("alice", ttl_s=1)
    assert reply.expires_unix_ms > 0
    vector = unit_vectors(1, seed=28)[0]
    with Client(server.address, reply.api_key) as short_lived:
        assert len(short_lived.search(vector, k=1).hits) == 1
        time.sleep(1.1)
        expect(CODE.UNAUTHENTICATED, short_lived.search, vector, match="expired")
    assert len(alice.client.search(vector, k=1).hits) == 1


def test_a_corrupted_kv_blob_is_data_loss_on_fetch_and_recomputed_for_answers(server, make_tenant) -> None:
    carol = make_tenant("carol")
    carol.client.upsert([[DocumentText("paris", chunks=["Paris is the capital of France."], vectors=[unit_vectors(1, seed=29)[0]])]])
    hit = carol.client.search(unit_vectors(1, seed=29)[0], k=1).hits[0]
    segment = sorted((server.server.config.data_dir / "store" / "segments").glob("*.seg"))[-1]
    with segment.open("r+b") as f:  # the newest blob is carol's: flip a byte in its payload
        f.seek(-100, 2)
        byte = f.read(1)
        f.seek(-100, 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    expect(CODE.DATA_LOSS, carol.client.fetch_kv, [hit.chunk_id], match="checksum")
    events = list(carol.client.ask("What is the capital of France?", k=1, max_new_tokens=6))
    assert events[-1].WhichOneof("event") == "stats" and events[-1].stats.tokens_generated >= 1


def test_every_hostile_input_gets_its_status_and_the_server_serves_on(server, server_config, caplog) -> None:
    """bench/hostile.py's table: the expected status for each case, never INTERNAL or UNKNOWN, no trace logged."""
    target = hostile.prepare(server.address, server_config.admin_key_path.read_text().strip())
    with caplog.at_level(logging.INFO):
        outcomes = hostile.run(target)
    assert len(outcomes) >= 100
    wrong = [(o.case.name, o.code.name, o.details[:120]) for o in outcomes if o.code != o.case.expected]
    assert not wrong
    assert not [o.case.name for o in outcomes if "Error parsing" in o.details or "Traceback" in o.details]
    assert not [r.getMessage() for r in caplog.records if r.exc_info]
    with Client(server.address, target.tenant_key) as client:
        assert len(client.search(unit_vectors(1, seed=30)[0], k=3).hits) == 3


def test_a_question_past_the_context_fails_before_any_message(loaded) -> None:
    alice, _ = loaded
    received = []
    with pytest.raises(grpc.RpcError) as err:
        for event in alice.client.ask("word " * 10_000, k=2, max_new_tokens=8):
            received.append(event)
    assert err.value.code() == CODE.INVALID_ARGUMENT and "question" in err.value.details()
    assert received == []
    # fits the context alone, not with 512 tokens to generate: refused before any prefill
    expect(CODE.INVALID_ARGUMENT, alice.client.ask, "word " * 7_900, k=2, max_new_tokens=512, match="max_new_tokens")
    events = list(alice.client.ask("Which passage?", k=2, max_new_tokens=4))
    assert events[-1].WhichOneof("event") == "stats"


def test_a_key_revoked_mid_stream_stores_nothing_more(alice, admin) -> None:
    """An Upsert stream opened before its key was revoked is refused at the next batch."""
    batches: queue.Queue = queue.Queue()
    requests = iter(batches.get, None)
    reply = alice.client.ingest.Upsert.future(requests, metadata=alice.client._metadata, timeout=120)
    batches.put(ingest_pb2.UpsertRequest(documents=[d.message() for d in vector_documents("before", unit_vectors(2, seed=31))]))
    deadline = time.monotonic() + 60
    while admin.get_tenant("alice").stats.chunks < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert admin.get_tenant("alice").stats.chunks == 2
    admin.revoke_api_key(alice.key_id)
    batches.put(ingest_pb2.UpsertRequest(documents=[d.message() for d in vector_documents("after", unit_vectors(2, seed=32))]))
    batches.put(None)
    with pytest.raises(grpc.RpcError) as err:
        reply.result()
    assert err.value.code() == CODE.UNAUTHENTICATED
    assert admin.get_tenant("alice").stats.chunks == 2
