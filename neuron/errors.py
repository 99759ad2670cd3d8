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
    """Base of every error a neuron request can meet, rendered by the app as the OpenAI envelope.

    `status` is the HTTP status and `type`/`code` the envelope's fields (a `code` given when raising
    overrides the class's); `param` names the offending field, `extra` adds fields to the envelope,
    and `retry_after` (seconds) adds a Retry-After header. Mid-stream it is sent as an error event.
    """

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
    """The request cannot be served as sent (400): a malformed body or field, a capability the model
    lacks, messages its chat template refuses, or a JSON schema no grammar can express; `param`
    names the field where one can be named, and some causes carry their own `code`."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class ContextLengthExceeded(InvalidRequest):
    """The prompt does not fit the model's context (400): its tokens leave no room in `n_ctx`,
    an embedding input is longer than `n_ctx`, or the text is too long for any tokenizer to fit."""

    code = "context_length_exceeded"


class Unauthorized(NeuronError):
    """The route needs the neuron's bearer token (`[auth] token` or ``NEURON_TOKEN``) and the
    request did not carry it (401)."""

    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(NeuronError):
    """A model source names a path outside the allow-listed `model_dirs`, once symlinks are
    followed (403)."""

    status = 403
    type = "permission_error"
    code = "forbidden"


class NotFound(NeuronError):
    """Base of the neuron's 404s; raised through `ModelNotFound` and `SourceNotFound`."""

    status = 404
    type = "not_found_error"
    code = "not_found"


class ModelNotFound(NotFound):
    """The model id is not resident on this neuron (404). Cortex polls the node again when it gets
    this for a model it thought was there."""

    code = "model_not_found"


class SourceNotFound(NotFound):
    """A model source resolves to no GGUF (404): no such file under `model_dirs`, a missing split
    part, a repo or file neither on the Hugging Face hub nor in its cache, or a demo model whose
    package is not installed."""

    code = "source_not_found"


class Conflict(NeuronError):
    """The model's current state refuses the call (409); `code` says which: ``model_busy``
    (requests in flight and no force), ``model_loading``, ``model_unloading``, or
    ``model_conflict`` (the id is held from another source or with other settings)."""

    status = 409
    type = "conflict_error"
    code = "conflict"


class InvalidModelFile(NeuronError):
    """The source resolved to a file that is not a loadable GGUF (bad magic, truncated)."""

    status = 422
    type = "invalid_request_error"
    code = "invalid_model_file"


class RateLimited(NeuronError):
    """The model's admission queue is full, or the request waited `max_wait_s` for a slot (429,
    with a Retry-After estimated by the `AdmissionGate`)."""

    status = 429
    type = "rate_limit_exceeded"
    code = "rate_limit_exceeded"


class Draining(NeuronError):
    """The neuron is draining (SIGTERM or SIGINT) and takes no new loads or requests (503, with a
    Retry-After); cortex sends the request to another node."""

    status = 503
    type = "service_unavailable"
    code = "draining"


class ModelUnavailable(NeuronError):
    """The model exists here but cannot serve right now (loading, unloading, failed)."""

    status = 503
    type = "service_unavailable"
    code = "model_unavailable"


class InsufficientMemory(NeuronError):
    """A load would need more host RAM than is available now (507); `extra` carries the plan."""

    status = 507
    type = "insufficient_storage"
    code = "insufficient_memory"


class InsufficientVram(NeuronError):
    """A load asked for at least `min_gpu_layers` on the GPUs and fewer fit in free VRAM now
    (507); `extra` carries the plan."""

    status = 507
    type = "insufficient_storage"
    code = "insufficient_vram"


class EngineFailure(NeuronError):
    """The engine failed under the request (500): llama.cpp's decode returned an error, the engine's
    thread died, or a generation ended without finishing."""

    status = 500
    type = "server_error"
    code = "engine_failure"
