"""Backups on the server host: only under the backup root, never beside a compaction; and a data
directory restored from a backup of a serving server starts a server that holds what was
acknowledged, with each tenant seeing only what it may read."""

import threading
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest

from client.api import Client
from server.app import ServerThread
from server.backup import Backups, restore_data_dir
from server.cli import main
from server.config import ServerConfig
from store.config import StoreConfig
from store.errors import AlreadyExists, Corrupted, FailedPrecondition, InvalidArgument
from store.records import ChunkInput, DocumentInput
from store.store import Store
from tests.server.conftest import unit_vectors, vector_documents


def store_backups(store: Store, root: Path | None, lock: threading.RLock) -> Backups:
    return Backups(root, store.backup, lock)


@pytest.fixture
def store(tmp_path: Path):
    with Store(StoreConfig(path=tmp_path / "store", dim=8)) as store:
        store.create_tenant("alice")
        yield store


@pytest.mark.parametrize("name", ["", ".", "..", "../up", "a/b", "/abs", ".hidden", "-flag", "x" * 129, "sp ace", "nul\0"])
def test_a_name_that_is_not_one_plain_path_component_is_refused(store: Store, tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidArgument, match="name"):
        store_backups(store, tmp_path / "root", threading.RLock()).back_up(name)
    assert not (tmp_path / "root").exists()


def test_backups_are_off_without_a_root_and_never_overwrite(store: Store, tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="backup_root"):
        store_backups(store, None, threading.RLock()).back_up("nightly")
    backups = store_backups(store, tmp_path / "root", threading.RLock())
    report = backups.back_up("nightly")
    assert report.path == (tmp_path / "root" / "nightly").resolve()
    assert report.manifest.tenants == 1
    with pytest.raises(AlreadyExists, match="nightly"):
        backups.back_up("nightly")


def test_a_backup_waits_for_a_running_compaction(store: Store, tmp_path: Path) -> None:
    lock = threading.RLock()
    backups = store_backups(store, tmp_path / "root", lock)
    with lock:  # a compaction runs
        waiting = threading.Thread(target=backups.back_up, args=("b",))
        waiting.start()
        waiting.join(timeout=0.3)
        assert waiting.is_alive() and not (tmp_path / "root" / "b").exists()
    waiting.join()
    assert (tmp_path / "root" / "b" / "manifest.json").exists()


def test_a_failed_backup_leaves_no_directory(store: Store, tmp_path: Path) -> None:
    chunk = ChunkInput("kv", np.arange(4, dtype=np.int32), np.eye(8, dtype=np.float32)[0], kv_blob=b"kv" * 100)
    store.upsert("alice", [DocumentInput("d", {}, [chunk])])
    for segment in (store.config.path / "segments").glob("*.seg"):
        segment.unlink()  # a damaged store: a blob's segment is gone
    with pytest.raises(Corrupted, match="segment"):
        store_backups(store, tmp_path / "root", threading.RLock()).back_up("b")
    assert list((tmp_path / "root").iterdir()) == []


def test_restore_refuses_a_non_empty_data_dir_and_another_dim(store: Store, tmp_path: Path) -> None:
    store_backups(store, tmp_path / "root", threading.RLock()).back_up("b")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "admin.key").write_text("x")
    with pytest.raises(FailedPrecondition, match="not an empty directory"):
        restore_data_dir(tmp_path / "root" / "b", ServerConfig(data_dir=busy, dim=8))
    with pytest.raises(FailedPrecondition, match="dim"):
        restore_data_dir(tmp_path / "root" / "b", ServerConfig(data_dir=tmp_path / "new", dim=384))
    assert not (tmp_path / "new").exists()


def test_a_server_starts_from_a_restored_backup_of_a_serving_server(server, admin, server_config: ServerConfig, models, tmp_path: Path) -> None:
    vectors = unit_vectors(6, seed=5)
    keys = {}
    for tenant, prefix, rows in (("alice", "a", vectors[:4]), ("bob", "b", vectors[4:])):
        admin.create_tenant(tenant)
        keys[tenant] = admin.create_api_key(tenant).api_key
        with Client(server.address, keys[tenant]) as client:
            client.upsert([vector_documents(prefix, rows)])
    admin.grant("alice", ["a-3"], "bob")
    report = store_backups(server.server.runtime.store, tmp_path / "root", threading.RLock()).back_up("live")
    assert (report.manifest.tenants, report.manifest.chunks) == (2, 6)

    restored = replace(server_config, data_dir=tmp_path / "restored")
    restore_data_dir(report.path, restored)
    assert not restored.admin_key_path.exists()
    with ServerThread(restored, models) as copy:
        with Client(copy.address, server_config.admin_key_path.read_text().strip()) as old_admin:  # its key is in the store
            assert [t.tenant_id for t in old_admin.list_tenants()] == ["alice", "bob"]
        with Client(copy.address, keys["alice"]) as alice, Client(copy.address, keys["bob"]) as bob:
            assert {h.external_id for h in alice.search(vectors[0], k=10).hits} == {"a-0", "a-1", "a-2", "a-3"}
            assert {h.external_id for h in bob.search(vectors[4], k=10).hits} == {"b-0", "b-1", "a-3"}
            assert np.isclose(alice.search(vectors[2], k=1).hits[0].score, 1.0, atol=1e-5)


def test_backup_store_over_grpc_and_restore_from_the_command_line(server_config, models, tmp_path: Path, capsys) -> None:
    config = replace(server_config, backup_root=tmp_path / "backups")
    with ServerThread(config, models) as server, Client(server.address, config.admin_key_path.read_text().strip()) as admin:
        admin.create_tenant("acme")
        reply = admin.backup_store("nightly")
        assert reply.tenants == 1 and Path(reply.path) == (tmp_path / "backups" / "nightly").resolve()
        for name, code in [("../x", grpc.StatusCode.INVALID_ARGUMENT), ("nightly", grpc.StatusCode.ALREADY_EXISTS)]:
            with pytest.raises(grpc.RpcError) as err:
                admin.backup_store(name)
            assert err.value.code() == code
    assert main(["restore", reply.path, str(tmp_path / "restored")]) == 0
    assert '"tenants": 1' in capsys.readouterr().out
    (Path(reply.path) / "lmdb" / "data.mdb").write_bytes(b"damaged")
    assert main(["restore", reply.path, str(tmp_path / "again")]) == 1
    assert "data.mdb" in capsys.readouterr().err


def test_backup_store_is_refused_without_a_backup_root(server, admin) -> None:
    with pytest.raises(grpc.RpcError) as err:
        admin.backup_store("nightly")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
