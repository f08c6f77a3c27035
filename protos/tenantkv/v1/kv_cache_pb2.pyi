from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class FetchRequest(_message.Message):
    __slots__ = ("chunk_ids", "capability")
    CHUNK_IDS_FIELD_NUMBER: _ClassVar[int]
    CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    chunk_ids: _containers.RepeatedScalarFieldContainer[int]
    capability: str
    def __init__(self, chunk_ids: _Optional[_Iterable[int]] = ..., capability: _Optional[str] = ...) -> None: ...

class FetchResponse(_message.Message):
    __slots__ = ("chunk_id", "codec", "total_bytes", "offset", "data", "last")
    CHUNK_ID_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    chunk_id: int
    codec: str
    total_bytes: int
    offset: int
    data: bytes
    last: bool
    def __init__(self, chunk_id: _Optional[int] = ..., codec: _Optional[str] = ..., total_bytes: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ...) -> None: ...
