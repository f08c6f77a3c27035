"""The store against a real LMDB in tmp_path: every method, reopening, growth, corruption, concurrency."""

import subprocess
import sys
import threading
from pathlib import Path

import lmdb
import numpy as np
import pytest

import store.keys as keys_module
from store.config import StoreConfig
from store.env import U64
from store.errors import AlreadyExists, Corrupted, FailedPrecondition, InvalidArgument, NotFound, QuotaExceeded, Unauthenticated
from store.records import ChunkInput, DocumentInput, KeyScope, TenantSettings, TenantState
from store.schema import SCHEMA_VERSION
from store.store import Store

DIM = 8


def vec(seed: int) -> np.ndarray:
    """A unit vector: the store keeps every vector at unit norm."""
    v = np.random.default_rng(seed).standard_normal(DIM)
    return (v / np.linalg.norm(v)).astype(np.float32)


def doc(external_id: str, n_chunks: int = 1, kv: bool = False, seed: int = 0, metadata: dict | None = None) -> DocumentInput:
    chunks = [
        ChunkInput(
            text=f"{external_id} chunk {i}",
            token_ids=np.arange(i, i + 5, dtype=np.int32) + seed,
            vector=vec(seed * 100 + i),
            kv_blob=(f"kv of {external_id} {i} {seed}".encode() * 10) if kv else None,
        )
        for i in range(n_chunks)
    ]
    return DocumentInput(external_id=external_id, metadata=metadata or {"source": external_id}, chunks=chunks)


@pytest.fixture
def config(tmp_path: Path) -> StoreConfig:
    return StoreConfig(path=tmp_path / "store", dim=DIM)


@pytest.fixture
def store(config: StoreConfig):
    with Store(config) as opened:
        opened.create_tenant("alice")
        opened.create_tenant("bob")
        yield opened


def test_tenants(store: Store) -> None:
    assert [t.name for t in store.list_tenants()] == ["alice", "bob"] and store.count_tenants() == 2
    alice = store.get_tenant("alice")
    assert alice.state is TenantState.ACTIVE and alice.number == 1 and store.get_tenant("bob").number == 2
    with pytest.raises(AlreadyExists):
        store.create_tenant("alice")
    with pytest.raises(NotFound, match="carol"):
        store.get_tenant("carol")
    for bad in ["", "Alice", "-x", "a" * 64, "a b", "ä"]:
        with pytest.raises(InvalidArgument, match="tenant_id"):
            store.create_tenant(bad)


def test_tenant_pages_follow_name_order(store: Store) -> None:
    for name in ["carol", "a-1", "dave", "a_2", "b0"]:
        store.create_tenant(name)
    names = [t.name for t in store.list_tenants()]
    assert names == sorted(names) == ["a-1", "a_2", "alice", "b0", "bob", "carol", "dave"]
    pages, after = [], ""
    while page := store.list_tenants(after, limit=3):
        pages.append([t.name for t in page])
        after = page[-1].name
    assert pages == [names[:3], names[3:6], names[6:]]
    store.delete_tenant("b0")  # a page may start after a name that is gone
    assert [t.name for t in store.list_tenants("b0", limit=2)] == ["bob", "carol"]
    assert store.list_tenants("zzz") == []
    for bad in [0, -1, 1.5]:
        with pytest.raises(InvalidArgument, match="limit"):
            store.list_tenants(limit=bad)


def test_tenant_pages_with_stats(store: Store) -> None:
    store.upsert("alice", [doc("a", n_chunks=3)])
    store.upsert("bob", [doc("b", n_chunks=2, seed=1)])
    store.grant("bob", ["b"], "alice")
    listed = store.list_tenants_with_stats(limit=1)
    assert [(t.name, s) for t, s in listed] == [("alice", store.tenant_stats("alice"))]
    assert (listed[0][1].chunks, listed[0][1].granted_chunks) == (3, 2)
    assert [(t.name, s.chunks) for t, s in store.list_tenants_with_stats("alice")] == [("bob", 2)]


