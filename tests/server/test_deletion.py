"""Deletion is final through a real server: after Ingest.Delete or DeleteTenant and the compaction
that follows (CompactStore, or the one a tenant's deletion starts), none of a canary chunk's stored
bytes (text, vector, token ids, KV blob) is in any file under the data directory."""

import json
import time

import grpc
import pytest

from server.cli import main
from client.api import Client, DocumentText
from tests.server.conftest import TenantHandle, unit_vectors, vector_documents
from tests.store.canary import StoredBytes, files_holding, stored_bytes

CANARY_TEXT = "Der Kanarienvogel 7f3a9c1e singt — a passage that must not outlive its deletion."
BACKGROUND_COMPACTION_S = 60


def store_canary(tenant: TenantHandle, server) -> StoredBytes:
    """Upsert the canary document (its KV precomputed by the server) and read back its stored bytes."""
    vector = unit_vectors(1, seed=77)[0]
    tenant.client.upsert([[DocumentText("bird", chunks=[CANARY_TEXT], vectors=[vector])]])
    [hit] = tenant.client.search(vector, k=1).hits
    assert hit.external_id == "bird"
    return stored_bytes(server.server.runtime.store, hit.chunk_id)


@pytest.fixture
def admin_key(server_config) -> str:
    return server_config.admin_key_path.read_text().strip()


def test_a_deleted_document_is_gone_after_compact_store(server, server_config, admin, alice, bob) -> None:
    kept = unit_vectors(2, seed=5)
    bob.client.upsert([vector_documents("b", kept)])
    stored = store_canary(alice, server)
    assert alice.client.delete(["bird"]) == 1
    assert sorted(files_holding(server_config.data_dir, stored.named())) == ["kv", "text", "token_ids", "vector"]
    reply = admin.compact_store()
    assert files_holding(server_config.data_dir, stored.named()) == {}
    assert 0 < reply.bytes_after < reply.bytes_before and reply.seconds > 0
    assert [h.external_id for h in bob.client.search(kept[1], k=1).hits] == ["b-1"]
    assert alice.client.search(unit_vectors(1, seed=77)[0], k=5).hits == []


def test_a_deleted_tenant_is_gone_after_the_compaction_its_deletion_starts(server, server_config, admin, alice) -> None:
    stored = store_canary(alice, server)
    assert admin.delete_tenant("alice") == 1
    deadline = time.monotonic() + BACKGROUND_COMPACTION_S
    while files_holding(server_config.data_dir, stored.named()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert files_holding(server_config.data_dir, stored.named()) == {}
    admin.compact_store()
    assert files_holding(server_config.data_dir, stored.named()) == {}


def test_compact_store_is_for_admin_keys_only(server, admin) -> None:
    admin.create_tenant("alice")
    with Client(server.address, admin.create_api_key("alice").api_key) as tenant, pytest.raises(grpc.RpcError) as err:
        tenant.compact_store()
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_admin_compact_command(server, server_config, admin_key, monkeypatch, capsys) -> None:
    monkeypatch.setenv("TENANTKV_SERVER", server.address)
    monkeypatch.setenv("TENANTKV_API_KEY", admin_key)
    assert main(["admin", "compact"]) == 0
    reply = json.loads(capsys.readouterr().out)
    assert int(reply["bytesBefore"]) > 0 and int(reply["bytesAfter"]) > 0
