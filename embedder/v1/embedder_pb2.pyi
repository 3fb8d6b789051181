from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Encoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENCODING_FLOAT32: _ClassVar[Encoding]
    ENCODING_FLOAT16: _ClassVar[Encoding]
    ENCODING_INT8: _ClassVar[Encoding]

class AttributionKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ATTRIBUTION_KIND_WORD: _ClassVar[AttributionKind]
    ATTRIBUTION_KIND_SPECIAL: _ClassVar[AttributionKind]
    ATTRIBUTION_KIND_BIAS: _ClassVar[AttributionKind]
ENCODING_FLOAT32: Encoding
ENCODING_FLOAT16: Encoding
ENCODING_INT8: Encoding
ATTRIBUTION_KIND_WORD: AttributionKind
ATTRIBUTION_KIND_SPECIAL: AttributionKind
ATTRIBUTION_KIND_BIAS: AttributionKind

class EmbedRequest(_message.Message):
    __slots__ = ("texts", "normalize", "dimensions", "truncate", "encoding", "request_id", "model", "cache")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    normalize: bool
    dimensions: int
    truncate: bool
    encoding: Encoding
    request_id: str
    model: str
    cache: bool
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., normalize: _Optional[bool] = ..., dimensions: _Optional[int] = ..., truncate: _Optional[bool] = ..., encoding: _Optional[_Union[Encoding, str]] = ..., request_id: _Optional[str] = ..., model: _Optional[str] = ..., cache: _Optional[bool] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("tokenize_us", "queue_us", "inference_us", "total_us")
    TOKENIZE_US_FIELD_NUMBER: _ClassVar[int]
    QUEUE_US_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_US_FIELD_NUMBER: _ClassVar[int]
    TOTAL_US_FIELD_NUMBER: _ClassVar[int]
    tokenize_us: int
    queue_us: int
    inference_us: int
    total_us: int
    def __init__(self, tokenize_us: _Optional[int] = ..., queue_us: _Optional[int] = ..., inference_us: _Optional[int] = ..., total_us: _Optional[int] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("request_id", "dim", "count", "encoding", "embeddings", "scales", "token_counts", "total_tokens", "timing", "model", "error", "model_version", "bundle_sha256")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    SCALES_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_SHA256_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    dim: int
    count: int
    encoding: Encoding
    embeddings: bytes
    scales: _containers.RepeatedScalarFieldContainer[float]
    token_counts: _containers.RepeatedScalarFieldContainer[int]
    total_tokens: int
    timing: Timing
    model: str
    error: Error
    model_version: str
    bundle_sha256: str
    def __init__(self, request_id: _Optional[str] = ..., dim: _Optional[int] = ..., count: _Optional[int] = ..., encoding: _Optional[_Union[Encoding, str]] = ..., embeddings: _Optional[bytes] = ..., scales: _Optional[_Iterable[float]] = ..., token_counts: _Optional[_Iterable[int]] = ..., total_tokens: _Optional[int] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., model: _Optional[str] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., model_version: _Optional[str] = ..., bundle_sha256: _Optional[str] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ServerLimits(_message.Message):
    __slots__ = ("max_texts_per_request", "max_text_chars", "max_batch_items", "max_batch_tokens", "max_wait_ms", "max_queued_items", "max_receive_message_bytes", "workers")
    MAX_TEXTS_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    MAX_TEXT_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_ITEMS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUED_ITEMS_FIELD_NUMBER: _ClassVar[int]
    MAX_RECEIVE_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    max_texts_per_request: int
    max_text_chars: int
    max_batch_items: int
    max_batch_tokens: int
    max_wait_ms: float
    max_queued_items: int
    max_receive_message_bytes: int
    workers: int
    def __init__(self, max_texts_per_request: _Optional[int] = ..., max_text_chars: _Optional[int] = ..., max_batch_items: _Optional[int] = ..., max_batch_tokens: _Optional[int] = ..., max_wait_ms: _Optional[float] = ..., max_queued_items: _Optional[int] = ..., max_receive_message_bytes: _Optional[int] = ..., workers: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "dim", "max_tokens", "matryoshka_dims", "parameters", "architecture", "metrics", "sha256", "limits", "encodings", "supports_explain", "models", "is_default", "is_name_default")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MATRYOSHKA_DIMS_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    ENCODINGS_FIELD_NUMBER: _ClassVar[int]
    SUPPORTS_EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    IS_NAME_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    dim: int
    max_tokens: int
    matryoshka_dims: _containers.RepeatedScalarFieldContainer[int]
    parameters: int
    architecture: str
    metrics: _containers.ScalarMap[str, float]
    sha256: str
    limits: ServerLimits
    encodings: _containers.RepeatedScalarFieldContainer[Encoding]
    supports_explain: bool
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    is_default: bool
    is_name_default: bool
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., dim: _Optional[int] = ..., max_tokens: _Optional[int] = ..., matryoshka_dims: _Optional[_Iterable[int]] = ..., parameters: _Optional[int] = ..., architecture: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., sha256: _Optional[str] = ..., limits: _Optional[_Union[ServerLimits, _Mapping]] = ..., encodings: _Optional[_Iterable[_Union[Encoding, str]]] = ..., supports_explain: _Optional[bool] = ..., models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., is_default: _Optional[bool] = ..., is_name_default: _Optional[bool] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("query", "candidate", "top_pairs", "truncate", "dimensions", "request_id", "model")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    TOP_PAIRS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    query: str
    candidate: str
    top_pairs: int
    truncate: bool
    dimensions: int
    request_id: str
    model: str
    def __init__(self, query: _Optional[str] = ..., candidate: _Optional[str] = ..., top_pairs: _Optional[int] = ..., truncate: _Optional[bool] = ..., dimensions: _Optional[int] = ..., request_id: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class TokenAttribution(_message.Message):
    __slots__ = ("text", "char_start", "char_end", "byte_start", "byte_end", "pieces", "contribution", "kind")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CHAR_START_FIELD_NUMBER: _ClassVar[int]
    CHAR_END_FIELD_NUMBER: _ClassVar[int]
    BYTE_START_FIELD_NUMBER: _ClassVar[int]
    BYTE_END_FIELD_NUMBER: _ClassVar[int]
    PIECES_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    text: str
    char_start: int
    char_end: int
    byte_start: int
    byte_end: int
    pieces: _containers.RepeatedScalarFieldContainer[str]
    contribution: float
    kind: AttributionKind
    def __init__(self, text: _Optional[str] = ..., char_start: _Optional[int] = ..., char_end: _Optional[int] = ..., byte_start: _Optional[int] = ..., byte_end: _Optional[int] = ..., pieces: _Optional[_Iterable[str]] = ..., contribution: _Optional[float] = ..., kind: _Optional[_Union[AttributionKind, str]] = ...) -> None: ...

class TextAttribution(_message.Message):
    __slots__ = ("tokens", "token_count", "truncated")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[TokenAttribution]
    token_count: int
    truncated: bool
    def __init__(self, tokens: _Optional[_Iterable[_Union[TokenAttribution, _Mapping]]] = ..., token_count: _Optional[int] = ..., truncated: _Optional[bool] = ...) -> None: ...

class TokenPair(_message.Message):
    __slots__ = ("query_index", "candidate_index", "contribution")
    QUERY_INDEX_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_INDEX_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    query_index: int
    candidate_index: int
    contribution: float
    def __init__(self, query_index: _Optional[int] = ..., candidate_index: _Optional[int] = ..., contribution: _Optional[float] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("request_id", "similarity", "query", "candidate", "top_pairs", "timing", "model", "dim", "model_version", "bundle_sha256")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    TOP_PAIRS_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_SHA256_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    similarity: float
    query: TextAttribution
    candidate: TextAttribution
    top_pairs: _containers.RepeatedCompositeFieldContainer[TokenPair]
    timing: Timing
    model: str
    dim: int
    model_version: str
    bundle_sha256: str
    def __init__(self, request_id: _Optional[str] = ..., similarity: _Optional[float] = ..., query: _Optional[_Union[TextAttribution, _Mapping]] = ..., candidate: _Optional[_Union[TextAttribution, _Mapping]] = ..., top_pairs: _Optional[_Iterable[_Union[TokenPair, _Mapping]]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., model: _Optional[str] = ..., dim: _Optional[int] = ..., model_version: _Optional[str] = ..., bundle_sha256: _Optional[str] = ...) -> None: ...

class ReloadModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadModelsResponse(_message.Message):
    __slots__ = ("added", "removed", "loaded", "errors")
    ADDED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    added: _containers.RepeatedScalarFieldContainer[str]
    removed: _containers.RepeatedScalarFieldContainer[str]
    loaded: _containers.RepeatedScalarFieldContainer[str]
    errors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, added: _Optional[_Iterable[str]] = ..., removed: _Optional[_Iterable[str]] = ..., loaded: _Optional[_Iterable[str]] = ..., errors: _Optional[_Iterable[str]] = ...) -> None: ...