def test_tenant_numbers_are_never_reused(store: Store) -> None:
    store.delete_tenant("bob")
    assert store.count_tenants() == 1
    assert store.create_tenant("bob").number == 3


def test_api_keys(store: Store, config: StoreConfig) -> None:
    key, token = store.create_api_key(KeyScope.TENANT, "alice", frozenset({"read"}))
    assert store.authenticate(token) == key
    assert store.tenant_stats("alice").api_keys == 1
    for bad in ["", "tkv_", token[:-1], token + "x", "Bearer " + token, token.replace("tkv_", "xyz_")]:
        with pytest.raises(Unauthenticated):
            store.authenticate(bad)
    store.revoke_api_key(key.key_id)
    with pytest.raises(Unauthenticated):
        store.authenticate(token)  # verified once above: the store must not remember it past the revocation
    with pytest.raises(NotFound):
        store.revoke_api_key(key.key_id)
    bob_key, bob_token = store.create_api_key(KeyScope.TENANT, "bob", frozenset({"read"}))
    assert store.authenticate(bob_token) == bob_key
    store.delete_tenant("bob")
    with pytest.raises(Unauthenticated):
        store.authenticate(bob_token)
    with pytest.raises(NotFound):
        store.create_api_key(KeyScope.TENANT, "carol", frozenset({"read"}))
    with pytest.raises(InvalidArgument, match="rights"):
        store.create_api_key(KeyScope.TENANT, "alice", frozenset({"admin"}))
    admin, admin_token = store.create_api_key(KeyScope.ADMIN, None, frozenset({"read", "write"}))
    assert store.authenticate(admin_token).scope is KeyScope.ADMIN
    store.close()
    secret = admin_token.split("_", 2)[2].encode()
    assert not any(secret in p.read_bytes() for p in config.path.rglob("*") if p.is_file())


def test_upsert_read_and_replace(store: Store) -> None:
    first = store.upsert("alice", [doc("a", 2), doc("b", 1)])
    assert first.added.tolist() == [1, 2, 3] and first.removed.tolist() == [] and first.documents == 2
    chunks = store.readable_chunks("alice", [3, 1, 2, 99])
    assert [(c.chunk_id, c.external_id, c.index) for c in chunks] == [(3, "b", 0), (1, "a", 0), (2, "a", 1)]
    assert chunks[1].metadata == {"source": "a"} and chunks[1].readers == {"alice"}
    assert chunks[1].token_ids.tolist() == [0, 1, 2, 3, 4]
    without = store.readable_chunks("alice", [3, 1, 2, 99], with_tokens=False)
    assert [c.token_ids for c in without] == [None] * 3
    assert [c.text for c in without] == [c.text for c in chunks]
    assert store.readable_chunks("bob", [1, 2, 3]) == []
    second = store.upsert("alice", [doc("a", 1, seed=5)])
    assert second.removed.tolist() == [1, 2] and second.added.tolist() == [4]
    stats = store.tenant_stats("alice")
    assert (stats.documents, stats.chunks, stats.vector_bytes) == (2, 2, 2 * DIM * 4)
    assert store.document_chunk_ids("alice", ["a", "b"]).tolist() == [4, 3]


