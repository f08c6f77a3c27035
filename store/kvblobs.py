"""KV blob records: where each blob lies in the segment files and how many chunks refer to it.

A blob is keyed by SHA-256(model fingerprint | token ids | owner tenant), so identical chunks of
one tenant share it and no tenant shares with another. Its bytes are appended and fsynced before
the transaction that records them commits; the owner's kv_bytes counts each blob once, from its
first reference until its last one goes. A dropped blob's bytes stay in its segment until a
compaction (`store.compaction`) moves the segment's live blobs elsewhere and removes the file.
"""

import hashlib
from typing import Iterator

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
