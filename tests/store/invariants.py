"""What must hold of a store's KV records after every acknowledged call, recounted from the records
themselves (chunks, kvblobs, kvrefs, tenants), for the budget and property tests."""

import numpy as np
import orjson

from store.env import U32, U64
from store.kvblobs import blob_key
from store.store import Store


def check_kv_records(store: Store, salts: dict[str, set[str]] | None = None) -> None:
    """Reference counts, kvrefs keys and each tenant's KV charge agree with a recount from the
    chunks; every tenant is within its budget; with `salts` (tenant -> the salts it may have
    written under), every chunk's blob key is salted with one of its owner's."""
    env = store._env
    with env.lmdb.begin() as txn:
        tenants = {bytes(k).decode(): orjson.loads(v) for k, v in txn.cursor(db=env.db["tenants"])}
        names = {t["number"]: name for name, t in tenants.items()}
        blobs = {bytes(k): orjson.loads(v) for k, v in txn.cursor(db=env.db["kvblobs"])}
        refs = {bytes(k) for k in txn.cursor(db=env.db["kvrefs"]).iternext(values=False)}
        counted: dict[bytes, dict[str, int]] = {}
        expected_refs = set()
        for key, raw in txn.cursor(db=env.db["chunks"]):
            chunk = orjson.loads(raw)
            if not chunk["kv"]:
                continue
            blob, owner, chunk_id = bytes.fromhex(chunk["kv"]), chunk["owner"], U64.unpack(key)[0]
            assert blob in blobs, f"chunk {chunk_id} points to a blob with no record"
            counted.setdefault(blob, {}).setdefault(owner, 0)
            counted[blob][owner] += 1
            expected_refs.add(U32.pack(tenants[owner]["number"]) + blob + U64.pack(chunk_id))
            if salts is not None:
                tokens = np.frombuffer(txn.get(key, db=env.db["tokens"]), np.int32)
                assert any(blob == blob_key(chunk["kv_fp"], tokens, s) for s in salts[owner]), f"chunk {chunk_id}: blob outside its owner's salts"
    assert {k: b["refs"] for k, b in blobs.items()} == counted, "reference counts differ from a recount"
    assert all(n > 0 for r in counted.values() for n in r.values())
    assert refs == expected_refs, "kvrefs keys differ from the chunks' references"
    assert all(names.get(U32.unpack(k[:4])[0]) for k in refs)
    for name, tenant in tenants.items():
        charged = sum(b["length"] for b in blobs.values() if name in b["refs"])
        assert tenant["kv_bytes"] == charged, f"{name}: charged {tenant['kv_bytes']}, recount {charged}"
        budget = tenant["settings"]["max_kv_bytes"]
        assert not budget or charged <= budget, f"{name}: {charged} KV bytes above its budget of {budget}"