def test_upsert_validates(store: Store) -> None:
    cases = [
        ([], "documents"),
        ([doc("a"), doc("a")], "twice"),
        ([doc("")], "external_id"),
        ([doc("x" * 257)], "external_id"),
        ([doc("é" * 129)], "external_id"),
        ([doc("tab\tid")], "external_id"),
        ([doc("a", metadata={"big": "x" * 20_000})], "metadata"),
        ([DocumentInput("a", {}, [])], "chunks"),
        ([DocumentInput("a", {}, [ChunkInput("t", np.arange(3, dtype=np.int32), np.zeros(DIM - 1, np.float32))])], "vector"),
        ([DocumentInput("a", {}, [ChunkInput("t", np.arange(3, dtype=np.int32), np.full(DIM, np.nan, np.float32))])], "finite"),
        ([doc("a", 2), DocumentInput("b", {}, [ChunkInput("t", np.arange(3, dtype=np.int32), np.full(DIM, np.inf, np.float32))])],
         r"documents\[1\]\.chunks\[0\]\.vector: values must be finite"),
        ([DocumentInput("a", {}, [ChunkInput("t", np.arange(3, dtype=np.int32), np.zeros(DIM, np.float64))])], "float32"),
        ([doc("a"), DocumentInput("b", {}, [ChunkInput("t", np.arange(3, dtype=np.int32), np.zeros(DIM, np.float32))])],
         r"documents\[1\]\.chunks\[0\]\.vector: values must not be all zeros"),
    ]
    for documents, match in cases:
        with pytest.raises(InvalidArgument, match=match):
            store.upsert("alice", documents)
    with pytest.raises(NotFound):
        store.upsert("carol", [doc("a")])
    assert store.tenant_stats("alice").chunks == 0


def test_delete_documents_is_idempotent(store: Store) -> None:
    store.upsert("alice", [doc("a", 2), doc("b")])
    assert store.delete_documents("alice", ["a", "nope"]).tolist() == [1, 2]
    assert store.delete_documents("alice", ["a"]).tolist() == []
    assert store.delete_documents("bob", ["b"]).tolist() == []
    assert store.tenant_stats("alice").chunks == 1


def test_grants_follow_documents_and_survive_replacement(store: Store) -> None:
    store.upsert("alice", [doc("a", 2), doc("b")])
    assert store.grant("alice", ["a"], "bob").tolist() == [1, 2]
    assert store.grant("alice", ["a"], "bob").tolist() == []  # already granted
    assert [c.chunk_id for c in store.readable_chunks("bob", [1, 2, 3])] == [1, 2]
    assert store.tenant_stats("bob").granted_chunks == 2
    replaced = store.upsert("alice", [doc("a", 1, seed=9), doc("c")])
    assert [c.owner for c in store.readable_chunks("bob", replaced.added)] == ["alice"]
    alice, bob = store.get_tenant("alice").number, store.get_tenant("bob").number
    assert replaced.readers == [[alice, bob], [alice]]  # what the index is told, owner first
    assert store.revoke("alice", ["a"], "bob").tolist() == replaced.added[:1].tolist()
    assert store.readable_chunks("bob", replaced.added) == []
    with pytest.raises(NotFound, match="b"):
        store.grant("bob", ["b"], "alice")
    with pytest.raises(NotFound, match="grantee"):
        store.grant("alice", ["a"], "carol")
    with pytest.raises(InvalidArgument, match="owner"):
        store.grant("alice", ["a"], "alice")


def test_delete_tenant_removes_everything_both_ways(store: Store) -> None:
    store.upsert("alice", [doc("a", 2, kv=True)])
    store.upsert("bob", [doc("b", kv=True)])
    store.grant("alice", ["a"], "bob")
    store.grant("bob", ["b"], "alice")
    store.create_api_key(KeyScope.TENANT, "alice", frozenset({"read"}))
    deletion = store.delete_tenant("alice")
    assert deletion.removed_chunk_ids.tolist() == [1, 2]
    assert deletion.revoked == [(3, "alice")]
    assert store.readable_chunks("bob", [1, 2]) == []
    assert [c.readers for c in store.readable_chunks("bob", [3])] == [frozenset({"bob"})]
    assert store.tenant_stats("bob").granted_chunks == 0
    with pytest.raises(NotFound):
        store.tenant_stats("alice")
    store.create_tenant("alice")
    assert store.tenant_stats("alice") == store.tenant_stats("alice").__class__(0, 0, 0, 0, 0, 0, 0)


