"""The durable store's front: `Store`, the one object the layers above hold.

Each job lives in its own module, and `Store` composes them over one LMDB environment; it holds
no logic of its own beyond a tenant's deletion, the one call that spans every kind of record:

    env        the LMDB environment: named databases and their layout, transactions, map growth
    schema     the schema version, checked at open, and migrations of older stores
    validate   checks of what callers hand in, before any transaction
    tenants    tenant records, settings (cached) and usage counts; quotas
    keys       API keys: create, verify (cached), revoke
    kvblobs    KV blob records, their salts and per-tenant reference counts; the blobs' bytes in `segments`
    access     how recently and often each tenant read each blob (memory only)
    budget     each tenant's KV byte budget: the coldest blobs evicted beyond it
    chunkkv    KV attached to stored chunks after ingestion (a policy's miss), or dropped
    documents  upsert, delete and grants of documents and their chunks
    chunks     reading chunks back: for a tenant, their KV blobs, for an index rebuild
    cache      the read cache behind verified keys and tenant settings
    compaction rewriting the files with live data only, so deletions are final on disk

A new kind of record gets a module of its own here, with its named database in `env.DB_NAMES`.
"""

from pathlib import Path
from typing import Callable, Iterator, Sequence

import lmdb
import numpy as np

from store.backup import Manifest, backup as backup_store
from store.budget import Budget
from store.chunkkv import ChunkKV
from store.chunks import Chunks
from store.compaction import Compaction, compact, never
from store.config import StoreConfig
from store.documents import Documents
from store.env import Env
from store.errors import InvalidArgument
from store.keys import Keys
from store.kvblobs import KVBlobs
from store.records import (
    ApiKey,
    Chunk,
    DocumentInput,
    IndexEntries,
    KeyScope,
    KVUsage,
    Tenant,
    TenantDeletion,
    TenantSettings,
    TenantStats,
    UpsertResult,
)
from store.schema import open_schema
from store.segments import SegmentLog
from store.tenants import Tenants
from store.validate import check_settings


