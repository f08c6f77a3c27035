"""Capabilities and worker keys: a worker reads exactly the chunk KV the router granted, and calls nothing else."""

import grpc
import pytest

from client.api import Client
from server.capability import Capabilities
from store.errors import PermissionDenied
from tests.server.conftest import unit_vectors, vector_documents


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_a_capability_names_its_chunks_and_expires() -> None:
    clock = Clock()
    capabilities = Capabilities(ttl_s=10, clock=clock)
    token = capabilities.issue([3, 5, 8])
    capabilities.check(token, [3, 8])
    with pytest.raises(PermissionDenied, match="every chunk"):
        capabilities.check(token, [3, 4])
    clock.now += 11
    with pytest.raises(PermissionDenied, match="expired"):
        capabilities.check(token, [3])


@pytest.mark.parametrize("forge", ["", "garbage", "swap-ids", "other-server", "later-expiry"])
def test_a_forged_capability_is_refused(forge: str) -> None:
    capabilities = Capabilities()
    token = capabilities.issue([3])
    expiry, ids, mac = token.split(":")
    forged = {
        "": "",
        "garbage": "x:y:z",
        "swap-ids": f"{expiry}:3,4:{mac}",
        "other-server": Capabilities().issue([3]),
        "later-expiry": f"{int(expiry) + 10**9}:{ids}:{mac}",
    }[forge]
    with pytest.raises(PermissionDenied, match="not signed"):
        capabilities.check(forged, [3])


@pytest.fixture
def worker_client(server, admin):
    with Client(server.address, admin.create_api_key(worker=True).api_key) as client:
        yield client


def test_a_worker_key_reads_only_what_a_capability_names(server, alice, worker_client) -> None:
    alice.client.upsert([vector_documents("a", unit_vectors(3, seed=21))])
    ids = [h.chunk_id for h in alice.client.search(unit_vectors(1, seed=22)[0], k=3).hits]
    capabilities = server.server.runtime.capabilities
    fetched = worker_client.fetch_kv(ids[:2], capabilities.issue(ids[:2]))
    assert set(fetched) == set(ids[:2]) and fetched == alice.client.fetch_kv(ids[:2])
    for capability, asked in [("", ids[:1]), (capabilities.issue(ids[:1]), ids[1:2]), ("1:2:3", ids[:1])]:
        with pytest.raises(grpc.RpcError) as err:
            worker_client.fetch_kv(asked, capability)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, capability


def test_a_worker_key_calls_nothing_but_fetch(worker_client) -> None:
    calls = [
        lambda: worker_client.search(unit_vectors(1, seed=23)[0], k=1),
        lambda: worker_client.upsert([vector_documents("w", unit_vectors(1, seed=24))]),
        lambda: worker_client.get_tenant("alice"),
        lambda: list(worker_client.ask("anything?")),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
