"""The neuron's one exception tree.

Every error a request can meet is a `NeuronError` subclass carrying its HTTP `status`, OpenAI
error `type` and machine-readable `code`. Handlers never build error bodies themselves: the app's
error handler renders any `NeuronError` as the OpenAI envelope
``{"error": {"message", "type", "code", "param"}}`` and adds ``Retry-After`` when the error is
retryable. Callers choose the subclass; nothing classifies errors by their message text.
"""

from __future__ import annotations

from typing import Any


class NeuronError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "message": self.message,
            "type": self.type,
            "code": self.code,
            "param": self.param,
        }
        error.update(self.extra)
        return {"error": error}

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, round(self.retry_after)))}


class InvalidRequest(NeuronError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class Unauthorized(NeuronError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(NeuronError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class NotFound(NeuronError):
    status = 404
    type = "not_found_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class SourceNotFound(NotFound):
    code = "source_not_found"


class Conflict(NeuronError):
    status = 409
    type = "conflict_error"
    code = "conflict"


class InvalidModelFile(NeuronError):
    """The source resolved to a file that is not a loadable GGUF (bad magic, truncated)."""

    status = 422
    type = "invalid_request_error"
    code = "invalid_model_file"


class RateLimited(NeuronError):
    status = 429
    type = "rate_limit_exceeded"
    code = "rate_limit_exceeded"


class Draining(NeuronError):
    status = 503
    type = "service_unavailable"
    code = "draining"


class ModelUnavailable(NeuronError):
    """The model exists here but cannot serve right now (loading, unloading, failed)."""

    status = 503
    type = "service_unavailable"
    code = "model_unavailable"


class InsufficientMemory(NeuronError):
    status = 507
    type = "insufficient_storage"
    code = "insufficient_memory"


class EngineFailure(NeuronError):
    status = 500
    type = "server_error"
    code = "engine_failure"
