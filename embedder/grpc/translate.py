"""protobuf <-> core: requests into engine calls and options, results into responses.

Everything that knows both the wire messages and the core types is here, so the servicer only routes
calls and the core never sees protobuf. Validation that only the wire can fail (undecodable bytes, a bad
`request_id`, an unknown `encoding`) happens here too; the rest is the engine's.
"""

from __future__ import annotations

import uuid

from embedder.config import ServerConfig
from embedder.core.bundle import Manifest
from embedder.core.engine import EmbeddingEngine, EmbedOptions, EmbedResult
from embedder.errors import InvalidInputError
from embedder.explain.attribution import WORD, TextAttribution
from embedder.explain.explainer import DEFAULT_TOP_PAIRS, ExplainOptions, ExplainResult
from embedder.grpc.encoding import ENCODINGS, pack, timing
from embedder.v1 import embedder_pb2 as pb

# Caller-chosen ids are echoed and logged: keep them short and printable (no log injection).
MAX_REQUEST_ID_CHARS = 128


def request_id_of(request: pb.EmbedRequest | pb.ExplainRequest | None) -> str:
    """The caller's request id if it is usable (short, printable), else a generated one."""
    rid = request.request_id if request is not None else ""
    if 0 < len(rid) <= MAX_REQUEST_ID_CHARS and rid.isprintable():
        return rid
    return uuid.uuid4().hex[:16]


def check_request_id(rid: str) -> None:
    if len(rid) > MAX_REQUEST_ID_CHARS or not rid.isprintable():
        raise InvalidInputError(
            f"request_id: must be at most {MAX_REQUEST_ID_CHARS} printable characters "
            f"(got {len(rid)} characters)"
        )


def embed_request(request: pb.EmbedRequest | None) -> tuple[EmbedOptions, int]:
    """The engine's options and the wire encoding of a request; `InvalidInputError` for what the engine
    cannot see: undecodable bytes (None), a bad request_id, an unknown encoding."""
    if request is None:
        raise InvalidInputError(
            "request: not a valid EmbedRequest (e.g. a text that is not valid UTF-8); "
            "texts must be UTF-8 strings"
        )
    check_request_id(request.request_id)
    if request.encoding not in ENCODINGS:
        raise InvalidInputError(
            f"encoding: unknown value {request.encoding}; use one of {[int(e) for e in ENCODINGS]}"
        )
    options = EmbedOptions(
        normalize=request.normalize if request.HasField("normalize") else True,
        dimensions=request.dimensions,
        truncate=request.truncate if request.HasField("truncate") else True,
        cache=request.cache if request.HasField("cache") else True,
    )
    return options, int(request.encoding)


def embed_response(
    request_id: str, encoding: int, result: EmbedResult, started: float, manifest: Manifest
) -> pb.EmbedResponse:
    """The vectors, and which model version (and bundle) produced them."""
    packed = pack(result.embeddings, encoding)
    count, dim = result.embeddings.shape
    return pb.EmbedResponse(
        request_id=request_id,
        dim=dim,
        count=count,
        encoding=encoding,  # type: ignore[arg-type]
        embeddings=packed.data,
        scales=packed.scales,
        token_counts=result.token_counts,
        total_tokens=sum(result.token_counts),
        timing=timing(result.tokenize_s, result.queue_s, result.inference_s, started),
        model=manifest.name,
        model_version=manifest.version,
        bundle_sha256=manifest.sha256,
    )


def model_info(
    engine: EmbeddingEngine,
    config: ServerConfig,
    supports_explain: bool,
    *,
    is_default: bool = False,
    is_name_default: bool = False,
) -> pb.ModelInfo:
    m = engine.manifest
    limits = pb.ServerLimits(
        max_texts_per_request=config.max_texts_per_request,
        max_text_chars=config.max_text_chars,
        max_batch_items=config.max_batch_items,
        max_batch_tokens=config.max_batch_tokens,
        max_wait_ms=config.max_wait_ms,
        max_queued_items=config.max_queued_items,
        max_receive_message_bytes=config.max_receive_message_bytes,
        workers=engine.workers,
    )
    return pb.ModelInfo(
        name=m.name,
        version=m.version,
        dim=m.dim,
        max_tokens=m.max_tokens,
        matryoshka_dims=m.matryoshka_dims,
        parameters=m.parameters,
        architecture=m.architecture,
        metrics={k: float(v) for k, v in m.metrics.items()},
        sha256=m.sha256,
        limits=limits,
        encodings=list(ENCODINGS),
        supports_explain=supports_explain,
        is_default=is_default,
        is_name_default=is_name_default,
    )


def explain_request(request: pb.ExplainRequest | None) -> pb.ExplainRequest:
    """The request, if decodable and its request_id usable (`InvalidInputError` otherwise)."""
    if request is None:
        raise InvalidInputError("request: not a valid ExplainRequest (e.g. a text that is not valid UTF-8)")
    check_request_id(request.request_id)
    return request


def explain_options(request: pb.ExplainRequest) -> ExplainOptions:
    return ExplainOptions(
        top_pairs=request.top_pairs or DEFAULT_TOP_PAIRS,
        truncate=request.truncate if request.HasField("truncate") else True,
        dimensions=request.dimensions,
    )


def explain_response(
    result: ExplainResult, request_id: str, manifest: Manifest, started: float
) -> pb.ExplainResponse:
    ex = result.explanation
    response = pb.ExplainResponse(
        request_id=request_id,
        similarity=ex.similarity,
        query=_text_proto(ex.query, result.query),
        top_pairs=[
            pb.TokenPair(query_index=i, candidate_index=j, contribution=v) for i, j, v in ex.top_pairs
        ],
        model=manifest.name,
        model_version=manifest.version,
        bundle_sha256=manifest.sha256,
        dim=result.dim,
    )
    if ex.candidate is not None:
        response.candidate.CopyFrom(_text_proto(ex.candidate, result.candidate))
    response.timing.CopyFrom(timing(result.tokenize_s, result.queue_s, result.inference_s, started))
    return response


def _text_proto(attr: TextAttribution, text: str) -> pb.TextAttribution:
    tokens = []
    # UTF-8 byte offsets, counted incrementally (units come in text order): O(len(text)) in all.
    char_at, byte_at = 0, 0
    for unit, value in zip(attr.units, attr.contributions.tolist(), strict=True):
        byte_start = byte_end = 0  # special tokens and the bias have no span: (0, 0) as in chars
        if unit.kind == WORD:
            byte_start = byte_at + len(text[char_at : unit.char_start].encode("utf-8"))
            byte_end = byte_start + len(text[unit.char_start : unit.char_end].encode("utf-8"))
            char_at, byte_at = unit.char_end, byte_end
        tokens.append(
            pb.TokenAttribution(
                text=unit.text,
                char_start=unit.char_start,
                char_end=unit.char_end,
                byte_start=byte_start,
                byte_end=byte_end,
                pieces=unit.pieces,
                contribution=value,
                kind=unit.kind,  # type: ignore[arg-type]
            )
        )
    return pb.TextAttribution(tokens=tokens, token_count=attr.token_count, truncated=attr.truncated)
