from protos.tenantkv.v1 import retrieval_pb2 as _retrieval_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class KVEventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KV_EVENT_KIND_UNSPECIFIED: _ClassVar[KVEventKind]
    KV_EVENT_KIND_STORED: _ClassVar[KVEventKind]
    KV_EVENT_KIND_REMOVED: _ClassVar[KVEventKind]
KV_EVENT_KIND_UNSPECIFIED: KVEventKind
KV_EVENT_KIND_STORED: KVEventKind
KV_EVENT_KIND_REMOVED: KVEventKind

class ChunkRef(_message.Message):
    __slots__ = ("chunk_id", "kv_key", "token_ids", "stored", "codec", "keep")
    CHUNK_ID_FIELD_NUMBER: _ClassVar[int]
    KV_KEY_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    KEEP_FIELD_NUMBER: _ClassVar[int]
    chunk_id: int
    kv_key: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    stored: bool
    codec: str
    keep: bool
    def __init__(self, chunk_id: _Optional[int] = ..., kv_key: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., stored: _Optional[bool] = ..., codec: _Optional[str] = ..., keep: _Optional[bool] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("chunks", "question", "mode", "max_new_tokens", "capability", "tenant")
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    chunks: _containers.RepeatedCompositeFieldContainer[ChunkRef]
    question: str
    mode: _retrieval_pb2.GenerationMode
    max_new_tokens: int
    capability: str
    tenant: str
    def __init__(self, chunks: _Optional[_Iterable[_Union[ChunkRef, _Mapping]]] = ..., question: _Optional[str] = ..., mode: _Optional[_Union[_retrieval_pb2.GenerationMode, str]] = ..., max_new_tokens: _Optional[int] = ..., capability: _Optional[str] = ..., tenant: _Optional[str] = ...) -> None: ...

class GenerateAccepted(_message.Message):
    __slots__ = ("prompt_tokens", "cache_hits", "fetched_chunks", "fetched_bytes")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    FETCHED_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    FETCHED_BYTES_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    cache_hits: int
    fetched_chunks: int
    fetched_bytes: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., cache_hits: _Optional[int] = ..., fetched_chunks: _Optional[int] = ..., fetched_bytes: _Optional[int] = ...) -> None: ...

class ComputedKVPiece(_message.Message):
    __slots__ = ("chunk_id", "seconds", "total_bytes", "offset", "data", "last")
    CHUNK_ID_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    chunk_id: int
    seconds: float
    total_bytes: int
    offset: int
    data: bytes
    last: bool
    def __init__(self, chunk_id: _Optional[int] = ..., seconds: _Optional[float] = ..., total_bytes: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("accepted", "token", "computed")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    COMPUTED_FIELD_NUMBER: _ClassVar[int]
    accepted: GenerateAccepted
    token: _retrieval_pb2.TokenDelta
    computed: ComputedKVPiece
    def __init__(self, accepted: _Optional[_Union[GenerateAccepted, _Mapping]] = ..., token: _Optional[_Union[_retrieval_pb2.TokenDelta, _Mapping]] = ..., computed: _Optional[_Union[ComputedKVPiece, _Mapping]] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("texts",)
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, texts: _Optional[_Iterable[str]] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("vectors",)
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    vectors: _containers.RepeatedCompositeFieldContainer[Embedding]
    def __init__(self, vectors: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ...) -> None: ...

class TokenIds(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class PrecomputeKVRequest(_message.Message):
    __slots__ = ("chunks", "codec")
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    chunks: _containers.RepeatedCompositeFieldContainer[TokenIds]
    codec: str
    def __init__(self, chunks: _Optional[_Iterable[_Union[TokenIds, _Mapping]]] = ..., codec: _Optional[str] = ...) -> None: ...

class PrecomputeKVResponse(_message.Message):
    __slots__ = ("chunk", "total_bytes", "offset", "data", "last")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    chunk: int
    total_bytes: int
    offset: int
    data: bytes
    last: bool
    def __init__(self, chunk: _Optional[int] = ..., total_bytes: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("since_sequence",)
    SINCE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    since_sequence: int
    def __init__(self, since_sequence: _Optional[int] = ...) -> None: ...

class KVEvent(_message.Message):
    __slots__ = ("sequence", "kind", "kv_key", "bytes")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    KV_KEY_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    kind: KVEventKind
    kv_key: str
    bytes: int
    def __init__(self, sequence: _Optional[int] = ..., kind: _Optional[_Union[KVEventKind, str]] = ..., kv_key: _Optional[str] = ..., bytes: _Optional[int] = ...) -> None: ...

class KVEntry(_message.Message):
    __slots__ = ("kv_key", "bytes")
    KV_KEY_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    kv_key: str
    bytes: int
    def __init__(self, kv_key: _Optional[str] = ..., bytes: _Optional[int] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("kv_fingerprint", "queue_depth", "active_requests", "sequence", "is_snapshot", "snapshot", "events", "cache_hits", "cache_misses", "fetched_bytes", "embedding_dim")
    KV_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    IS_SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    CACHE_MISSES_FIELD_NUMBER: _ClassVar[int]
    FETCHED_BYTES_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_DIM_FIELD_NUMBER: _ClassVar[int]
    kv_fingerprint: str
    queue_depth: int
    active_requests: int
    sequence: int
    is_snapshot: bool
    snapshot: _containers.RepeatedCompositeFieldContainer[KVEntry]
    events: _containers.RepeatedCompositeFieldContainer[KVEvent]
    cache_hits: int
    cache_misses: int
    fetched_bytes: int
    embedding_dim: int
    def __init__(self, kv_fingerprint: _Optional[str] = ..., queue_depth: _Optional[int] = ..., active_requests: _Optional[int] = ..., sequence: _Optional[int] = ..., is_snapshot: _Optional[bool] = ..., snapshot: _Optional[_Iterable[_Union[KVEntry, _Mapping]]] = ..., events: _Optional[_Iterable[_Union[KVEvent, _Mapping]]] = ..., cache_hits: _Optional[int] = ..., cache_misses: _Optional[int] = ..., fetched_bytes: _Optional[int] = ..., embedding_dim: _Optional[int] = ...) -> None: ...