def test_kv_blobs_are_shared_within_a_tenant_and_refcounted(store: Store) -> None:
    a = doc("a", kv=True)
    same_tokens = DocumentInput("a2", {}, [a.chunks[0]])
    result = store.upsert("alice", [a, same_tokens], kv_fingerprint="model-1")
    blob = a.chunks[0].kv_blob
    assert [store.read_kv(int(i)) for i in result.added] == [blob, blob]
    assert store.tenant_stats("alice").kv_bytes == len(blob)  # one copy
    store.delete_documents("alice", ["a"])
    assert store.read_kv(int(result.added[1])) == blob
    store.delete_documents("alice", ["a2"])
    assert store.tenant_stats("alice").kv_bytes == 0
    assert store.read_kv(999) is None


def test_an_uploaded_blob_is_never_shared_with_a_computed_one(store: Store) -> None:
    computed = doc("a", kv=True)
    chunk = computed.chunks[0]
    uploaded = DocumentInput("b", {}, [ChunkInput(chunk.text, chunk.token_ids, chunk.vector, chunk.kv_blob, kv_uploaded=True)])
    store.upsert("alice", [computed, uploaded], kv_fingerprint="model-1")
    assert store.tenant_stats("alice").kv_bytes == 2 * len(chunk.kv_blob)  # same tokens, two blobs


def test_unchanged_names_documents_stored_with_the_same_hash(store: Store) -> None:
    a, b, c = (DocumentInput(d.external_id, {}, d.chunks, content_hash=h) for d, h in ((doc("a"), "h1"), (doc("b"), "h2"), (doc("c"), "")))
    store.upsert("alice", [a, b, c])
    assert store.unchanged("alice", [("a", "h1"), ("b", "other"), ("c", ""), ("d", "h1")]) == ["a"]
    assert store.unchanged("bob", [("a", "h1")]) == []  # another tenant's document of that name
    with pytest.raises(InvalidArgument, match="content_hash"):
        store.upsert("alice", [DocumentInput("e", {}, doc("e").chunks, content_hash="x" * 129)])


def test_vectors_are_stored_at_unit_norm(store: Store) -> None:
    """However large a finite vector is, the store keeps and hands back its direction at unit norm."""
    huge = np.sign(vec(7)) * np.float32(3e38)
    result = store.upsert("alice", [DocumentInput("a", {}, [ChunkInput("t", np.arange(3, dtype=np.int32), huge.astype(np.float32))])])
    expected = np.sign(vec(7)) / np.sqrt(DIM)
    np.testing.assert_allclose(result.vectors[0], expected, rtol=1e-6)
    np.testing.assert_allclose(next(store.iter_index_entries()).vectors[0], expected, rtol=1e-6)


def _overwrite_vectors(store: Store, rows: dict[int, np.ndarray], schema: bytes | None = None) -> None:
    """Write raw vector bytes (and a schema version) past every check, as an older version or a bug could have."""
    with store._env.lmdb.begin(write=True) as txn:
        for chunk_id, row in rows.items():
            txn.put(U64.pack(chunk_id), np.asarray(row, dtype=np.float32).tobytes(), db=store._env.db["vectors"])
        if schema is not None:
            txn.put(b"schema", schema, db=store._env.db["meta"])


def test_a_schema_1_store_is_migrated_to_unit_vectors(config: StoreConfig) -> None:
    with Store(config) as store:
        store.create_tenant("alice")
        store.upsert("alice", [doc(f"d{i}", seed=i) for i in range(5)])
        hostile = {1: vec(0) * 1e30, 2: np.zeros(DIM), 3: np.full(DIM, np.nan), 4: vec(3) * 0.5}
        _overwrite_vectors(store, hostile, schema=b"1")
    with Store(config) as store:
        vectors = np.concatenate([e.vectors for e in store.iter_index_entries()])
        with store._env.lmdb.begin() as txn:
            assert txn.get(b"schema", db=store._env.db["meta"]) == str(SCHEMA_VERSION).encode()
    np.testing.assert_allclose(vectors[0], vec(0), rtol=1e-5)
    np.testing.assert_array_equal(vectors[1:3], 0.0)
    np.testing.assert_allclose(vectors[3], vec(3), rtol=1e-5)
    np.testing.assert_allclose(vectors[4], vec(400), rtol=1e-6)


