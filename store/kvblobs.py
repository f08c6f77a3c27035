"""KV blob records: where each blob lies in the segment files and which tenants' chunks refer to it.

A blob is keyed by SHA-256(model fingerprint | token ids | salt). The salt (`kv_salt`) is the
owner tenant, or `group:<name>` for the tenants an admin placed in one sharing group, so identical
chunks share a blob within a tenant or a group and never across (no cross-tenant timing signal);
a blob the caller uploaded is salted `upload:<tenant>` and shared with nothing.

A record counts its references per tenant (`refs`: tenant -> chunks of it that point to the blob),
and each (tenant, blob, chunk) reference has a key in `kvrefs`, so a tenant's blobs can be listed
for eviction (`store.budget`). Each tenant that refers to a blob is charged its full length once,
from its first reference until its last goes; the record goes with the last reference of any
tenant. Its bytes are appended and fsynced before the transaction that records them commits, and
stay in their segment after the record goes until a compaction (`store.compaction`) moves the
segment's live blobs elsewhere and removes the file.
"""

import hashlib
from typing import Iterator

import lmdb
import numpy as np
import orjson

from store.access import AccessStats
from store.env import U32, U64, Env, dumps
from store.errors import Corrupted
from store.records import KVRef, TenantSettings
from store.segments import SegmentLog
from store.tenants import Tenants


def blob_key(fingerprint: str, token_ids: np.ndarray, salt: str) -> bytes:
    digest = hashlib.sha256(fingerprint.encode() + b"\0")
    digest.update(np.asarray(token_ids, dtype=np.int32).tobytes())
    digest.update(b"\0" + salt.encode())
    return digest.digest()


def kv_salt(tenant: str, settings: TenantSettings, uploaded: bool = False) -> str:
    """What a blob of `tenant`'s chunk is salted with: its sharing group if it has one, else
    itself; an uploaded blob (the caller's claim) only ever with itself, so nothing computed
    elsewhere dedupes onto it. A tenant name holds no ':', so no salt names another's."""
    if uploaded:
        return f"upload:{tenant}"
    return f"group:{settings.kv_share_group}" if settings.kv_share_group else tenant


def ref_key(tenant_number: int, key: bytes, chunk_id: int) -> bytes:
    """The `kvrefs` key of one chunk's reference to a blob: tenant number | blob key | chunk id."""
    return U32.pack(tenant_number) + key + U64.pack(chunk_id)


