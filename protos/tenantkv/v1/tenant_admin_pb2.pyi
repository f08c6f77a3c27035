from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TenantState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TENANT_STATE_UNSPECIFIED: _ClassVar[TenantState]
    TENANT_STATE_ACTIVE: _ClassVar[TenantState]
    TENANT_STATE_SUSPENDED: _ClassVar[TenantState]
    TENANT_STATE_DELETING: _ClassVar[TenantState]

class KeyScope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KEY_SCOPE_UNSPECIFIED: _ClassVar[KeyScope]
    KEY_SCOPE_ADMIN: _ClassVar[KeyScope]
    KEY_SCOPE_TENANT: _ClassVar[KeyScope]
    KEY_SCOPE_WORKER: _ClassVar[KeyScope]

class KeyRight(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KEY_RIGHT_UNSPECIFIED: _ClassVar[KeyRight]
    KEY_RIGHT_READ: _ClassVar[KeyRight]
    KEY_RIGHT_WRITE: _ClassVar[KeyRight]
TENANT_STATE_UNSPECIFIED: TenantState
TENANT_STATE_ACTIVE: TenantState
TENANT_STATE_SUSPENDED: TenantState
TENANT_STATE_DELETING: TenantState
KEY_SCOPE_UNSPECIFIED: KeyScope
KEY_SCOPE_ADMIN: KeyScope
KEY_SCOPE_TENANT: KeyScope
KEY_SCOPE_WORKER: KeyScope
KEY_RIGHT_UNSPECIFIED: KeyRight
KEY_RIGHT_READ: KeyRight
KEY_RIGHT_WRITE: KeyRight

class TenantStats(_message.Message):
    __slots__ = ("documents", "chunks", "granted_chunks", "text_bytes", "vector_bytes", "kv_bytes", "api_keys")
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    GRANTED_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    TEXT_BYTES_FIELD_NUMBER: _ClassVar[int]
    VECTOR_BYTES_FIELD_NUMBER: _ClassVar[int]
    KV_BYTES_FIELD_NUMBER: _ClassVar[int]
    API_KEYS_FIELD_NUMBER: _ClassVar[int]
    documents: int
    chunks: int
    granted_chunks: int
    text_bytes: int
    vector_bytes: int
    kv_bytes: int
    api_keys: int
    def __init__(self, documents: _Optional[int] = ..., chunks: _Optional[int] = ..., granted_chunks: _Optional[int] = ..., text_bytes: _Optional[int] = ..., vector_bytes: _Optional[int] = ..., kv_bytes: _Optional[int] = ..., api_keys: _Optional[int] = ...) -> None: ...

class TenantSettings(_message.Message):
    __slots__ = ("max_chunks", "max_kv_bytes", "requests_per_second", "kv_codec", "kv_policy", "kv_admit_after", "kv_share_group")
    MAX_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    MAX_KV_BYTES_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    KV_CODEC_FIELD_NUMBER: _ClassVar[int]
    KV_POLICY_FIELD_NUMBER: _ClassVar[int]
    KV_ADMIT_AFTER_FIELD_NUMBER: _ClassVar[int]
    KV_SHARE_GROUP_FIELD_NUMBER: _ClassVar[int]
    max_chunks: int
    max_kv_bytes: int
    requests_per_second: float
    kv_codec: str
    kv_policy: str
    kv_admit_after: int
    kv_share_group: str
    def __init__(self, max_chunks: _Optional[int] = ..., max_kv_bytes: _Optional[int] = ..., requests_per_second: _Optional[float] = ..., kv_codec: _Optional[str] = ..., kv_policy: _Optional[str] = ..., kv_admit_after: _Optional[int] = ..., kv_share_group: _Optional[str] = ...) -> None: ...

class Tenant(_message.Message):
    __slots__ = ("tenant_id", "state", "created_unix_ms", "stats", "settings")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    state: TenantState
    created_unix_ms: int
    stats: TenantStats
    settings: TenantSettings
    def __init__(self, tenant_id: _Optional[str] = ..., state: _Optional[_Union[TenantState, str]] = ..., created_unix_ms: _Optional[int] = ..., stats: _Optional[_Union[TenantStats, _Mapping]] = ..., settings: _Optional[_Union[TenantSettings, _Mapping]] = ...) -> None: ...

class CreateTenantRequest(_message.Message):
    __slots__ = ("tenant_id", "settings")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    settings: TenantSettings
    def __init__(self, tenant_id: _Optional[str] = ..., settings: _Optional[_Union[TenantSettings, _Mapping]] = ...) -> None: ...

class CreateTenantResponse(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: Tenant
    def __init__(self, tenant: _Optional[_Union[Tenant, _Mapping]] = ...) -> None: ...

class GetTenantRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class GetTenantResponse(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: Tenant
    def __init__(self, tenant: _Optional[_Union[Tenant, _Mapping]] = ...) -> None: ...

class UpdateTenantRequest(_message.Message):
    __slots__ = ("tenant_id", "settings")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    settings: TenantSettings
    def __init__(self, tenant_id: _Optional[str] = ..., settings: _Optional[_Union[TenantSettings, _Mapping]] = ...) -> None: ...

class UpdateTenantResponse(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: Tenant
    def __init__(self, tenant: _Optional[_Union[Tenant, _Mapping]] = ...) -> None: ...

class ListTenantsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "with_usage")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    WITH_USAGE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    with_usage: bool
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., with_usage: _Optional[bool] = ...) -> None: ...

class ListTenantsResponse(_message.Message):
    __slots__ = ("tenants", "next_page_token")
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tenants: _containers.RepeatedCompositeFieldContainer[Tenant]
    next_page_token: str
    def __init__(self, tenants: _Optional[_Iterable[_Union[Tenant, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteTenantRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class DeleteTenantResponse(_message.Message):
    __slots__ = ("deleted_chunks",)
    DELETED_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    deleted_chunks: int
    def __init__(self, deleted_chunks: _Optional[int] = ...) -> None: ...

class CreateApiKeyRequest(_message.Message):
    __slots__ = ("scope", "tenant_id", "rights", "ttl_seconds")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    RIGHTS_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    scope: KeyScope
    tenant_id: str
    rights: _containers.RepeatedScalarFieldContainer[KeyRight]
    ttl_seconds: int
    def __init__(self, scope: _Optional[_Union[KeyScope, str]] = ..., tenant_id: _Optional[str] = ..., rights: _Optional[_Iterable[_Union[KeyRight, str]]] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class CreateApiKeyResponse(_message.Message):
    __slots__ = ("key_id", "expires_unix_ms", "api_key")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    expires_unix_ms: int
    api_key: str
    def __init__(self, key_id: _Optional[str] = ..., expires_unix_ms: _Optional[int] = ..., api_key: _Optional[str] = ...) -> None: ...

class RevokeApiKeyRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class RevokeApiKeyResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GrantChunksRequest(_message.Message):
    __slots__ = ("owner_tenant_id", "external_ids", "grantee_tenant_id")
    OWNER_TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    EXTERNAL_IDS_FIELD_NUMBER: _ClassVar[int]
    GRANTEE_TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    owner_tenant_id: str
    external_ids: _containers.RepeatedScalarFieldContainer[str]
    grantee_tenant_id: str
    def __init__(self, owner_tenant_id: _Optional[str] = ..., external_ids: _Optional[_Iterable[str]] = ..., grantee_tenant_id: _Optional[str] = ...) -> None: ...

class GrantChunksResponse(_message.Message):
    __slots__ = ("chunk_ids",)
    CHUNK_IDS_FIELD_NUMBER: _ClassVar[int]
    chunk_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, chunk_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class RevokeChunksRequest(_message.Message):
    __slots__ = ("owner_tenant_id", "external_ids", "grantee_tenant_id")
    OWNER_TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    EXTERNAL_IDS_FIELD_NUMBER: _ClassVar[int]
    GRANTEE_TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    owner_tenant_id: str
    external_ids: _containers.RepeatedScalarFieldContainer[str]
    grantee_tenant_id: str
    def __init__(self, owner_tenant_id: _Optional[str] = ..., external_ids: _Optional[_Iterable[str]] = ..., grantee_tenant_id: _Optional[str] = ...) -> None: ...

class RevokeChunksResponse(_message.Message):
    __slots__ = ("chunk_ids",)
    CHUNK_IDS_FIELD_NUMBER: _ClassVar[int]
    chunk_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, chunk_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class CompactStoreRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CompactStoreResponse(_message.Message):
    __slots__ = ("bytes_before", "bytes_after", "seconds")
    BYTES_BEFORE_FIELD_NUMBER: _ClassVar[int]
    BYTES_AFTER_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    bytes_before: int
    bytes_after: int
    seconds: float
    def __init__(self, bytes_before: _Optional[int] = ..., bytes_after: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...

class BackupStoreRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class BackupStoreResponse(_message.Message):
    __slots__ = ("path", "files", "bytes", "tenants", "chunks", "kv_blobs", "schema", "created_unix_ms", "seconds")
    PATH_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    KV_BLOBS_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    path: str
    files: int
    bytes: int
    tenants: int
    chunks: int
    kv_blobs: int
    schema: int
    created_unix_ms: int
    seconds: float
    def __init__(self, path: _Optional[str] = ..., files: _Optional[int] = ..., bytes: _Optional[int] = ..., tenants: _Optional[int] = ..., chunks: _Optional[int] = ..., kv_blobs: _Optional[int] = ..., schema: _Optional[int] = ..., created_unix_ms: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...
