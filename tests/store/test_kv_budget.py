"""KV economics in the store: a per-tenant byte budget that evicts the coldest blobs instead of
refusing writes, KV attached to chunks after ingestion or dropped, sharing groups that
deduplicate with every tenant charged in full, and the schema 2 -> 3 migration."""

from pathlib import Path

import numpy as np
import orjson
import pytest

from store.config import StoreConfig
from store.env import U64
from store.records import ChunkInput, DocumentInput, TenantSettings
from store.schema import SCHEMA_VERSION
from store.store import Store
from tests.store.canary import files_holding
from tests.store.invariants import check_kv_records

DIM = 8
KV = 1000  # bytes of every blob here


def chunk(seed: int, kv: bool = True) -> ChunkInput:
    """A chunk whose tokens (and so blob key) and blob bytes follow from `seed`: same seed, same KV."""
    rng = np.random.default_rng(seed)
    vector = rng.standard_normal(DIM).astype(np.float32)
    return ChunkInput(f"text {seed}", rng.integers(0, 50_000, 16).astype(np.int32), vector / np.linalg.norm(vector), rng.bytes(KV) if kv else None)


def doc(external_id: str, *seeds: int, kv: bool = True) -> DocumentInput:
    return DocumentInput(external_id, {}, [chunk(s, kv) for s in seeds])


@pytest.fixture
def config(tmp_path: Path) -> StoreConfig:
    return StoreConfig(path=tmp_path / "store", dim=DIM)


@pytest.mark.parametrize("eviction", ["lru", "lfu"])
def test_writes_beyond_the_budget_evict_the_coldest_blobs(config: StoreConfig, eviction: str) -> None:
    with Store(StoreConfig(path=config.path, dim=DIM, kv_eviction=eviction)) as store:
        store.create_tenant("acme", TenantSettings(max_kv_bytes=3 * KV))
        ids = {name: int(store.upsert("acme", [doc(name, seed)], "m").added[0]) for seed, name in enumerate("abc")}
        for _ in range(3):
            store.read_kv(ids["a"])  # a: read most often and (LRU) least recently of the hot ones
        store.read_kv(ids["c"])
        store.read_kv(ids["b"])
        store.read_kv(ids["b"])
        ids["d"] = int(store.upsert("acme", [doc("d", 3)], "m").added[0])  # never refused: one blob must go
        assert store.tenant_stats("acme").kv_bytes == 3 * KV
        evicted = {"lru": "a", "lfu": "d"}[eviction]  # LFU: the new blob, read once, is colder than every resident
        without = [c.text for c in store.readable_chunks("acme", list(ids.values())) if c.kv_evicted]  # no read_kv: reads count
        assert without == ["text " + str("abcd".index(evicted))]
        (chunk,) = store.readable_chunks("acme", [ids[evicted]])
        assert chunk.text == "text " + str("abcd".index(evicted)) and chunk.kv_evicted  # text stays; the miss's cause is known
        usage = {u.tenant: u for u in store.kv_usage()}["acme"]
        assert (usage.stored_bytes, usage.evictions, usage.evicted_bytes) == (3 * KV, 1, KV)
        check_kv_records(store)
        assert store.attach_kv("acme", [(ids[evicted], chunk_kv(ids, evicted))], "m") == [ids[evicted]]
        assert not store.readable_chunks("acme", [ids[evicted]])[0].kv_evicted


def chunk_kv(ids: dict[str, int], name: str) -> bytes:
    """The KV `doc(name, seed)` was stored with (same tokens, so the same blob key as before)."""
    return chunk(list(ids).index(name)).kv_blob


