"""Documents and their chunks as written: upsert, delete and grants, each in one transaction that
keeps the docs, chunks, tokens, vectors and readable records, the KV blob references and the
owner's usage counts in step. `store.chunks` reads them back."""

import lmdb
import numpy as np
import orjson

from store.budget import Budget, fits
from store.chunks import Chunks
from store.env import U32, U64, Env, dumps
from store.errors import InvalidArgument, NotFound
from store.kvblobs import KVBlobs, blob_key, kv_salt
from store.records import DocumentInput, KVRef, UpsertResult
from store.tenants import Tenants
from store.validate import check_documents, check_external_id


class Documents:
    def __init__(self, env: Env, tenants: Tenants, blobs: KVBlobs, budget: Budget, chunks: Chunks, dim: int) -> None:
        self._env = env
        self._tenants = tenants
        self._blobs = blobs
        self._budget = budget
        self._chunks = chunks
        self._dim = dim

    def upsert(self, tenant: str, documents: list[DocumentInput], kv_fingerprint: str) -> UpsertResult:
        """Insert or replace documents in one transaction; their KV blobs are durable before it commits.

        A replaced document keeps its grants: its new chunks are readable by the same tenants.
        KV never fails a write: a blob larger than the tenant's whole KV budget is not stored, and
        the tenant's coldest blobs (under LFU this write's too) are evicted until it is within its budget.
        """
        vectors = check_documents(documents, self._dim)
        settings = self._tenants.settings(tenant)
        kv_keys = [
            [blob_key(kv_fingerprint, c.token_ids, kv_salt(tenant, settings, c.kv_uploaded)) if fits(c.kv_blob, settings) else None for c in d.chunks]
            for d in documents
        ]
        blobs = {k: c.kv_blob for d, keys in zip(documents, kv_keys) for c, k in zip(d.chunks, keys) if k}
        with self._env.write_lock:
            refs = self._blobs.append_new(blobs)
            return self._env.write_locked(lambda txn: self._upsert(txn, tenant, documents, vectors, kv_keys, kv_fingerprint, refs))

    def _upsert(
        self, txn, tenant: str, documents: list[DocumentInput], vectors: np.ndarray, kv_keys, kv_fingerprint: str, refs: dict[bytes, KVRef]
    ) -> UpsertResult:
        number = self._tenants.record(txn, tenant)["number"]
        next_chunk = int(txn.get(b"next_chunk", b"1", db=self._env.db["meta"]))
        added, added_readers, replaced = [], [], []
        usage = dict(documents=0, chunks=0, text_bytes=0)
        for doc, keys in zip(documents, kv_keys):
            doc_key = _doc_key(number, doc.external_id)
            old = txn.get(doc_key, db=self._env.db["docs"])
            old_doc = orjson.loads(old) if old else dict(chunks=[], grantees=[])
            grantees = old_doc["grantees"]
            if old:
                replaced.append(old_doc["chunks"])
            readers = [tenant, *grantees]
            reader_numbers = [number, *(self._tenants.record(txn, g)["number"] for g in grantees)]
            ids = []
            for index, (chunk, kv_key) in enumerate(zip(doc.chunks, keys)):
                chunk_id = next_chunk
                next_chunk += 1
                ids.append(chunk_id)
                if kv_key is not None:
                    self._blobs.ref(txn, kv_key, refs.get(kv_key), tenant, chunk_id)
                value = dict(
                    owner=tenant, external_id=doc.external_id, index=index, text=chunk.text,
                    metadata=doc.metadata, readers=readers, kv=kv_key.hex() if kv_key else None,
                )
                if kv_key is not None:
                    value["kv_fp"] = kv_fingerprint
                key = U64.pack(chunk_id)
                txn.put(key, dumps(value), db=self._env.db["chunks"])
                txn.put(key, np.asarray(chunk.token_ids, dtype=np.int32).tobytes(), db=self._env.db["tokens"])
                txn.put(key, vectors[len(added) + index].tobytes(), db=self._env.db["vectors"])
                for reader in reader_numbers:
                    txn.put(U32.pack(reader) + key, b"", db=self._env.db["readable"])
            txn.put(doc_key, dumps(dict(chunks=ids, grantees=grantees, content_hash=doc.content_hash)), db=self._env.db["docs"])
            added.extend(ids)
            added_readers.extend([reader_numbers] * len(ids))
            usage["documents"] += 1
            usage["chunks"] += len(ids)
            usage["text_bytes"] += sum(len(c.text.encode()) for c in doc.chunks)
        self._tenants.add_usage(txn, tenant, **usage)
        # Replaced chunks go last, so a blob they share with the new chunks keeps its record.
        for chunk_ids in replaced:
            self._drop_chunks(txn, chunk_ids)
        txn.put(b"next_chunk", str(next_chunk).encode(), db=self._env.db["meta"])
        self._tenants.check_quotas(txn, tenant)
        self._budget.fit(txn, tenant)
        removed = [chunk_id for chunk_ids in replaced for chunk_id in chunk_ids]
        return UpsertResult(np.array(added, dtype=np.int64), np.array(removed, dtype=np.int64), len(documents), added_readers, vectors)

    def _remove(self, txn, doc_key: bytes) -> list[int]:
        """Delete a document: its record, its chunks, and their vectors, tokens, reader entries and blob references."""
        chunk_ids = orjson.loads(txn.get(doc_key, db=self._env.db["docs"]))["chunks"]
        txn.delete(doc_key, db=self._env.db["docs"])
        self._drop_chunks(txn, chunk_ids)
        return chunk_ids

    def _drop_chunks(self, txn, chunk_ids: list[int]) -> None:
        """Delete one document's chunks and count the document and its chunks out of its owner's totals."""
        text_bytes = 0
        owner = None
        for chunk_id in chunk_ids:
            key = U64.pack(chunk_id)
            chunk = self._chunks.record(txn, chunk_id)
            owner = chunk["owner"]
            text_bytes += len(chunk["text"].encode())
            for reader in chunk["readers"]:
                reader_record = self._tenants.find(txn, reader)
                if reader_record is not None:
                    txn.delete(U32.pack(reader_record["number"]) + key, db=self._env.db["readable"])
            if chunk["kv"]:
                self._blobs.unref(txn, bytes.fromhex(chunk["kv"]), owner, chunk_id)
            for db in ("chunks", "tokens", "vectors"):
                txn.delete(key, db=self._env.db[db])
        if owner is not None:
            self._tenants.add_usage(txn, owner, documents=-1, chunks=-len(chunk_ids), text_bytes=-text_bytes)

    def delete(self, tenant: str, external_ids: list[str]) -> np.ndarray:
        """Remove the tenant's documents; ids it does not own are ignored (deletion is idempotent)."""
        for i, external_id in enumerate(external_ids):
            check_external_id(external_id, f"external_ids[{i}]")

        def delete(txn: lmdb.Transaction) -> np.ndarray:
            number = self._tenants.record(txn, tenant)["number"]
            removed = []
            for external_id in external_ids:
                doc_key = _doc_key(number, external_id)
                if txn.get(doc_key, db=self._env.db["docs"]) is not None:
                    removed.extend(self._remove(txn, doc_key))
            return np.array(removed, dtype=np.int64)

        return self._env.write(delete)

    def _owned_doc_keys(self, txn, tenant: str, external_ids: list[str]) -> list[bytes]:
        number = self._tenants.record(txn, tenant, "owner_tenant_id")["number"]
        keys = []
        for i, external_id in enumerate(external_ids):
            key = _doc_key(number, check_external_id(external_id, f"external_ids[{i}]"))
            if txn.get(key, db=self._env.db["docs"]) is None:
                raise NotFound(f"external_ids: document {external_id!r} of tenant {tenant!r} not found")
            keys.append(key)
        return keys

    def unchanged(self, tenant: str, documents: list[tuple[str, str]]) -> list[str]:
        """The external ids of `documents` ((external id, content hash) pairs) stored with that same, non-empty hash."""

        def read(txn: lmdb.Transaction) -> list[str]:
            number = self._tenants.record(txn, tenant)["number"]
            stored = (txn.get(_doc_key(number, check_external_id(e)), db=self._env.db["docs"]) for e, _ in documents)
            return [e for (e, h), raw in zip(documents, stored) if h and raw and orjson.loads(raw).get("content_hash") == h]

        return self._env.read(read)

    def chunk_ids(self, tenant: str, external_ids: list[str]) -> np.ndarray:
        def ids(txn: lmdb.Transaction) -> np.ndarray:
            keys = self._owned_doc_keys(txn, tenant, external_ids)
            return np.array([c for k in keys for c in orjson.loads(txn.get(k, db=self._env.db["docs"]))["chunks"]], dtype=np.int64)

        return self._env.read(ids)

    def _set_grant(self, txn, doc_key: bytes, grantee: str, grantee_number: int, grant: bool) -> list[int]:
        """Add or drop `grantee` as a reader of every chunk of a document; returns the chunks changed."""
        doc = orjson.loads(txn.get(doc_key, db=self._env.db["docs"]))
        if (grantee in doc["grantees"]) == grant:
            return []
        doc["grantees"] = sorted(set(doc["grantees"]) | {grantee}) if grant else [g for g in doc["grantees"] if g != grantee]
        txn.put(doc_key, dumps(doc), db=self._env.db["docs"])
        for chunk_id in doc["chunks"]:
            key = U64.pack(chunk_id)
            chunk = self._chunks.record(txn, chunk_id)
            chunk["readers"] = [chunk["readers"][0], *doc["grantees"]]
            txn.put(key, dumps(chunk), db=self._env.db["chunks"])
            if grant:
                txn.put(U32.pack(grantee_number) + key, b"", db=self._env.db["readable"])
            else:
                txn.delete(U32.pack(grantee_number) + key, db=self._env.db["readable"])
        return doc["chunks"]

    def _change_grants(self, owner: str, external_ids: list[str], grantee: str, grant: bool) -> np.ndarray:
        def change(txn: lmdb.Transaction) -> np.ndarray:
            grantee_number = self._tenants.record(txn, grantee, "grantee_tenant_id")["number"]
            if grantee == owner:
                raise InvalidArgument("grantee_tenant_id: the owner reads its own documents already")
            changed = []
            for doc_key in self._owned_doc_keys(txn, owner, external_ids):
                changed.extend(self._set_grant(txn, doc_key, grantee, grantee_number, grant))
            return np.array(changed, dtype=np.int64)

        return self._env.write(change)

    def grant(self, owner: str, external_ids: list[str], grantee: str) -> np.ndarray:
        """Let `grantee` read every chunk of the owner's documents; returns the chunk ids newly granted."""
        return self._change_grants(owner, external_ids, grantee, grant=True)

    def revoke(self, owner: str, external_ids: list[str], grantee: str) -> np.ndarray:
        """Undo `grant`; returns the chunk ids whose grant was dropped."""
        return self._change_grants(owner, external_ids, grantee, grant=False)

    def remove_all_of(self, txn: lmdb.Transaction, owner_number: int) -> list[int]:
        """Delete every document of a tenant being deleted; returns their chunk ids."""
        removed: list[int] = []
        for key in list(self._env.prefix_keys(txn, "docs", U32.pack(owner_number))):
            removed.extend(self._remove(txn, key))
        return removed

    def revoke_all_granted_to(self, txn: lmdb.Transaction, grantee: str, grantee_number: int) -> list[int]:
        """Drop every grant of other tenants' documents to a tenant being deleted (once its own
        documents are gone); returns the chunk ids it could read through them."""
        revoked = []
        for key in list(self._env.prefix_keys(txn, "readable", U32.pack(grantee_number))):
            chunk_id = U64.unpack(key[4:])[0]
            chunk = self._chunks.record(txn, chunk_id)
            doc_key = _doc_key(self._tenants.record(txn, chunk["owner"])["number"], chunk["external_id"])
            self._set_grant(txn, doc_key, grantee, grantee_number, grant=False)
            revoked.append(chunk_id)
        return revoked


def _doc_key(owner_number: int, external_id: str) -> bytes:
    return U32.pack(owner_number) + external_id.encode()