def test_a_migration_killed_midway_is_redone(config: StoreConfig) -> None:
    """The version moves only in the migration's last transaction: a process killed before it leaves
    version 1 and half-scaled vectors, and the next start scales them all."""
    with Store(config) as store:
        store.create_tenant("alice")
        store.upsert("alice", [doc(f"d{i}", seed=i) for i in range(3)])
        _overwrite_vectors(store, {1: vec(0) * 1e30, 3: vec(200) * 7}, schema=b"1")
    killed_on_second_batch = f"""
import os, store.schema as schema, store.store as s
from store.config import StoreConfig
real = schema.safe_rows
batches = []
def scale(rows):
    batches.append(rows)
    if len(batches) == 2:
        os._exit(9)
    return real(rows)
schema.safe_rows, schema.MIGRATION_BATCH = scale, 2
s.Store(StoreConfig(path=__import__("pathlib").Path({str(config.path)!r}), dim={DIM}))
"""
    assert subprocess.run([sys.executable, "-c", killed_on_second_batch], cwd=Path(__file__).parents[2]).returncode == 9
    env = lmdb.open(str(config.path / "lmdb"), max_dbs=16, readonly=True, lock=False)
    with env.begin() as txn:
        assert txn.get(b"schema", db=env.open_db(b"meta", txn=txn)) == b"1"
        assert np.frombuffer(txn.get(U64.pack(1), db=env.open_db(b"vectors", txn=txn)), np.float32) == pytest.approx(vec(0))
        assert np.linalg.norm(np.frombuffer(txn.get(U64.pack(3), db=env.open_db(b"vectors", txn=txn)), np.float32)) == pytest.approx(7)
    env.close()
    with Store(config) as store:
        vectors = np.concatenate([e.vectors for e in store.iter_index_entries()])
    np.testing.assert_allclose(vectors, [vec(0), vec(100), vec(200)], rtol=1e-5)


def test_reopen_keeps_commits_and_forgets_deletions(config: StoreConfig) -> None:
    with Store(config) as store:
        store.create_tenant("alice")
        store.upsert("alice", [doc("a", kv=True), doc("b", kv=True)])
        store.delete_documents("alice", ["b"])
    with Store(config) as store:
        assert [c.external_id for c in store.readable_chunks("alice", [1, 2])] == ["a"]
        assert store.read_kv(1) is not None
        entries = list(store.iter_index_entries())
        assert [e.ids.tolist() for e in entries] == [[1]] and entries[0].readers == [[1]]
        np.testing.assert_array_equal(entries[0].vectors[0], vec(0))
    with pytest.raises(FailedPrecondition, match="dim"):
        Store(StoreConfig(path=config.path, dim=DIM + 1))


def test_map_grows_when_full(tmp_path: Path) -> None:
    with Store(StoreConfig(path=tmp_path / "s", dim=DIM, map_size=1 << 16)) as store:
        store.create_tenant("alice")
        for batch in range(20):
            store.upsert("alice", [doc(f"d{batch}-{i}", 4, seed=batch) for i in range(25)])
        assert store.tenant_stats("alice").chunks == 20 * 25 * 4


def test_torn_segment_tail_is_cut_and_flipped_bytes_detected(config: StoreConfig) -> None:
    with Store(config) as store:
        store.create_tenant("alice")
        store.upsert("alice", [doc("a", kv=True)])
    segment = next((config.path / "segments").glob("*.seg"))
    good = segment.read_bytes()
    segment.write_bytes(good + b"TKVB\xff\xff\x00\x00partial")  # a crash mid-append
    with Store(config) as store:
        assert segment.read_bytes() == good
        assert store.read_kv(1) is not None
        store.upsert("alice", [doc("b", kv=True, seed=3)])
        assert store.read_kv(2) is not None
    flipped = bytearray(segment.read_bytes())
    flipped[20] ^= 0xFF
    segment.write_bytes(bytes(flipped))
    with Store(config) as store:
        with pytest.raises(Corrupted):
            store.read_kv(1)


