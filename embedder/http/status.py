"""THE error -> HTTP status map of the HTTP front, with the OpenAI error shape.

Every error answer is `{"error": {"message", "type", "param", "code"}}` as OpenAI's API sends it, so
OpenAI clients raise their usual exceptions (BadRequestError, AuthenticationError, NotFoundError,
RateLimitError, ...). The `grpc_code` is what `requests_total{code}` counts, the same names the gRPC front
uses, so dashboards and alerts see both fronts alike. Unexpected errors become 500 with a request id;
the trace goes to the log, never to the caller.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from embedder.errors import (
    DeadlineExceededError,
    InvalidInputError,
    ModelNotFoundError,
    ModelRemovedError,
    NotSupportedError,
    OverloadedError,
    ShuttingDownError,
    UnauthenticatedError,
)

log = logging.getLogger(__name__)


class BodyTooLargeError(Exception):
    """The request body is larger than `max_receive_message_bytes` (413)."""


@dataclass(frozen=True)
class HttpError:
    status: int
    type: str
    code: str | None
    grpc_code: str  # the requests_total{code} label


_MAP: tuple[tuple[type[Exception], HttpError], ...] = (
    (InvalidInputError, HttpError(400, "invalid_request_error", None, "INVALID_ARGUMENT")),
    (NotSupportedError, HttpError(400, "invalid_request_error", "not_supported", "UNIMPLEMENTED")),
    (UnauthenticatedError, HttpError(401, "invalid_request_error", "invalid_api_key", "UNAUTHENTICATED")),
    (ModelNotFoundError, HttpError(404, "invalid_request_error", "model_not_found", "NOT_FOUND")),
    # A pinned version removed by a rollout: still "not found" to an OpenAI client; the message says
    # which versions remain (gRPC: FAILED_PRECONDITION).
    (ModelRemovedError, HttpError(404, "invalid_request_error", "model_not_found", "FAILED_PRECONDITION")),
    (BodyTooLargeError, HttpError(413, "invalid_request_error", "request_too_large", "RESOURCE_EXHAUSTED")),
    (OverloadedError, HttpError(429, "rate_limit_exceeded", "rate_limit_exceeded", "RESOURCE_EXHAUSTED")),
    (ShuttingDownError, HttpError(503, "server_error", "unavailable", "UNAVAILABLE")),
    (DeadlineExceededError, HttpError(504, "server_error", "timeout", "DEADLINE_EXCEEDED")),
)
_INTERNAL = HttpError(500, "server_error", None, "INTERNAL")


def error_for(exc: Exception, request_id: str) -> tuple[HttpError, dict[str, Any]]:
    """(the mapping, the OpenAI-shaped body) for an exception. The only such mapping in the HTTP front."""
    for kind, mapped in _MAP:
        if isinstance(exc, kind):
            return mapped, body(str(exc), mapped, param=getattr(exc, "param", None))
    log.error("internal error, request_id=%s", request_id, exc_info=exc)
    return _INTERNAL, body(f"internal error (request id {request_id})", _INTERNAL)


def body(message: str, mapped: HttpError, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": mapped.type, "param": param, "code": mapped.code}}
