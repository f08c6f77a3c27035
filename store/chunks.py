"""Reading chunks back: those a tenant may read (for search results and generation), a chunk's KV
blob, and every chunk's vector and readers for rebuilding the index. `store.documents` writes them."""

from typing import Iterator, Sequence

import lmdb
import numpy as np
import orjson

from store.env import U32, U64, Env
from store.kvblobs import KVBlobs
from store.records import Chunk, IndexEntries
from store.tenants import Tenants


class Chunks:
    def __init__(self, env: Env, tenants: Tenants, blobs: KVBlobs, dim: int) -> None:
        self._env = env
        self._tenants = tenants
        self._blobs = blobs
        self._dim = dim

    def record(self, txn: lmdb.Transaction, chunk_id: int) -> dict:
        """The stored record of an existing chunk."""
        return orjson.loads(txn.get(U64.pack(chunk_id), db=self._env.db["chunks"]))

    def readable(self, tenant: str, chunk_ids: Sequence[int], with_tokens: bool) -> list[Chunk]:
        """The chunks among `chunk_ids` that `tenant` may read, in the order asked; without their
        token ids (None) unless `with_tokens`, which a search result does not show."""

        def read(txn: lmdb.Transaction) -> list[Chunk]:
            prefix = U32.pack(self._tenants.record(txn, tenant)["number"])
            chunks = []
            for chunk_id in chunk_ids:
                chunk_id = int(chunk_id)
                if not 0 < chunk_id < 1 << 64 or txn.get(prefix + U64.pack(chunk_id), db=self._env.db["readable"]) is None:
                    continue
                record = self.record(txn, chunk_id)
                tokens = np.frombuffer(txn.get(U64.pack(chunk_id), db=self._env.db["tokens"]), dtype=np.int32).copy() if with_tokens else None
                chunks.append(
                    Chunk(
                        chunk_id=chunk_id, owner=record["owner"], external_id=record["external_id"], index=record["index"],
                        text=record["text"], token_ids=tokens, metadata=record["metadata"],
                        readers=frozenset(record["readers"]), kv_key=record["kv"] or "",
                        kv_fingerprint=record.get("kv_fp") if record["kv"] else "",
                        kv_evicted=record.get("kv_evicted", False),
                    )
                )
            return chunks

        return self._env.read(read)

    def read_kv(self, chunk_id: int) -> bytes | None:
        """A chunk's KV blob, None if it has none; Corrupted if its bytes fail the checksum.
        Counts as a read of the blob by the chunk's owner, for eviction (`store.access`).

        Its bytes are read inside the transaction that located them, so a compaction cannot
        remove their segment in between.
        """

        def read(txn: lmdb.Transaction) -> bytes | None:
            raw = txn.get(U64.pack(chunk_id), db=self._env.db["chunks"])
            record = orjson.loads(raw) if raw is not None else None
            if record is None or record["kv"] is None:
                return None
            key = bytes.fromhex(record["kv"])
            blob = self._blobs.read(self._blobs.locate(txn, key))
            self._blobs.access.touch(record["owner"], key)
            return blob

        return self._env.read(read)

    def index_entries(self, batch: int) -> Iterator[IndexEntries]:
        """Every chunk's vector, reader tenant numbers (owner first) and metadata, in chunk id order."""
        numbers = {t.name: t.number for t in self._tenants.list_all()}
        after = 0
        while rows := self._env.read(lambda txn: self._rows(txn, after, batch)):
            after = rows[-1][0]
            yield IndexEntries(
                ids=np.array([r[0] for r in rows], dtype=np.int64),
                vectors=np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), self._dim),
                readers=[[numbers[name] for name in r[2] if name in numbers] for r in rows],
                metadata=[r[3] for r in rows],
            )

    def _rows(self, txn: lmdb.Transaction, after: int, batch: int) -> list[tuple[int, bytes, list[str], dict]]:
        """Up to `batch` (chunk id, vector bytes, readers, metadata) with ids above `after`."""
        cursor = txn.cursor(db=self._env.db["chunks"])
        rows: list[tuple[int, bytes, list[str], dict]] = []
        if cursor.set_range(U64.pack(after + 1)):
            for key, value in cursor:
                record = orjson.loads(value)
                rows.append((U64.unpack(key)[0], txn.get(key, db=self._env.db["vectors"]), record["readers"], record["metadata"]))
                if len(rows) == batch:
                    break
        return rows
