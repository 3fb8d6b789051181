"""THE error -> gRPC status map: the one place where our error types become status codes.

Unexpected errors become INTERNAL with a request id; the trace goes to the log, never to the caller.
The servicer, the auth interceptor and stream messages all answer through `status_for`.
"""

from __future__ import annotations

import logging

import grpc

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

_STATUS: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT),
    (OverloadedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (ShuttingDownError, grpc.StatusCode.UNAVAILABLE),
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (NotSupportedError, grpc.StatusCode.UNIMPLEMENTED),
    (ModelNotFoundError, grpc.StatusCode.NOT_FOUND),
    (ModelRemovedError, grpc.StatusCode.FAILED_PRECONDITION),
)


def status_for(exc: Exception, request_id: str) -> tuple[grpc.StatusCode, str]:
    """Map an exception to (status code, message for the caller). The only such mapping in the server."""
    for kind, code in _STATUS:
        if isinstance(exc, kind):
            return code, str(exc)
    log.error("internal error, request_id=%s", request_id, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})"
