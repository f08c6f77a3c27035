"""Filtered Search and RetrieveAndGenerate through a real server: only readable, matching chunks,
the exact filtered top k, kept across a restart; bad filters refused naming the part."""

import grpc
import numpy as np
import pytest

from client.api import Client, DocumentText
from protos.tenantkv.v1.retrieval_pb2 import Condition, Filter, NumericRange
from server.app import ServerThread
from tests.server.conftest import unit_vectors

WHERE = 'kind = "report" and (year >= 2015 or region in ["eu", "uk"])'


def documents(prefix: str, vectors: np.ndarray) -> list[DocumentText]:
    return [
        DocumentText(
            external_id=f"{prefix}-{i}", chunks=[f"{prefix} passage {i}."], vectors=[v],
            metadata={"kind": ["report", "memo"][i % 2], "year": 2000 + i % 25, "region": ["eu", "us", "uk", "jp"][i % 4]},
        )
        for i, v in enumerate(vectors)
    ]


def satisfies(metadata: dict) -> bool:
    return metadata["kind"] == "report" and (metadata["year"] >= 2015 or metadata["region"] in ("eu", "uk"))


def test_filtered_search_returns_the_exact_filtered_top_k(server_config, models) -> None:
    vectors = unit_vectors(200, seed=31)
    metadata = [d.metadata for d in documents("a", vectors)]
    wanted = [i for i in range(200) if satisfies(metadata[i])]
    with ServerThread(server_config, models) as server:
        admin_key = server_config.admin_key_path.read_text().strip()
        with Client(server.address, admin_key) as admin:
            for tenant in ("alice", "bob"):
                admin.create_tenant(tenant)
            alice_key, bob_key = (admin.create_api_key(t).api_key for t in ("alice", "bob"))
        with Client(server.address, alice_key) as alice, Client(server.address, bob_key) as bob:
            alice.upsert([documents("a", vectors)])
            bob.upsert([documents("b", vectors[:50])])  # the same vectors and values: never alice's hits
            for q in range(0, 200, 37):
                exact = sorted(wanted, key=lambda i: -float(vectors[i] @ vectors[q]))[:10]
                hits = alice.search(vectors[q], k=10, where=WHERE).hits
                assert [h.external_id for h in hits] == [f"a-{i}" for i in exact]
            assert {h.external_id.split("-")[0] for h in bob.search(vectors[0], k=50, where=WHERE).hits} == {"b"}
            alice.delete(["a-0"])
            assert "a-0" not in {h.external_id for h in alice.search(vectors[0], k=10, where=WHERE).hits}
            alice.upsert([[DocumentText("a-4", chunks=["replaced."], vectors=[vectors[4]], metadata={"kind": "memo"})]])
            assert "a-4" not in {h.external_id for h in alice.search(vectors[4], k=10, where=WHERE).hits}
    with ServerThread(server_config, models) as server, Client(server.address, alice_key) as alice:
        hits = alice.search(vectors[8], k=5, where=WHERE).hits
        assert hits[0].external_id == "a-8" and all(satisfies(dict(h.metadata)) for h in hits)


def test_answers_retrieve_only_matching_chunks_and_bad_filters_are_refused(alice) -> None:
    vectors = unit_vectors(12, seed=32)
    alice.client.upsert([documents("a", vectors)])
    used = [e.chunks for e in alice.client.ask("which report?", k=4, max_new_tokens=1, where='kind = "memo"') if e.WhichOneof("event") == "chunks"]
    assert used and used[0].hits and all(h.metadata["kind"] == "memo" for h in used[0].hits)
    bad = Filter(condition=Condition(key="year", range=NumericRange()))
    for call in (lambda: alice.client.search(vectors[0], k=3, where=bad), lambda: list(alice.client.ask("q", where=bad))):
        with pytest.raises(grpc.RpcError) as error:
            call()
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "filter.condition.range" in error.value.details()
    assert alice.client.search(vectors[0], k=1).hits[0].external_id == "a-0"  # still serving