class Store:
    def __init__(self, config: StoreConfig) -> None:
        if config.dim <= 0:
            raise InvalidArgument(f"dim: must be positive, got {config.dim}")
        config.path.mkdir(parents=True, exist_ok=True)
        self.config = config
        self._env = Env(config.path / "lmdb", config.map_size, config.sync)
        self._segments = SegmentLog(config.path / "segments", config.max_segment_bytes, config.sync)
        open_schema(self._env, config.dim)
        self.dim = config.dim
        self._tenants = Tenants(self._env, self.dim)
        self._keys = Keys(self._env, self._tenants)
        self._blobs = KVBlobs(self._env, self._tenants, self._segments)
        self._budget = Budget(self._env, self._tenants, self._blobs, config.kv_eviction)
        self._chunks = Chunks(self._env, self._tenants, self._blobs, self.dim)
        self._chunk_kv = ChunkKV(self._env, self._tenants, self._blobs, self._budget)
        self._documents = Documents(self._env, self._tenants, self._blobs, self._budget, self._chunks, self.dim)

    def close(self) -> None:
        self._blobs.close()
        self._env.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- tenants

    def create_tenant(self, name: str, settings: TenantSettings = TenantSettings()) -> Tenant:
        return self._tenants.create(name, settings)

    def update_tenant(self, name: str, settings: TenantSettings) -> Tenant:
        """New settings, in one transaction with the evictions a lower KV budget calls for. A lower
        chunk quota applies to later writes; a new sharing group salts new blobs only."""
        check_settings(settings)

        def update(txn: lmdb.Transaction) -> Tenant:
            tenant = self._tenants.update(txn, name, settings)
            self._budget.fit(txn, name)
            return tenant

        tenant = self._env.write(update)
        self._tenants.forget_settings()
        return tenant

    def get_tenant(self, name: str) -> Tenant:
        return self._tenants.get(name)

    def tenant_settings(self, name: str) -> TenantSettings:
        return self._tenants.settings(name)

    def list_tenants(self, after: str = "", limit: int | None = None) -> list[Tenant]:
        """Tenants in name order: all of them, or the page of at most `limit` named after `after`."""
        return self._tenants.list_all(after, limit)

    def count_tenants(self) -> int:
        return self._tenants.count()

    def kv_usage(self) -> list[KVUsage]:
        """Each tenant's KV bytes stored, bytes deduplication saved it and evictions, for metrics."""
        return self._tenants.kv_usage()

    def list_tenants_with_stats(self, after: str = "", limit: int | None = None) -> list[tuple[Tenant, TenantStats]]:
        """`list_tenants` with each tenant's usage, from one read transaction."""
        return self._tenants.list_with_stats(after, limit)

    def tenant_stats(self, name: str) -> TenantStats:
        return self._tenants.stats(name)

    def delete_tenant(self, name: str) -> TenantDeletion:
        """Everything of the tenant, both directions of grants and its keys, in one durable transaction."""

        def delete(txn: lmdb.Transaction) -> TenantDeletion:
            number = self._tenants.record(txn, name)["number"]
            removed = self._documents.remove_all_of(txn, number)
            revoked = self._documents.revoke_all_granted_to(txn, name, number)
            self._keys.drop_tenant_keys(txn, name)
            self._tenants.drop(txn, name)
            return TenantDeletion(np.array(removed, dtype=np.int64), sorted({(chunk_id, name) for chunk_id in revoked}))

        deletion = self._env.write(delete)
        self._keys.forget_verified()
        self._tenants.forget_settings()
        return deletion

    # ---- API keys

    def create_api_key(self, scope: KeyScope, tenant: str | None, rights: frozenset[str], ttl_s: int = 0) -> tuple[ApiKey, str]:
        return self._keys.create(scope, tenant, rights, ttl_s)

    def authenticate(self, token: str) -> ApiKey:
        return self._keys.authenticate(token)

    def revoke_api_key(self, key_id: str) -> None:
        self._keys.revoke(key_id)

    # ---- documents

    def upsert(self, tenant: str, documents: list[DocumentInput], kv_fingerprint: str = "") -> UpsertResult:
        return self._documents.upsert(tenant, documents, kv_fingerprint)

    def unchanged(self, tenant: str, documents: list[tuple[str, str]]) -> list[str]:
        """Which (external id, content hash) pairs are stored with that hash."""
        return self._documents.unchanged(tenant, documents)

    def delete_documents(self, tenant: str, external_ids: list[str]) -> np.ndarray:
        return self._documents.delete(tenant, external_ids)

    def document_chunk_ids(self, tenant: str, external_ids: list[str]) -> np.ndarray:
        return self._documents.chunk_ids(tenant, external_ids)

    def grant(self, owner: str, external_ids: list[str], grantee: str) -> np.ndarray:
        return self._documents.grant(owner, external_ids, grantee)

    def revoke(self, owner: str, external_ids: list[str], grantee: str) -> np.ndarray:
        return self._documents.revoke(owner, external_ids, grantee)

    # ---- chunks

    def readable_chunks(self, tenant: str, chunk_ids: Sequence[int], with_tokens: bool = True) -> list[Chunk]:
        return self._chunks.readable(tenant, chunk_ids, with_tokens)

    def read_kv(self, chunk_id: int) -> bytes | None:
        """A chunk's KV blob (None without one); counts as a read for its owner's eviction order."""
        return self._chunks.read_kv(chunk_id)

    def attach_kv(self, tenant: str, blobs: list[tuple[int, bytes]], kv_fingerprint: str) -> list[int]:
        """Give chunks `tenant` may read the KV blobs computed for them (under the owner's salt and
        budget); returns the chunk ids given one. See `store.chunkkv.ChunkKV.attach`."""
        return self._chunk_kv.attach(tenant, blobs, kv_fingerprint)

    def drop_kv(self, chunk_ids: Sequence[int]) -> list[int]:
        """Take the chunks' KV blobs away (computed under another model); returns the ids that had one."""
        return self._chunk_kv.drop(list(chunk_ids))

    def kv_key(self, owner: str, token_ids: np.ndarray, kv_fingerprint: str) -> bytes:
        """The blob key a chunk of `owner` with these tokens gets for KV computed under
        `kv_fingerprint` now: what a worker's cache keys that KV by (deduplicated chunks share it)."""
        return self._chunk_kv.key(owner, token_ids, kv_fingerprint)

    def iter_index_entries(self, batch: int = 4096) -> Iterator[IndexEntries]:
        return self._chunks.index_entries(batch)

    # ---- compaction

    def compact(self, stop: Callable[[], bool] = never) -> Compaction:
        """Rewrite the LMDB file and the KV segments with live data only; writes wait only for short
        moments; Unavailable, the store left consistent, if `stop()` turns true before the end."""
        return compact(self._env, self._blobs, self._segments, stop)

    # ---- backup

    def backup(self, destination: Path, max_bytes_per_s: int = 0) -> Manifest:
        """A consistent copy of the store into `destination` (new or empty) while it keeps serving."""
        return backup_store(self._env, self.config.path / "segments", destination, max_bytes_per_s)
