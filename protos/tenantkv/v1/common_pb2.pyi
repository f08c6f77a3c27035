from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ChunkHit(_message.Message):
    __slots__ = ("chunk_id", "external_id", "chunk_index", "score", "text", "metadata", "owner_tenant_id")
    CHUNK_ID_FIELD_NUMBER: _ClassVar[int]
    EXTERNAL_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    OWNER_TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    chunk_id: int
    external_id: str
    chunk_index: int
    score: float
    text: str
    metadata: _struct_pb2.Struct
    owner_tenant_id: str
    def __init__(self, chunk_id: _Optional[int] = ..., external_id: _Optional[str] = ..., chunk_index: _Optional[int] = ..., score: _Optional[float] = ..., text: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., owner_tenant_id: _Optional[str] = ...) -> None: ...
