"""The gateway's one exception tree, rendered in the dialect of the route that raised it.

A `CortexError` carries `status`, an OpenAI `type` and `code`, optionally `retry_after`, and
`src`: "gateway" for what the gateway decided, "neuron" for what a neuron answered.
`openai_body()` gives ``{"error": {"message", "type", "code", "param", "src"}}``;
`anthropic_body()` gives ``{"type": "error", "error": {"type", "message", "src"}}``. The
Anthropic type is decided once, from the status (`anthropic_type`), whether the error goes out as
an HTTP answer or as an in-stream `error` event. `UpstreamError` keeps a neuron's own status,
envelope and Retry-After so that clients see what the neuron said, not a gateway paraphrase.
Errors that are not `CortexError`s (Sanic's own, a bug) are rendered through `for_status`, so
every error body is built here.
"""

from __future__ import annotations

from typing import Any

_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "api_error",
    507: "overloaded_error",
    529: "overloaded_error",
}


def anthropic_type(status: int) -> str:
    return _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


class CortexError(Exception):
    """Base of every error the gateway answers with, rendered in the dialect of the route.

    `status` is the HTTP status and `type`/`code` the OpenAI envelope's fields (a `code` given when
    raising overrides the class's); `param` names the offending field, and `retry_after` (seconds)
    adds a Retry-After header. Once a stream has begun, the relays send it as an in-stream error.
    """

    status: int = 500
    type: str = "server_error"
    code: str | None = "internal_error"
    src: str = "gateway"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after

    @classmethod
    def for_status(cls, status: int, message: str) -> CortexError:
        """An error of this status that no subclass names (Sanic's own, an unexpected one)."""
        error = cls(message)
        error.status, error.code = status, None
        error.type = (
            "server_error"
            if status >= 500
            else ("not_found_error" if status == 404 else "invalid_request_error")
        )
        return error

    @property
    def anthropic_type(self) -> str:
        """The Anthropic error type, the same before a stream and inside one."""
        return anthropic_type(self.status)

    def openai_body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "code": self.code,
                "param": self.param,
                "src": self.src,
            }
        }

    def anthropic_body(self) -> dict[str, Any]:
        return {
            "type": "error",
            "error": {"type": self.anthropic_type, "message": self.message, "src": self.src},
        }

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, round(self.retry_after)))}


class InvalidRequest(CortexError):
    """The request is wrong as sent, and sending it again unchanged cannot help (400).

    Raised by body decoding and field checks (`cortex.api.validation`, `cortex.dialects`) and by the
    admin routes, with `param` naming the field where one can be named; some causes carry their own
    `code` (``invalid_schema``, ``context_length_exceeded``).
    """

    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class BodyTooLarge(CortexError):
    """The request body is over `[gateway] max_body_mb`."""

    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class Unauthorized(CortexError):
    """No valid key was presented (401): on /v1/ routes when `api_keys` are set, on /admin/ routes
    when `admin_keys` are set. Keys come as ``Authorization: Bearer`` or ``x-api-key``."""

    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(CortexError):
    """An /admin/ route was called by a non-loopback client while no `admin_keys` are set (403)."""

    status = 403
    type = "permission_error"
    code = "forbidden"


class NotFound(CortexError):
    """Something named in the request does not exist (404): raised as is for an unknown neuron
    name in admin actions; unknown models are `ModelNotFound`."""

    status = 404
    type = "not_found_error"
    code = "not_found"


class ModelNotFound(NotFound):
    """The model is unknown to the fleet, larger than any node could ever hold, or not loaded where
    an unload asked for it (404); the code tells it apart from other 404s."""

    code = "model_not_found"


class Conflict(CortexError):
    """A neuron answered a model-management call with 409; `code` is the neuron's own
    (``model_busy``, ``model_loading``, ``model_unloading``, ``model_conflict``, …).

    During a cold load the scheduler waits or re-plans on the first three; otherwise it reaches the
    client as a 409.
    """

    status = 409
    type = "conflict_error"
    code = "conflict"


class NoCapacity(CortexError):
    """No node can take the model now; it may later (503 + Retry-After)."""

    status = 503
    type = "service_unavailable"
    code = "no_capacity"


class NodeUnavailable(CortexError):
    """A neuron could not be reached or broke off (connect error, reset, timeout)."""

    status = 503
    type = "service_unavailable"
    code = "node_unavailable"


class OffContract(NodeUnavailable):
    """A neuron answered something the neuron ⇄ cortex contract does not allow (not JSON, or a
    field missing or of the wrong type): treated as a node that cannot be reached (503)."""

    code = "neuron_off_contract"


class LoadTimeout(CortexError):
    """A request waited longer than `cold_load_timeout_s` for its model's cold load (504, with a
    Retry-After). Only the wait ends: the load itself goes on for the other waiters."""

    status = 504
    type = "timeout_error"
    code = "cold_load_timeout"


class UpstreamTimeout(CortexError):
    """A neuron sent nothing for longer than the first-byte or between-chunks timeout."""

    status = 504
    type = "timeout_error"
    code = "upstream_timeout"


class UpstreamError(CortexError):
    """A neuron answered with an error; its status, body and Retry-After pass through."""

    src = "neuron"

    def __init__(self, status: int, body: Any, retry_after: str | None = None) -> None:
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            error = {"message": str(body)[:500], "type": "server_error", "code": None}
        super().__init__(
            str(error.get("message") or f"neuron answered {status}"),
            param=error.get("param"),
            code=error.get("code"),
            retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None,
        )
        self.status = status
        self.type = str(error.get("type") or "server_error")
        self.upstream = error