class KVBlobs:
    def __init__(self, env: Env, tenants: Tenants, segments: SegmentLog) -> None:
        self._env = env
        self._tenants = tenants
        self._segments = segments
        self.access = AccessStats()  # reads of each (tenant, blob), for eviction

    def append_new(self, blobs: dict[bytes, bytes]) -> dict[bytes, KVRef]:
        """Append (durably) the blobs no record names yet; returns where each of them lies.

        The caller holds `env.write_lock` until the transaction that references them commits, so
        no record appears or goes in between.
        """
        known = self._env.read(lambda txn: {k for k in blobs if txn.get(k, db=self._env.db["kvblobs"])})
        fresh = {k: blob for k, blob in blobs.items() if k not in known}
        return dict(zip(fresh, self._segments.append(list(fresh.values()))))

    def ref(self, txn: lmdb.Transaction, key: bytes, ref: KVRef | None, tenant: str, chunk_id: int) -> bool:
        """Count `tenant`'s chunk `chunk_id` as a reference to a blob: a new record at `ref` or
        the existing one. Charges the tenant the blob's length at its first reference; a blob
        found stored already counts as bytes deduplication saved it. True for a new record."""
        raw = txn.get(key, db=self._env.db["kvblobs"])
        blob = orjson.loads(raw) if raw is not None else dict(segment=ref.segment, offset=ref.offset, length=ref.length, crc32=ref.crc32, refs={})
        refs = blob["refs"]
        charge = blob["length"] if tenant not in refs else 0
        refs[tenant] = refs.get(tenant, 0) + 1
        txn.put(key, dumps(blob), db=self._env.db["kvblobs"])
        number = self._tenants.record(txn, tenant)["number"]
        txn.put(ref_key(number, key, chunk_id), b"", db=self._env.db["kvrefs"])
        self._tenants.add_usage(txn, tenant, kv_bytes=charge, kv_dedup_bytes=blob["length"] if raw is not None else 0)
        self.access.touch(tenant, key)
        return raw is None

    def unref(self, txn: lmdb.Transaction, key: bytes, tenant: str, chunk_id: int, evicted: bool = False) -> bool:
        """Count one reference of `tenant` less; its last one uncharges it, the last one of any
        tenant drops the record (its bytes stay in the segment). True when `tenant` has none left.
        `evicted`: the budget took it, so its read figures are kept for when it comes back."""
        raw = txn.get(key, db=self._env.db["kvblobs"])
        blob = orjson.loads(raw) if raw is not None else None
        if blob is None or blob["refs"].get(tenant, 0) < 1:
            raise Corrupted(f"KV blob {key.hex()}: tenant {tenant!r} holds no reference to it")
        number = self._tenants.record(txn, tenant)["number"]
        txn.delete(ref_key(number, key, chunk_id), db=self._env.db["kvrefs"])
        refs = blob["refs"]
        refs[tenant] -= 1
        if refs[tenant]:
            txn.put(key, dumps(blob), db=self._env.db["kvblobs"])
            return False
        del refs[tenant]
        if evicted:
            self.access.evicted(tenant, key)
        else:
            self.access.forget(tenant, key)
        self._tenants.add_usage(txn, tenant, kv_bytes=-blob["length"])
        if refs:
            txn.put(key, dumps(blob), db=self._env.db["kvblobs"])
        else:
            txn.delete(key, db=self._env.db["kvblobs"])
        return True

    def record(self, txn: lmdb.Transaction, key: bytes) -> dict | None:
        """The blob's record ({segment, offset, length, crc32, refs}), None if there is none."""
        raw = txn.get(key, db=self._env.db["kvblobs"])
        return None if raw is None else orjson.loads(raw)

    def tenant_refs(self, txn: lmdb.Transaction, tenant_number: int) -> Iterator[tuple[bytes, int]]:
        """(blob key, chunk id) of every reference the tenant's chunks hold, in blob key order."""
        for key in self._env.prefix_keys(txn, "kvrefs", U32.pack(tenant_number)):
            yield bytes(key[4:36]), U64.unpack(key[36:])[0]

    def locate(self, txn: lmdb.Transaction, key: bytes) -> KVRef:
        return _ref(orjson.loads(txn.get(key, db=self._env.db["kvblobs"])))

    def read(self, ref: KVRef) -> bytes:
        """The blob's bytes; Corrupted if they fail the checksum."""
        return self._segments.read(ref)

    def segment_bytes(self) -> int:
        return self._segments.total_bytes()

    def live(self, txn: lmdb.Transaction) -> Iterator[tuple[bytes, KVRef]]:
        """Every blob record's key and where its bytes lie."""
        for key, raw in txn.cursor(db=self._env.db["kvblobs"]):
            yield key, _ref(orjson.loads(raw))

    def move(self, txn: lmdb.Transaction, key: bytes, old: KVRef, new: KVRef) -> None:
        """Point the blob's record at a copy of its bytes, if the record still points at `old`
        (a write may have dropped it, or dropped it and added it again elsewhere, since the copy)."""
        raw = txn.get(key, db=self._env.db["kvblobs"])
        blob = orjson.loads(raw) if raw is not None else None
        if blob is not None and (blob["segment"], blob["offset"]) == (old.segment, old.offset):
            blob.update(segment=new.segment, offset=new.offset)
            txn.put(key, dumps(blob), db=self._env.db["kvblobs"])

    def close(self) -> None:
        self._segments.close()


def _ref(blob: dict) -> KVRef:
    return KVRef(blob["segment"], blob["offset"], blob["length"], blob["crc32"])
