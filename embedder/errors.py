"""Error types raised inside the service. Each maps to one gRPC status code in `embedder/grpc/status.py`."""

from __future__ import annotations


class EmbedderError(Exception):
    """Base class: every error we raise on purpose derives from it."""


class BundleError(EmbedderError):
    """The model bundle is missing, corrupt, or of a format this server does not understand."""


class InvalidInputError(EmbedderError):
    """The request is malformed; the message names the field and the limit (INVALID_ARGUMENT)."""


class OverloadedError(EmbedderError):
    """The batch queue is full; the caller should back off and retry (RESOURCE_EXHAUSTED)."""


class DeadlineExceededError(EmbedderError):
    """The caller's deadline passed before its work reached inference (DEADLINE_EXCEEDED)."""


class UnauthenticatedError(EmbedderError):
    """The call lacks a valid API key (UNAUTHENTICATED)."""


class ShuttingDownError(EmbedderError):
    """The server is draining and accepts no new work (UNAVAILABLE)."""


class NotSupportedError(EmbedderError):
    """The served model cannot do what was asked, e.g. Explain without an explain graph (UNIMPLEMENTED)."""


class InferenceError(EmbedderError):
    """The model failed on a batch; affected calls get INTERNAL with a request id."""


class InferenceTimeoutError(InferenceError):
    """A batch ran past `inference_timeout_s` (stuck worker); affected calls get INTERNAL."""


class ConfigError(EmbedderError):
    """A configuration value is invalid (bad flag, env var, or file)."""


class ModelNotFoundError(EmbedderError):
    """The request names a model or version this server has not loaded; the message lists what is
    loaded (NOT_FOUND)."""


class ModelRemovedError(EmbedderError):
    """The request pins a version that was removed while serving; the message names the versions that
    remain (FAILED_PRECONDITION)."""