def test_concurrent_readers_and_writer(store: Store) -> None:
    errors: list[BaseException] = []
    done = threading.Event()

    def write() -> None:
        try:
            for i in range(60):
                store.upsert("alice", [doc(f"w{i}", 2, kv=True, seed=i)])
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            done.set()

    def read() -> None:
        try:
            while not done.is_set():
                seen = store.readable_chunks("alice", range(1, 200))
                assert all(c.owner == "alice" for c in seen)
                store.tenant_stats("alice")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write)] + [threading.Thread(target=read) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.tenant_stats("alice").chunks == 120


def test_external_ids_may_be_any_printable_text(store: Store) -> None:
    ids = ["Acid–base reaction", "東京", "a b", "x" * 256]
    store.upsert("alice", [doc(i) for i in ids])
    assert store.document_chunk_ids("alice", ids).tolist() == [1, 2, 3, 4]


def test_replacing_a_document_with_the_same_kv_keeps_the_blob(store: Store) -> None:
    """The old chunk's blob reference drops to zero only after the new chunk took its own."""
    first = store.upsert("alice", [doc("a", kv=True)], kv_fingerprint="m")
    again = store.upsert("alice", [doc("a", kv=True)], kv_fingerprint="m")
    assert again.removed.tolist() == first.added.tolist()
    assert store.read_kv(int(again.added[0])) == doc("a", kv=True).chunks[0].kv_blob
    assert store.tenant_stats("alice").kv_bytes == len(doc("a", kv=True).chunks[0].kv_blob)
    assert (store.tenant_stats("alice").documents, store.tenant_stats("alice").chunks) == (1, 1)


def test_the_chunk_quota_refuses_the_whole_batch(store: Store) -> None:
    store.create_tenant("acme", TenantSettings(max_chunks=4))
    store.upsert("acme", [doc("a", 3)])
    with pytest.raises(QuotaExceeded, match="max_chunks.*5.*quota of 4"):
        store.upsert("acme", [doc("b", 1), doc("c", 1)])
    assert store.tenant_stats("acme").chunks == 3
    with pytest.raises(NotFound):
        store.document_chunk_ids("acme", ["b"])
    store.upsert("acme", [doc("a", 4, seed=1)])  # replacing a document counts only what remains
    assert store.tenant_stats("acme").chunks == 4


def test_settings_are_validated_and_survive_reopening(config: StoreConfig) -> None:
    settings = TenantSettings(max_chunks=10, max_kv_bytes=1 << 20, requests_per_second=2.5, kv_codec="kivi4")
    with Store(config) as store:
        assert store.create_tenant("acme", settings).settings == settings
        for bad in (TenantSettings(max_chunks=-1), TenantSettings(requests_per_second=float("nan"))):
            with pytest.raises(InvalidArgument, match="settings"):
                store.update_tenant("acme", bad)
    with Store(config) as store:
        assert store.get_tenant("acme").settings == settings
        assert store.update_tenant("acme", TenantSettings()).settings == TenantSettings()


def test_tenant_settings_follow_updates_and_deletion(store: Store) -> None:
    assert store.tenant_settings("alice") == TenantSettings()
    limited = TenantSettings(requests_per_second=3.0)
    store.update_tenant("alice", limited)
    assert store.tenant_settings("alice") == limited
    store.delete_tenant("alice")
    with pytest.raises(NotFound):
        store.tenant_settings("alice")
    store.create_tenant("alice")
    assert store.tenant_settings("alice") == TenantSettings()


def test_an_expired_key_is_refused_and_forgotten(store: Store, monkeypatch) -> None:
    key, token = store.create_api_key(KeyScope.TENANT, "alice", frozenset({"read"}), ttl_s=60)
    assert store.authenticate(token) == key  # verified, so remembered
    monkeypatch.setattr(keys_module, "now_ms", lambda: key.expires_unix_ms)
    with pytest.raises(Unauthenticated, match="expired"):
        store.authenticate(token)
    assert store._keys._verified.get(token, lambda: "read again") == "read again"
