"""KV given to chunks stored without it, and taken from them: what a server writes when a policy
keeps the KV it computed on a miss, and drops when a blob was computed under another model.

Workers never write the store; the server hands `attach` the blobs a worker computed. A chunk's
KV belongs to its owner whoever read it: the blob is salted with the owner's salt (its sharing
group or itself) and charged to the owner's budget, whose coldest blobs make room for it.
"""

import lmdb
import numpy as np
import orjson

from store.budget import Budget, fits
from store.env import U32, U64, Env, dumps
from store.kvblobs import KVBlobs, blob_key, kv_salt
from store.records import KVRef
from store.tenants import Tenants


class ChunkKV:
    def __init__(self, env: Env, tenants: Tenants, blobs: KVBlobs, budget: Budget) -> None:
        self._env = env
        self._tenants = tenants
        self._blobs = blobs
        self._budget = budget

    def key(self, owner: str, token_ids: np.ndarray, kv_fingerprint: str) -> bytes:
        """The key a blob computed now for a chunk of `owner` with these tokens has (and would be stored under)."""
        return blob_key(kv_fingerprint, token_ids, kv_salt(owner, self._tenants.settings(owner)))

    def attach(self, tenant: str, blobs: list[tuple[int, bytes]], kv_fingerprint: str) -> list[int]:
        """Give the chunks `tenant` may read (its own or granted) their KV blobs, durably, in one
        transaction; returns the chunk ids given one. Skipped: chunks gone or not readable, chunks
        with KV under `kv_fingerprint` already, blobs larger than their owner's whole budget. A
        chunk's KV under another fingerprint is replaced. Each owner's coldest blobs are evicted
        until it is within its budget, those attached here last."""
        with self._env.write_lock:
            plan = self._env.read(lambda txn: self._plan(txn, tenant, blobs, kv_fingerprint))
            refs = self._blobs.append_new({key: blob for _, key, blob, _ in plan})
            return self._env.write_locked(lambda txn: self._attach(txn, plan, kv_fingerprint, refs))

    def _plan(self, txn: lmdb.Transaction, tenant: str, blobs: list[tuple[int, bytes]], kv_fingerprint: str) -> list[tuple[int, bytes, bytes, str]]:
        """(chunk id, blob key, blob, owner) of each blob to attach; the caller holds `write_lock`,
        so nothing changes before the write that follows."""
        prefix = U32.pack(self._tenants.record(txn, tenant)["number"])
        plan, seen = [], set()
        for chunk_id, blob in blobs:
            chunk_id = int(chunk_id)
            if chunk_id in seen or not 0 < chunk_id < 1 << 64 or txn.get(prefix + U64.pack(chunk_id), db=self._env.db["readable"]) is None:
                continue
            record = orjson.loads(txn.get(U64.pack(chunk_id), db=self._env.db["chunks"]))
            owner = record["owner"]
            key = self.key(owner, np.frombuffer(txn.get(U64.pack(chunk_id), db=self._env.db["tokens"]), dtype=np.int32), kv_fingerprint)
            # A blob under this fingerprint, or the very blob this one would be (stored before fingerprints were kept).
            current = record["kv"] and (record.get("kv_fp") == kv_fingerprint or record["kv"] == key.hex())
            if current or not fits(blob, self._tenants.settings(owner)):
                continue
            plan.append((chunk_id, key, bytes(blob), owner))
            seen.add(chunk_id)
        return plan

    def _attach(self, txn: lmdb.Transaction, plan: list[tuple[int, bytes, bytes, str]], kv_fingerprint: str, refs: dict[bytes, KVRef]) -> list[int]:
        for chunk_id, key, _, owner in plan:
            record = orjson.loads(txn.get(U64.pack(chunk_id), db=self._env.db["chunks"]))
            if record["kv"]:
                self._budget.clear(txn, chunk_id)
                record = orjson.loads(txn.get(U64.pack(chunk_id), db=self._env.db["chunks"]))
            self._blobs.ref(txn, key, refs.get(key), owner, chunk_id)
            record.update(kv=key.hex(), kv_fp=kv_fingerprint)
            record.pop("kv_evicted", None)
            txn.put(U64.pack(chunk_id), dumps(record), db=self._env.db["chunks"])
        for owner in {owner for *_, owner in plan}:
            self._budget.fit(txn, owner)
        return [chunk_id for chunk_id, *_ in plan if orjson.loads(txn.get(U64.pack(chunk_id), db=self._env.db["chunks"]))["kv"]]

    def drop(self, chunk_ids: list[int]) -> list[int]:
        """Take their KV blobs from existing chunks (e.g. computed under another model); returns
        the ids that had one. The blobs go when no chunk refers to them any more."""

        def drop(txn: lmdb.Transaction) -> list[int]:
            dropped = []
            for chunk_id in dict.fromkeys(int(c) for c in chunk_ids):
                raw = txn.get(U64.pack(chunk_id), db=self._env.db["chunks"]) if 0 < chunk_id < 1 << 64 else None
                if raw is not None and orjson.loads(raw)["kv"]:
                    self._budget.clear(txn, chunk_id)
                    dropped.append(chunk_id)
            return dropped

        return self._env.write(drop)
