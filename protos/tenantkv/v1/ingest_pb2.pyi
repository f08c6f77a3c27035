from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ChunkInput(_message.Message):
    __slots__ = ("text", "vector", "token_ids", "kv_size")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    KV_SIZE_FIELD_NUMBER: _ClassVar[int]
    text: str
    vector: _containers.RepeatedScalarFieldContainer[float]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    kv_size: int
    def __init__(self, text: _Optional[str] = ..., vector: _Optional[_Iterable[float]] = ..., token_ids: _Optional[_Iterable[int]] = ..., kv_size: _Optional[int] = ...) -> None: ...

class KVPiece(_message.Message):
    __slots__ = ("external_id", "chunk", "offset", "data")
    EXTERNAL_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    external_id: str
    chunk: int
    offset: int
    data: bytes
    def __init__(self, external_id: _Optional[str] = ..., chunk: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class Document(_message.Message):
    __slots__ = ("external_id", "text", "chunks", "metadata", "content_hash")
    EXTERNAL_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    external_id: str
    text: str
    chunks: _containers.RepeatedCompositeFieldContainer[ChunkInput]
    metadata: _struct_pb2.Struct
    content_hash: str
    def __init__(self, external_id: _Optional[str] = ..., text: _Optional[str] = ..., chunks: _Optional[_Iterable[_Union[ChunkInput, _Mapping]]] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., content_hash: _Optional[str] = ...) -> None: ...

class UpsertRequest(_message.Message):
    __slots__ = ("documents", "kv_pieces")
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    KV_PIECES_FIELD_NUMBER: _ClassVar[int]
    documents: _containers.RepeatedCompositeFieldContainer[Document]
    kv_pieces: _containers.RepeatedCompositeFieldContainer[KVPiece]
    def __init__(self, documents: _Optional[_Iterable[_Union[Document, _Mapping]]] = ..., kv_pieces: _Optional[_Iterable[_Union[KVPiece, _Mapping]]] = ...) -> None: ...

class UpsertResponse(_message.Message):
    __slots__ = ("documents", "chunks", "batches")
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    documents: int
    chunks: int
    batches: int
    def __init__(self, documents: _Optional[int] = ..., chunks: _Optional[int] = ..., batches: _Optional[int] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("external_ids",)
    EXTERNAL_IDS_FIELD_NUMBER: _ClassVar[int]
    external_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, external_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted_chunks",)
    DELETED_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    deleted_chunks: int
    def __init__(self, deleted_chunks: _Optional[int] = ...) -> None: ...

class UnchangedRequest(_message.Message):
    __slots__ = ("external_ids", "content_hashes")
    EXTERNAL_IDS_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASHES_FIELD_NUMBER: _ClassVar[int]
    external_ids: _containers.RepeatedScalarFieldContainer[str]
    content_hashes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, external_ids: _Optional[_Iterable[str]] = ..., content_hashes: _Optional[_Iterable[str]] = ...) -> None: ...

class UnchangedResponse(_message.Message):
    __slots__ = ("external_ids",)
    EXTERNAL_IDS_FIELD_NUMBER: _ClassVar[int]
    external_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, external_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class UploadSpecRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UploadSpecResponse(_message.Message):
    __slots__ = ("kv_fingerprint", "kv_codec", "stores_kv", "chunk_tokens")
    KV_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    KV_CODEC_FIELD_NUMBER: _ClassVar[int]
    STORES_KV_FIELD_NUMBER: _ClassVar[int]
    CHUNK_TOKENS_FIELD_NUMBER: _ClassVar[int]
    kv_fingerprint: str
    kv_codec: str
    stores_kv: bool
    chunk_tokens: int
    def __init__(self, kv_fingerprint: _Optional[str] = ..., kv_codec: _Optional[str] = ..., stores_kv: _Optional[bool] = ..., chunk_tokens: _Optional[int] = ...) -> None: ...
