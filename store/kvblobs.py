"""KV blob records: where each blob lies in the segment files and how many chunks refer to it.

A blob is keyed by SHA-256(model fingerprint | token ids | owner tenant), so identical chunks of
one tenant share it and no tenant shares with another. Its bytes are appended and fsynced before
the transaction that records them commits; the owner's kv_bytes counts each blob once, from its
first reference until its last one goes.
"""

import hashlib

import lmdb
import numpy as np
import orjson

from store.env import Env, dumps
from store.records import KVRef
from store.segments import SegmentLog
from store.tenants import Tenants


def blob_key(fingerprint: str, token_ids: np.ndarray, owner: str) -> bytes:
    digest = hashlib.sha256(fingerprint.encode() + b"\0")
    digest.update(np.asarray(token_ids, dtype=np.int32).tobytes())
    digest.update(b"\0" + owner.encode())
    return digest.digest()


class KVBlobs:
    def __init__(self, env: Env, tenants: Tenants, segments: SegmentLog) -> None:
        self._env = env
        self._tenants = tenants
        self._segments = segments

    def append_new(self, blobs: dict[bytes, bytes]) -> dict[bytes, KVRef]:
        """Append (durably) the blobs no record names yet; returns where each of them lies.

        The caller holds `env.write_lock` until the transaction that references them commits, so
        no record appears or goes in between.
        """
        known = self._env.read(lambda txn: {k for k in blobs if txn.get(k, db=self._env.db["kvblobs"])})
        fresh = {k: blob for k, blob in blobs.items() if k not in known}
        return dict(zip(fresh, self._segments.append(list(fresh.values()))))

    def ref(self, txn: lmdb.Transaction, key: bytes, ref: KVRef | None, owner: str) -> None:
        """Count one more reference to a blob: a new record at `ref` (charged to `owner`) or one more on the existing record."""
        raw = txn.get(key, db=self._env.db["kvblobs"])
        if raw is not None:
            blob = orjson.loads(raw)
            blob["refs"] += 1
        else:
            blob = dict(segment=ref.segment, offset=ref.offset, length=ref.length, crc32=ref.crc32, refs=1)
            self._tenants.add_usage(txn, owner, kv_bytes=ref.length)
        txn.put(key, dumps(blob), db=self._env.db["kvblobs"])

    def unref(self, txn: lmdb.Transaction, key: bytes, owner: str) -> None:
        """Count one reference less; the last one drops the record (its bytes stay in the segment)."""
        blob = orjson.loads(txn.get(key, db=self._env.db["kvblobs"]))
        blob["refs"] -= 1
        if blob["refs"] > 0:
            txn.put(key, dumps(blob), db=self._env.db["kvblobs"])
            return
        txn.delete(key, db=self._env.db["kvblobs"])
        self._tenants.add_usage(txn, owner, kv_bytes=-blob["length"])

    def locate(self, txn: lmdb.Transaction, key: bytes) -> KVRef:
        blob = orjson.loads(txn.get(key, db=self._env.db["kvblobs"]))
        return KVRef(blob["segment"], blob["offset"], blob["length"], blob["crc32"])

    def read(self, ref: KVRef) -> bytes:
        """The blob's bytes; Corrupted if they fail the checksum."""
        return self._segments.read(ref)

    def close(self) -> None:
        self._segments.close()