def test_under_lfu_a_chunk_that_keeps_missing_displaces_colder_ones(config: StoreConfig) -> None:
    """An evicted blob's read count resumes when its KV is stored again: a chunk computed on
    every miss wins its place once it has been wanted more often than the coldest resident."""
    with Store(config) as store:
        store.create_tenant("acme", TenantSettings(max_kv_bytes=2 * KV))
        ids = {name: int(store.upsert("acme", [doc(name, seed, kv=False)], "m").added[0]) for seed, name in enumerate("abc")}
        for name in "ab":
            assert store.attach_kv("acme", [(ids[name], chunk(ids_seed(ids, name)).kv_blob)], "m") == [ids[name]]
            store.read_kv(ids[name])  # a and b: two reads each (the reference and a hit)
        kept = [store.attach_kv("acme", [(ids["c"], chunk(ids_seed(ids, "c")).kv_blob)], "m") for _ in range(2)]  # c misses twice
        assert kept == [[], [ids["c"]]]  # one want loses to residents read twice; the second ties, and the older (a) goes
        assert [c.kv_evicted for c in store.readable_chunks("acme", list(ids.values()))] == [True, False, False]
        check_kv_records(store)


def ids_seed(ids: dict[str, int], name: str) -> int:
    return list(ids).index(name)


def test_a_batch_larger_than_the_budget_is_stored_without_the_kv_that_does_not_fit(config: StoreConfig) -> None:
    with Store(config) as store:
        store.create_tenant("acme", TenantSettings(max_kv_bytes=2 * KV + 10))
        result = store.upsert("acme", [doc("a", 1, 2, 3, 4, 5)], "m")
        assert store.tenant_stats("acme").chunks == 5 and store.tenant_stats("acme").kv_bytes == 2 * KV
        assert sum(store.read_kv(int(i)) is not None for i in result.added) == 2
        store.create_tenant("tiny", TenantSettings(max_kv_bytes=KV - 1))
        tiny = store.upsert("tiny", [doc("a", 1)], "m")  # a blob above the whole budget is never stored
        assert store.read_kv(int(tiny.added[0])) is None and store.tenant_stats("tiny").kv_bytes == 0
        assert {u.tenant: u.evictions for u in store.kv_usage()} == {"acme": 3, "tiny": 0}
        check_kv_records(store)


