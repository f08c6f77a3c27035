"""The store's record types: what goes in and what comes out of `Store`."""

import enum
from dataclasses import dataclass

import numpy as np


class TenantState(enum.Enum):
    ACTIVE = 1
    SUSPENDED = 2
    DELETING = 3


class KeyScope(enum.Enum):
    ADMIN = 1
    TENANT = 2
    WORKER = 3  # an inference worker: KVCache.Fetch with a capability, nothing else


KV_POLICIES = ("eager", "lazy", "admit_on_reuse", "none")


@dataclass(frozen=True, slots=True)
class TenantSettings:
    """A tenant's quotas (0: unlimited) and how its KV is kept ("" or 0: the server's default)."""

    max_chunks: int = 0
    max_kv_bytes: int = 0  # budget of the KV blobs the tenant references; the coldest go beyond it
    requests_per_second: float = 0.0  # data-plane calls, with a burst of one second's worth
    kv_codec: str = ""
    kv_policy: str = ""  # one of KV_POLICIES: when a chunk's KV is stored
    kv_admit_after: int = 0  # admit_on_reuse: retrievals within the window before the KV is stored
    kv_share_group: str = ""  # tenants of one group share one KV salt; "": the tenant's own


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    number: int  # uint32 the index uses; never reused
    state: TenantState
    created_unix_ms: int
    settings: TenantSettings = TenantSettings()


@dataclass(frozen=True, slots=True)
class TenantStats:
    documents: int
    chunks: int
    granted_chunks: int  # chunks of other tenants this tenant may read
    text_bytes: int
    vector_bytes: int
    kv_bytes: int
    api_keys: int


@dataclass(frozen=True, slots=True)
class KVUsage:
    """A tenant's KV economics, for metrics."""

    tenant: str
    stored_bytes: int  # the KV blobs its chunks refer to, each charged in full once
    dedup_saved_bytes: int  # bytes of blobs its writes referred to that were stored already (its own or its group's)
    evictions: int  # blobs it lost to its budget
    evicted_bytes: int


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    scope: KeyScope
    tenant: str | None
    rights: frozenset[str]  # subset of {"read", "write"}
    created_unix_ms: int
    expires_unix_ms: int = 0  # 0: never


@dataclass(frozen=True, slots=True)
class ChunkInput:
    text: str
    token_ids: np.ndarray  # int32 [n]
    vector: np.ndarray  # float32 [dim]
    kv_blob: bytes | None = None
    kv_uploaded: bool = False  # the blob is the caller's claim: stored under its own salt, never shared


@dataclass(frozen=True, slots=True)
class DocumentInput:
    external_id: str
    metadata: dict
    chunks: list[ChunkInput]
    content_hash: str = ""  # the caller's, kept so a re-run can skip it unchanged (`Store.unchanged`)


@dataclass(frozen=True, slots=True)
class KVRef:
    segment: int
    offset: int
    length: int
    crc32: int


@dataclass(slots=True)  # a hot record, built for every hit: frozen construction cost 2.7 us against 0.9
class Chunk:
    chunk_id: int
    owner: str
    external_id: str
    index: int  # position within its document
    text: str
    token_ids: np.ndarray | None  # int32 [n]; None where the reader did not ask for them
    metadata: dict
    readers: frozenset[str]  # owner plus granted tenants
    kv_key: str  # hex key of its stored KV blob; "" when it has none
    kv_fingerprint: str | None = ""  # the model fingerprint its blob was computed under; "" without a blob, None if stored before fingerprints were kept
    kv_evicted: bool = False  # its KV was dropped by its owner's budget and not computed since

    @property
    def has_kv(self) -> bool:
        return bool(self.kv_key)


@dataclass(frozen=True, slots=True)
class UpsertResult:
    added: np.ndarray  # int64 chunk ids, in input order (documents, then chunks)
    removed: np.ndarray  # int64 chunk ids of the documents replaced
    documents: int
    readers: list[list[int]]  # per added chunk, the numbers of the tenants that may read it, owner first
    vectors: np.ndarray  # float32 [added, dim]: the unit vectors stored, for the index


@dataclass(frozen=True, slots=True)
class TenantDeletion:
    removed_chunk_ids: np.ndarray  # int64: the tenant's own chunks
    revoked: list[tuple[int, str]]  # (chunk id, tenant): grants of others' chunks to it that were dropped


@dataclass(frozen=True, slots=True)
class IndexEntries:
    """A batch for rebuilding an index: each chunk's vector, the tenant numbers that may read it,
    owner first, and its document's metadata (for filtered search)."""

    ids: np.ndarray  # int64 [n]
    vectors: np.ndarray  # float32 [n, dim]
    readers: list[list[int]]
    metadata: list[dict]
