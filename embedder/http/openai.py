"""OpenAI's embeddings wire format <-> the core: the request body in, the response body out.

Request (`POST /v1/embeddings`): `input` (a string or a list of strings; token-id arrays are refused),
`model`, `dimensions` (Matryoshka prefix), `encoding_format` (`float` or `base64`: little-endian float32
bytes), `user` (ignored). Embeddings are L2-normalised, as OpenAI's are. Response: `{"object": "list",
"data": [{"object": "embedding", "index", "embedding"}], "model", "usage": {"prompt_tokens",
"total_tokens"}}`, where tokens are the model's own, special tokens included (as gRPC's token_counts).
One extension to OpenAI's body: `cache` (boolean, default true), false to bypass the embedding cache as
gRPC's `EmbedRequest.cache` does.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedder.core.engine import EmbedOptions, EmbedResult
from embedder.errors import InvalidInputError

ENCODING_FORMATS = ("float", "base64")
_KNOWN = {"input", "model", "dimensions", "encoding_format", "user", "cache"}


class ParamError(InvalidInputError):
    """A bad request parameter; `param` is its name in OpenAI's API (the error body's `param`)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


@dataclass(frozen=True)
class EmbeddingsRequest:
    texts: list[str]
    model: str
    options: EmbedOptions
    encoding_format: str


def parse_request(raw: Any) -> EmbeddingsRequest:
    """Check a decoded JSON body; raise `ParamError` naming the parameter and what it must be."""
    if not isinstance(raw, dict):
        raise ParamError("body", "must be a JSON object")
    unknown = sorted(set(raw) - _KNOWN)
    if unknown:
        raise ParamError(unknown[0], f"unknown parameter; this endpoint takes {sorted(_KNOWN)}")
    model = raw.get("model", "")
    if not isinstance(model, str):
        raise ParamError("model", "must be a string")
    encoding_format = raw.get("encoding_format") or "float"
    if encoding_format not in ENCODING_FORMATS:
        raise ParamError("encoding_format", f"{encoding_format!r} is not one of {list(ENCODING_FORMATS)}")
    dimensions = raw.get("dimensions") or 0
    if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 0:
        raise ParamError("dimensions", f"must be a positive integer, got {raw.get('dimensions')!r}")
    cache = raw.get("cache", True)
    if not isinstance(cache, bool):
        raise ParamError("cache", f"must be true or false, got {cache!r}")
    options = EmbedOptions(normalize=True, dimensions=dimensions, truncate=True, cache=cache)
    return EmbeddingsRequest(_texts(raw.get("input")), model, options, encoding_format)


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        raise ParamError("input", "must be a string or a non-empty list of strings")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            kind = "token ids are not accepted; send text" if _is_tokens(item) else "must be a string"
            raise ParamError(f"input[{i}]", kind)
    return list(value)


def _is_tokens(item: Any) -> bool:
    return isinstance(item, int) or (isinstance(item, list) and all(isinstance(t, int) for t in item))


def in_openai_terms(exc: InvalidInputError) -> InvalidInputError:
    """A core error names the gRPC fields (`texts[1]: ...`); say it in OpenAI's (`input[1]: ...`), with
    the parameter named for the error body's `param`."""
    if isinstance(exc, ParamError):
        return exc
    message = str(exc)
    for core, ours in (("texts", "input"), ("dimensions", "dimensions")):
        if message.startswith(core):
            param, _, rest = (ours + message[len(core) :]).partition(": ")
            return ParamError(param, rest)
    return exc


def response_body(result: EmbedResult, model: str, encoding_format: str) -> dict[str, Any]:
    rows = np.ascontiguousarray(result.embeddings, dtype="<f4")
    if encoding_format == "base64":
        data = [base64.b64encode(row.tobytes()).decode("ascii") for row in rows]
    else:
        data = [row.tolist() for row in rows]
    tokens = sum(result.token_counts)
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data)],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