def test_lowering_the_budget_evicts_down_to_it_and_reads_go_on(config: StoreConfig) -> None:
    with Store(config) as store:
        store.create_tenant("acme")
        ids = store.upsert("acme", [doc("a", 1, 2, 3, 4)], "m").added
        assert store.tenant_stats("acme").kv_bytes == 4 * KV
        store.update_tenant("acme", TenantSettings(max_kv_bytes=KV + KV // 2))
        assert store.tenant_stats("acme").kv_bytes == KV
        assert len(store.readable_chunks("acme", ids)) == 4 and sum(store.read_kv(int(i)) is not None for i in ids) == 1
        check_kv_records(store)
    with Store(config) as store:  # the evictions were durable
        assert store.tenant_stats("acme").kv_bytes == KV
        check_kv_records(store)


def test_attach_gives_chunks_their_kv_under_the_owners_salt_and_budget(config: StoreConfig) -> None:
    with Store(config) as store:
        store.create_tenant("alice", TenantSettings(max_kv_bytes=2 * KV))
        store.create_tenant("bob")
        ids = [int(i) for i in store.upsert("alice", [doc("a", 1, 2, 3, kv=False)], "m").added]
        store.grant("alice", ["a"], "bob")
        mine = store.upsert("bob", [doc("b", 9, kv=False)], "m").added
        blobs = {i: chunk(s).kv_blob for i, s in zip(ids, (1, 2, 3))}
        assert store.attach_kv("alice", [(ids[0], blobs[ids[0]])], "m") == [ids[0]]
        assert store.attach_kv("alice", [(ids[0], b"other"), (int(mine[0]), b"x" * 10), (999, b"x")], "m") == []  # has KV, not readable, gone
        assert store.attach_kv("bob", [(ids[1], blobs[ids[1]])], "m") == [ids[1]]  # a grantee's miss is stored for the owner
        assert store.tenant_stats("alice").kv_bytes == 2 * KV and store.tenant_stats("bob").kv_bytes == 0
        [owned] = store.readable_chunks("bob", [ids[1]])
        assert owned.kv_key == store.kv_key("alice", owned.token_ids, "m").hex() and owned.kv_fingerprint == "m"
        store.read_kv(ids[0])
        assert store.attach_kv("alice", [(ids[2], blobs[ids[2]])], "m") == [ids[2]]  # ids[1], the coldest, goes
        assert [store.read_kv(i) for i in ids] == [blobs[ids[0]], None, blobs[ids[2]]]
        check_kv_records(store)


def test_kv_of_another_model_is_replaced_on_attach_or_dropped(config: StoreConfig) -> None:
    with Store(config) as store:
        store.create_tenant("alice")
        ids = [int(i) for i in store.upsert("alice", [doc("a", 1, 2)], "old").added]
        assert [c.kv_fingerprint for c in store.readable_chunks("alice", ids)] == ["old", "old"]
        assert store.attach_kv("alice", [(ids[0], b"new kv")], "new") == [ids[0]]
        assert store.read_kv(ids[0]) == b"new kv" and store.tenant_stats("alice").kv_bytes == KV + len(b"new kv")
        assert store.drop_kv([ids[1], ids[1], 12345]) == [ids[1]]
        assert store.read_kv(ids[1]) is None and store.tenant_stats("alice").kv_bytes == len(b"new kv")
        assert store.readable_chunks("alice", [ids[1]])[0].kv_fingerprint == ""
        check_kv_records(store)


def test_tenants_share_a_blob_only_within_a_group_and_each_is_charged_in_full(config: StoreConfig) -> None:
    with Store(config) as store:
        for name, group in (("alice", "team"), ("bob", "team"), ("carol", "")):
            store.create_tenant(name, TenantSettings(kv_share_group=group))
        ids = {name: int(store.upsert(name, [doc("same", 1)], "m").added[0]) for name in ("alice", "bob", "carol")}
        keys = {name: store.readable_chunks(name, [i])[0].kv_key for name, i in ids.items()}
        assert keys["alice"] == keys["bob"] != keys["carol"]
        with store._env.lmdb.begin() as txn:
            assert txn.stat(store._env.db["kvblobs"])["entries"] == 2
        assert [store.tenant_stats(n).kv_bytes for n in ids] == [KV, KV, KV]
        usage = {u.tenant: u.dedup_saved_bytes for u in store.kv_usage()}
        assert usage == {"alice": 0, "bob": KV, "carol": 0}
        assert all(store.read_kv(i) == chunk(1).kv_blob for i in ids.values())
        store.delete_tenant("alice")  # the shared blob keeps serving bob
        assert store.read_kv(ids["bob"]) == chunk(1).kv_blob
        store.update_tenant("bob", TenantSettings())  # leaving the group salts new blobs only
        assert store.readable_chunks("bob", [ids["bob"]])[0].kv_key == keys["bob"]
        again = int(store.upsert("bob", [doc("again", 1)], "m").added[0])
        assert store.readable_chunks("bob", [again])[0].kv_key not in (keys["bob"], keys["carol"])
        assert store.tenant_stats("bob").kv_bytes == 2 * KV
        store.delete_tenant("bob")
        with store._env.lmdb.begin() as txn:
            assert txn.stat(store._env.db["kvblobs"])["entries"] == 1  # carol's; the group's went with its last tenant
        check_kv_records(store)


def test_a_schema_2_store_is_migrated_to_per_tenant_references(config: StoreConfig) -> None:
    with Store(config) as store:
        store.create_tenant("alice")
        store.create_tenant("bob")
        store.upsert("alice", [doc("a", 1, 1, 2)], "m")  # two chunks share one blob
        store.upsert("bob", [doc("b", 1)], "m")
        env = store._env
        with env.lmdb.begin(write=True) as txn:  # as schema 2 wrote them: one count, no kvrefs
            for key, raw in list(txn.cursor(db=env.db["kvblobs"])):
                blob = orjson.loads(raw)
                blob["refs"] = sum(blob["refs"].values())
                txn.put(key, orjson.dumps(blob), db=env.db["kvblobs"])
            txn.drop(env.db["kvrefs"], delete=False)
            txn.put(b"schema", b"2", db=env.db["meta"])
    with Store(config) as store:
        with store._env.lmdb.begin() as txn:
            assert txn.get(b"schema", db=store._env.db["meta"]) == str(SCHEMA_VERSION).encode() == b"3"
        check_kv_records(store)
        assert store.tenant_stats("alice").kv_bytes == 2 * KV
        store.delete_documents("alice", ["a"])
        assert store.tenant_stats("alice").kv_bytes == 0 and store.read_kv(4) == chunk(1).kv_blob
        check_kv_records(store)


def test_a_read_records_no_write(config: StoreConfig) -> None:
    """Access statistics stay in memory: reading KV leaves the LMDB file's last transaction as it was."""
    with Store(config) as store:
        store.create_tenant("alice")
        [chunk_id] = store.upsert("alice", [doc("a", 1)], "m").added
        before = store._env.lmdb.info()["last_txnid"]
        for _ in range(10):
            store.read_kv(int(chunk_id))
        assert store._env.lmdb.info()["last_txnid"] == before


def test_compaction_reclaims_evicted_and_dropped_blobs_and_keeps_shared_ones(config: StoreConfig) -> None:
    with Store(config) as store:
        team = TenantSettings(kv_share_group="team")
        store.create_tenant("alice", team)
        store.create_tenant("bob", team)
        mine = [int(i) for i in store.upsert("alice", [doc("a", 1, 2, 3)], "m").added]
        [shared] = store.upsert("bob", [doc("b", 1)], "m").added  # one blob with alice's first chunk
        store.update_tenant("alice", TenantSettings(max_kv_bytes=KV, kv_share_group="team"))
        assert {u.tenant: u.evictions for u in store.kv_usage()}["alice"] == 2
        store.drop_kv(mine)
        assert store.tenant_stats("alice").kv_bytes == 0 and store.tenant_stats("bob").kv_bytes == KV
        gone = {f"kv{seed}": chunk(seed).kv_blob for seed in (2, 3)}
        assert sorted(files_holding(config.path, gone)) == ["kv2", "kv3"]  # in a segment until a compaction
        store.compact()
        assert files_holding(config.path, gone) == {}
        assert store.read_kv(int(shared)) == chunk(1).kv_blob
        check_kv_records(store)


def test_attach_leaves_kv_stored_before_fingerprints_were_kept_when_it_is_the_same_blob(config: StoreConfig) -> None:
    with Store(config) as store:
        store.create_tenant("alice")
        ids = [int(i) for i in store.upsert("alice", [doc("a", 1, 2)], "m").added]
        env = store._env
        with env.lmdb.begin(write=True) as txn:  # as a schema 2 store recorded them: no kv_fp
            for chunk_id in ids:
                record = orjson.loads(txn.get(U64.pack(chunk_id), db=env.db["chunks"]))
                del record["kv_fp"]
                txn.put(U64.pack(chunk_id), orjson.dumps(record), db=env.db["chunks"])
        assert [c.kv_fingerprint for c in store.readable_chunks("alice", ids)] == [None, None]
        assert store.attach_kv("alice", [(ids[0], chunk(1).kv_blob)], "m") == []  # the very blob it has: kept as it is
        assert store.attach_kv("alice", [(ids[1], b"kv of another model")], "m2") == [ids[1]]  # another key: replaced
        assert store.read_kv(ids[0]) == chunk(1).kv_blob and store.read_kv(ids[1]) == b"kv of another model"
        check_kv_records(store)
