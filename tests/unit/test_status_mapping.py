"""The one error -> gRPC status mapping: our error types keep their message, anything else is INTERNAL."""

from __future__ import annotations

import logging

import grpc
import pytest

from embedder.errors import (
    DeadlineExceededError,
    InferenceError,
    InvalidInputError,
    ModelNotFoundError,
    ModelRemovedError,
    OverloadedError,
    ShuttingDownError,
)
from embedder.grpc.status import status_for


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (InvalidInputError("texts: empty"), grpc.StatusCode.INVALID_ARGUMENT),
        (OverloadedError("queue full"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (DeadlineExceededError("late"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (ShuttingDownError("draining"), grpc.StatusCode.UNAVAILABLE),
        (ModelNotFoundError("model 'x': not loaded"), grpc.StatusCode.NOT_FOUND),
        (ModelRemovedError("m@1 was removed"), grpc.StatusCode.FAILED_PRECONDITION),
    ],
)
def test_known_errors_keep_their_message(exc: Exception, code: grpc.StatusCode) -> None:
    assert status_for(exc, "rid") == (code, str(exc))


@pytest.mark.parametrize(
    "exc", [InferenceError("model said: secret path /x"), RuntimeError("secret path /x")]
)
def test_unexpected_errors_are_internal_with_request_id_and_no_details(
    exc: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        code, message = status_for(exc, "req-42")
    assert code == grpc.StatusCode.INTERNAL
    assert "req-42" in message and "secret" not in message
    assert "req-42" in caplog.text  # the details go to the log, under the same id
