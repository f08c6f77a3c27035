"""The per-tenant KV byte budget (`max_kv_bytes`): when a write leaves a tenant charged for more
KV than its budget, the coldest of its blobs lose their references from its chunks (the chunks
keep their text, tokens and vectors; their KV is recomputed on demand) in that same transaction,
so no acknowledged call leaves a tenant above its budget.

Coldness is the blobs' reads (`store.access`), least recently (LRU) or least frequently (LFU)
read first, as the store's configuration says.
"""

import lmdb
import orjson

from store.access import Eviction
from store.env import U64, Env, dumps
from store.kvblobs import KVBlobs
from store.records import TenantSettings
from store.tenants import Tenants


def fits(blob: bytes | None, settings: TenantSettings) -> bool:
    """Whether a blob is one to store at all: there is one, and it is no larger than the whole budget."""
    return blob is not None and not (settings.max_kv_bytes and len(blob) > settings.max_kv_bytes)


class Budget:
    def __init__(self, env: Env, tenants: Tenants, blobs: KVBlobs, eviction: Eviction) -> None:
        self._env = env
        self._tenants = tenants
        self._blobs = blobs
        self._eviction = eviction

    def fit(self, txn: lmdb.Transaction, tenant: str) -> int:
        """Evict the tenant's coldest blobs until its KV charge is within its budget (0: none);
        returns how many blobs it lost. The blobs of this write are ranked with the others: under
        LFU one colder than every resident is the one that goes (a blob stored again resumes the
        count it had when evicted, `store.access`); under LRU they are the newest."""
        record = self._tenants.record(txn, tenant)
        budget = record["settings"].get("max_kv_bytes", 0)
        if not budget or record["kv_bytes"] <= budget:
            return 0
        chunks_of: dict[bytes, list[int]] = {}
        for key, chunk_id in self._blobs.tenant_refs(txn, record["number"]):
            chunks_of.setdefault(key, []).append(chunk_id)
        over = record["kv_bytes"] - budget
        evicted = evicted_bytes = 0
        for key in sorted(chunks_of, key=lambda k: self._blobs.access.coldness(tenant, k, self._eviction)):
            evicted_bytes += self._blobs.record(txn, key)["length"]
            for chunk_id in chunks_of[key]:
                self.clear(txn, chunk_id, evicted=True)
            evicted += 1
            if evicted_bytes >= over:
                break
        self._tenants.add_usage(txn, tenant, kv_evictions=evicted, kv_evicted_bytes=evicted_bytes)
        return evicted

    def clear(self, txn: lmdb.Transaction, chunk_id: int, evicted: bool = False) -> None:
        """Drop a chunk's reference to its KV blob (it must have one); `evicted` marks the chunk as
        having lost it to the budget, until KV is attached again (a miss's cause, for metrics)."""
        key = U64.pack(chunk_id)
        chunk = orjson.loads(txn.get(key, db=self._env.db["chunks"]))
        blob_key = bytes.fromhex(chunk["kv"])
        chunk["kv"] = None
        chunk.pop("kv_fp", None)
        if evicted:
            chunk["kv_evicted"] = True
        txn.put(key, dumps(chunk), db=self._env.db["chunks"])
        self._blobs.unref(txn, blob_key, chunk["owner"], chunk_id, evicted)
