"""Every RPC's happy path through a real server on 127.0.0.1 and a real client."""

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from protos.tenantkv.v1 import kv_cache_pb2
from server.app import SERVICE_NAMES
from client.api import DocumentText
from tests.server.conftest import unit_vectors, vector_documents


def test_health_is_serving_and_reflection_lists_services(server) -> None:
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ["", *SERVICE_NAMES]:
            reply = health.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        listed = {s.name for reply in replies for s in reply.list_services_response.service}
    assert set(SERVICE_NAMES) <= listed
    assert "grpc.health.v1.Health" in listed


def test_tenant_lifecycle(admin) -> None:
    created = admin.create_tenant("acme")
    assert created.tenant_id == "acme" and created.state == 1 and created.created_unix_ms > 0
    assert [t.tenant_id for t in admin.list_tenants()] == ["acme"]
    assert admin.get_tenant("acme").stats.api_keys == 0
    assert admin.delete_tenant("acme") == 0
    assert admin.list_tenants() == []


def test_upsert_search_and_stats(alice, admin) -> None:
    vectors = unit_vectors(20, seed=1)
    reply = alice.client.upsert([vector_documents("doc", vectors[:10]), vector_documents("more", vectors[10:])])
    assert (reply.documents, reply.chunks, reply.batches) == (20, 20, 2)
    result = alice.client.search(vectors[3], k=3)
    assert result.hits[0].external_id == "doc-3"
    assert result.hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert result.hits[0].metadata["i"] == 3
    assert result.hits[0].owner_tenant_id == "alice"
    assert len(result.hits) == 3
    stats = admin.get_tenant("alice").stats
    assert (stats.documents, stats.chunks, stats.api_keys) == (20, 20, 1)
    assert stats.vector_bytes == 20 * 384 * 4


def test_text_documents_are_chunked_and_embedded(alice) -> None:
    sentences = " ".join(f"Sentence {i} talks about the orbit of planet number {i}." for i in range(80))
    reply = alice.client.upsert(
        [[DocumentText("planets", text=sentences), DocumentText("cats", text="Cats are small furry pets that purr.")]]
    )
    assert reply.documents == 2 and reply.chunks >= 3  # ~1,300 tokens cut at 256
    hits = alice.client.search("a purring household pet", k=1).hits
    assert hits[0].external_id == "cats"
    planet_chunks = sorted(h.chunk_index for h in alice.client.search("orbit of a planet", k=10).hits if h.external_id == "planets")
    assert planet_chunks == list(range(reply.chunks - 1))


def test_upsert_replaces_and_delete_removes(alice) -> None:
    vectors = unit_vectors(3, seed=2)
    alice.client.upsert([vector_documents("doc", vectors)])
    alice.client.upsert([[DocumentText("doc-0", chunks=["replaced text"], vectors=[vectors[0]])]])
    hit = alice.client.search(vectors[0], k=1).hits[0]
    assert (hit.external_id, hit.text) == ("doc-0", "replaced text")
    assert len(alice.client.search(vectors[0], k=10).hits) == 3
    assert alice.client.delete(["doc-0", "never-existed"]) == 1
    assert [h.external_id for h in alice.client.search(vectors[0], k=10).hits if h.external_id == "doc-0"] == []


def test_tenants_are_isolated_until_granted(alice, bob, admin) -> None:
    vectors = unit_vectors(6, seed=3)
    alice.client.upsert([vector_documents("a", vectors[:3])])
    bob.client.upsert([vector_documents("b", vectors[3:])])
    assert {h.owner_tenant_id for h in bob.client.search(vectors[0], k=10).hits} == {"bob"}
    granted = admin.grant("alice", ["a-0"], "bob")
    assert len(granted) == 1
    hits = bob.client.search(vectors[0], k=10).hits
    assert hits[0].external_id == "a-0" and hits[0].owner_tenant_id == "alice"
    assert {h.external_id for h in hits if h.owner_tenant_id == "alice"} == {"a-0"}
    assert admin.get_tenant("bob").stats.granted_chunks == 1
    assert admin.revoke("alice", ["a-0"], "bob") == granted
    assert {h.owner_tenant_id for h in bob.client.search(vectors[0], k=10).hits} == {"bob"}


