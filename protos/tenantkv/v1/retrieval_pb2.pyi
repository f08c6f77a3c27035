from google.protobuf import struct_pb2 as _struct_pb2
from protos.tenantkv.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerationMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GENERATION_MODE_UNSPECIFIED: _ClassVar[GenerationMode]
    GENERATION_MODE_FULL_PREFILL: _ClassVar[GenerationMode]
    GENERATION_MODE_FULL_REUSE: _ClassVar[GenerationMode]
    GENERATION_MODE_BLEND: _ClassVar[GenerationMode]
GENERATION_MODE_UNSPECIFIED: GenerationMode
GENERATION_MODE_FULL_PREFILL: GenerationMode
GENERATION_MODE_FULL_REUSE: GenerationMode
GENERATION_MODE_BLEND: GenerationMode

class SearchRequest(_message.Message):
    __slots__ = ("query_text", "query_vector", "k", "filter")
    QUERY_TEXT_FIELD_NUMBER: _ClassVar[int]
    QUERY_VECTOR_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    query_text: str
    query_vector: _containers.RepeatedScalarFieldContainer[float]
    k: int
    filter: Filter
    def __init__(self, query_text: _Optional[str] = ..., query_vector: _Optional[_Iterable[float]] = ..., k: _Optional[int] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ...) -> None: ...

class Filter(_message.Message):
    __slots__ = ("condition", "all_of", "any_of", "not_")
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    ALL_OF_FIELD_NUMBER: _ClassVar[int]
    ANY_OF_FIELD_NUMBER: _ClassVar[int]
    NOT__FIELD_NUMBER: _ClassVar[int]
    condition: Condition
    all_of: Filters
    any_of: Filters
    not_: Filter
    def __init__(self, condition: _Optional[_Union[Condition, _Mapping]] = ..., all_of: _Optional[_Union[Filters, _Mapping]] = ..., any_of: _Optional[_Union[Filters, _Mapping]] = ..., not_: _Optional[_Union[Filter, _Mapping]] = ...) -> None: ...

class Filters(_message.Message):
    __slots__ = ("filters",)
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    filters: _containers.RepeatedCompositeFieldContainer[Filter]
    def __init__(self, filters: _Optional[_Iterable[_Union[Filter, _Mapping]]] = ...) -> None: ...

class Condition(_message.Message):
    __slots__ = ("key", "equals", "range")
    KEY_FIELD_NUMBER: _ClassVar[int]
    EQUALS_FIELD_NUMBER: _ClassVar[int]
    IN_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    key: str
    equals: _struct_pb2.Value
    range: NumericRange
    def __init__(self, key: _Optional[str] = ..., equals: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., range: _Optional[_Union[NumericRange, _Mapping]] = ..., **kwargs) -> None: ...

class NumericRange(_message.Message):
    __slots__ = ("gt", "gte", "lt", "lte")
    GT_FIELD_NUMBER: _ClassVar[int]
    GTE_FIELD_NUMBER: _ClassVar[int]
    LT_FIELD_NUMBER: _ClassVar[int]
    LTE_FIELD_NUMBER: _ClassVar[int]
    gt: float
    gte: float
    lt: float
    lte: float
    def __init__(self, gt: _Optional[float] = ..., gte: _Optional[float] = ..., lt: _Optional[float] = ..., lte: _Optional[float] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits", "search_ms")
    HITS_FIELD_NUMBER: _ClassVar[int]
    SEARCH_MS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChunkHit]
    search_ms: float
    def __init__(self, hits: _Optional[_Iterable[_Union[_common_pb2.ChunkHit, _Mapping]]] = ..., search_ms: _Optional[float] = ...) -> None: ...

class RetrieveAndGenerateRequest(_message.Message):
    __slots__ = ("question", "k", "max_new_tokens", "mode", "filter")
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    question: str
    k: int
    max_new_tokens: int
    mode: GenerationMode
    filter: Filter
    def __init__(self, question: _Optional[str] = ..., k: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., mode: _Optional[_Union[GenerationMode, str]] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ...) -> None: ...

class ChunksUsed(_message.Message):
    __slots__ = ("hits",)
    HITS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChunkHit]
    def __init__(self, hits: _Optional[_Iterable[_Union[_common_pb2.ChunkHit, _Mapping]]] = ...) -> None: ...

class TokenDelta(_message.Message):
    __slots__ = ("token_id", "text")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    token_id: int
    text: str
    def __init__(self, token_id: _Optional[int] = ..., text: _Optional[str] = ...) -> None: ...

class GenerationStats(_message.Message):
    __slots__ = ("retrieval_ms", "time_to_first_token_ms", "prompt_tokens", "tokens_generated", "tokens_per_s", "total_ms", "mode")
    RETRIEVAL_MS_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_GENERATED_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    retrieval_ms: float
    time_to_first_token_ms: float
    prompt_tokens: int
    tokens_generated: int
    tokens_per_s: float
    total_ms: float
    mode: GenerationMode
    def __init__(self, retrieval_ms: _Optional[float] = ..., time_to_first_token_ms: _Optional[float] = ..., prompt_tokens: _Optional[int] = ..., tokens_generated: _Optional[int] = ..., tokens_per_s: _Optional[float] = ..., total_ms: _Optional[float] = ..., mode: _Optional[_Union[GenerationMode, str]] = ...) -> None: ...

class RetrieveAndGenerateResponse(_message.Message):
    __slots__ = ("chunks", "token", "stats")
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    chunks: ChunksUsed
    token: TokenDelta
    stats: GenerationStats
    def __init__(self, chunks: _Optional[_Union[ChunksUsed, _Mapping]] = ..., token: _Optional[_Union[TokenDelta, _Mapping]] = ..., stats: _Optional[_Union[GenerationStats, _Mapping]] = ...) -> None: ...
