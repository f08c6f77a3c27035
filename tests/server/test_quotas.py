"""Tenant settings over gRPC: the chunk quota and request rates refused with RESOURCE_EXHAUSTED,
a KV byte budget that evicts instead, sharing groups, a per-tenant codec."""

from dataclasses import replace

import grpc
import pytest

from protos.tenantkv.v1 import tenant_admin_pb2
from client.api import Client, DocumentText
from server.app import ServerThread
from tests.server.conftest import unit_vectors, vector_documents
from tests.server.test_metrics import scrape


def settings(**fields) -> tenant_admin_pb2.TenantSettings:
    return tenant_admin_pb2.TenantSettings(**fields)


def tenant_client(server, admin, tenant_id: str, **fields) -> Client:
    admin.create_tenant(tenant_id, settings(**fields))
    return Client(server.address, admin.create_api_key(tenant_id).api_key)


def test_chunk_quota_refuses_the_batch_and_reports_usage(server, admin) -> None:
    with tenant_client(server, admin, "acme", max_chunks=3) as acme:
        acme.upsert([vector_documents("a", unit_vectors(2, seed=1))])
        with pytest.raises(grpc.RpcError) as err:
            acme.upsert([vector_documents("b", unit_vectors(2, seed=2))])
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_chunks" in err.value.details() and "quota of 3" in err.value.details()
        assert len(acme.search(unit_vectors(1, seed=3)[0], k=10).hits) == 2  # nothing of the refused batch
        tenant = admin.get_tenant("acme")
        assert tenant.stats.chunks == 2 and tenant.settings.max_chunks == 3
        admin.update_tenant("acme", settings(max_chunks=4))
        acme.upsert([vector_documents("c", unit_vectors(2, seed=4))])
        assert admin.get_tenant("acme").stats.chunks == 4


def test_kv_bytes_are_a_budget_that_evicts_and_groups_share_blobs(server_config, models) -> None:
    """Ingestion never fails for KV bytes: beyond the budget the coldest chunks' KV goes, answers
    go on; two tenants of one group store one blob, each charged in full; the metrics say so."""
    config = replace(server_config, metrics_port=0)
    with ServerThread(config, models) as server, Client(server.address, config.admin_key_path.read_text().strip()) as admin:
        eager = dict(kv_policy="eager")
        with tenant_client(server, admin, "free", **eager) as free:
            free.upsert([vector_documents("a", unit_vectors(1, seed=1))])
            one = admin.get_tenant("free").stats.kv_bytes  # one chunk's KV
        assert one > 1000
        with tenant_client(server, admin, "acme", max_kv_bytes=1000, **eager) as acme:
            acme.upsert([vector_documents("a", unit_vectors(2, seed=1))])  # not refused: stored without KV
            assert admin.get_tenant("acme").stats.kv_bytes == 0
            admin.update_tenant("acme", settings(max_kv_bytes=one + one // 2, **eager))
            acme.upsert([vector_documents("b", unit_vectors(2, seed=2))])  # two chunks' KV, room for one
            assert admin.get_tenant("acme").stats.kv_bytes <= one + one // 2
            events = list(acme.ask("Which passage is it?", k=4, max_new_tokens=2))  # chunks without KV are computed
            assert events[-1].WhichOneof("event") == "stats"
        for name in ("g1", "g2"):
            with tenant_client(server, admin, name, kv_share_group="team", **eager) as member:
                member.upsert([vector_documents("a", unit_vectors(1, seed=1))])
            assert admin.get_tenant(name).stats.kv_bytes == one  # charged in full
        samples = scrape(server.server.metrics_port)
    assert samples['tenantkv_kv_stored_bytes{tenant="g2"}'] == one and samples['tenantkv_kv_dedup_saved_bytes_total{tenant="g2"}'] == one
    assert samples['tenantkv_kv_dedup_saved_bytes_total{tenant="g1"}'] == 0  # nothing of "free"'s identical chunk: another salt
    assert samples['tenantkv_kv_evictions_total{tenant="acme"}'] >= 1 and samples['tenantkv_kv_evicted_bytes_total{tenant="acme"}'] >= one
    assert samples['tenantkv_kv_misses_total{cause="evicted",tenant="acme"}'] >= 1  # the answer met the chunk the budget evicted


def test_request_rate_is_limited_per_tenant(server, admin) -> None:
    with tenant_client(server, admin, "slow", requests_per_second=2) as slow, tenant_client(server, admin, "fast") as fast:
        query = unit_vectors(1, seed=5)[0]
        codes = []
        for _ in range(6):
            try:
                slow.search(query, k=1)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append(exc.code())
                assert "requests_per_second" in exc.details()
        assert codes[:2] == [grpc.StatusCode.OK] * 2 and grpc.StatusCode.RESOURCE_EXHAUSTED in codes
        for _ in range(10):
            fast.search(query, k=1)  # another tenant is not held back
        admin.update_tenant("slow", settings())
        for _ in range(10):
            slow.search(query, k=1)


def test_per_tenant_codec_decides_how_kv_is_stored(server, admin) -> None:
    with (
        tenant_client(server, admin, "small", kv_codec="kivi4") as small,
        tenant_client(server, admin, "smaller", kv_codec="ecq") as smaller,
        tenant_client(server, admin, "plain") as plain,
    ):
        text = [[DocumentText("doc", chunks=["The Seine flows through Paris."], vectors=[unit_vectors(1, seed=6)[0]])]]
        for client, codec in ((small, "kivi4"), (smaller, "ecq"), (plain, "fp16")):
            client.upsert(text)
            hit = client.search(unit_vectors(1, seed=6)[0], k=1).hits[0]
            assert client.fetch_kv([hit.chunk_id])[hit.chunk_id][0] == codec
        for client in (small, smaller):
            events = list(client.ask("Which river flows through Paris?", k=1, max_new_tokens=4))
            assert events[-1].WhichOneof("event") == "stats"


def test_bad_settings_are_invalid_arguments(admin) -> None:
    for fields, field in (({"kv_codec": "zip"}, "kv_codec"), ({"requests_per_second": float("inf")}, "requests_per_second")):
        with pytest.raises(grpc.RpcError) as err:
            admin.create_tenant("acme", settings(**fields))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in err.value.details()