def test_delete_tenant_removes_its_chunks_and_keys(alice, bob, admin) -> None:
    vectors = unit_vectors(4, seed=4)
    alice.client.upsert([vector_documents("a", vectors)])
    admin.grant("alice", ["a-1"], "bob")
    assert admin.delete_tenant("alice") == 4
    assert bob.client.search(vectors[1], k=10).hits == []
    with pytest.raises(grpc.RpcError) as err:
        alice.client.search(vectors[1], k=1)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_retrieve_and_generate_streams_chunks_tokens_then_stats(alice) -> None:
    alice.client.upsert(
        [[DocumentText("paris", text="Paris is the capital and largest city of France, on the river Seine.")]]
    )
    events = list(alice.client.ask("What is the capital of France?", k=1, max_new_tokens=12))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "chunks" and kinds[-1] == "stats" and set(kinds[1:-1]) == {"token"}
    assert events[0].chunks.hits[0].external_id == "paris"
    answer = "".join(e.token.text for e in events[1:-1])
    stats = events[-1].stats
    assert 1 <= stats.tokens_generated == len(events) - 2 <= 12
    assert stats.time_to_first_token_ms >= stats.retrieval_ms > 0
    assert stats.prompt_tokens > 20 and stats.total_ms >= stats.time_to_first_token_ms
    assert "paris" in answer.lower()


def test_kv_is_precomputed_at_ingestion_and_fetched(server, alice) -> None:
    from kvcodec import decode

    alice.client.upsert([vector_documents("a", unit_vectors(2, seed=5))])
    hits = alice.client.search(unit_vectors(1, seed=6)[0], k=2).hits
    fetched = alice.client.fetch_kv([h.chunk_id for h in hits])
    assert set(fetched) == {h.chunk_id for h in hits}
    layout = server.server.runtime.node.engine.layout
    for hit in hits:
        codec, blob = fetched[hit.chunk_id]
        tokens = len(server.server.runtime.models.llm.tokenizer.encode(hit.text, add_special_tokens=False))
        assert codec == "fp16"
        assert tuple(decode(blob).shape) == (30, 2, 3, tokens + len(layout.separator), 64)


def test_revoked_key_is_unauthenticated(alice, admin) -> None:
    alice.client.search(unit_vectors(1, seed=7)[0], k=1)
    admin.revoke_api_key(alice.key_id)
    with pytest.raises(grpc.RpcError) as err:
        alice.client.search(unit_vectors(1, seed=7)[0], k=1)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_read_only_key_cannot_ingest(make_tenant) -> None:
    reader = make_tenant("reader", rights=("read",))
    reader.client.search(unit_vectors(1, seed=8)[0], k=1)
    with pytest.raises(grpc.RpcError) as err:
        reader.client.upsert([vector_documents("x", unit_vectors(1, seed=8))])
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_kv_fetch_streams_large_blobs_in_pieces_under_the_message_limit(server, alice) -> None:
    """A blob larger than one message arrives whole, in pieces of at most 3 MiB, codec named."""
    import torch

    from kvcodec import encode
    from store.records import ChunkInput, DocumentInput

    kv = torch.randn(30, 2, 3, 300, 64)
    blob = encode(kv, "fp16")
    assert len(blob) > 4 << 20
    runtime = server.server.runtime
    vector = unit_vectors(1, seed=12)[0]
    chunk = ChunkInput(text="with kv", token_ids=np.arange(300, dtype=np.int32), vector=vector, kv_blob=blob)
    added = runtime.commit("alice", [DocumentInput("kv-doc", {}, [chunk])]).added.tolist()
    pieces = list(alice.client.kv.Fetch(kv_cache_pb2.FetchRequest(chunk_ids=added), metadata=alice.client._metadata))
    assert len(pieces) == -(-len(blob) // (3 << 20)) and pieces[-1].last and not pieces[0].last
    assert all(len(p.data) <= 3 << 20 and p.codec == "fp16" for p in pieces)
    assert alice.client.fetch_kv(added) == {added[0]: ("fp16", blob)}
