"""What both directions of the Anthropic ⇄ OpenAI translation share.

The `Event` shape (SSE event name, data), `AnthropicRequestError` and the Anthropic error body
and error types, and the validation primitives request translation is built on (`_fail`,
`_object`, `_string`, `_number`; private to the package, used by `turns` and `request`).

Invariants:
* Pure: no I/O, no clock, no logging, no randomness.
* `_fail` is how request translation refuses a body: it raises `AnthropicRequestError` (and
  nothing else), whose message names the field the way Anthropic does
  (``messages.1.content.0.tool_use_id: ...``). The primitives never raise KeyError/TypeError.
* `_number` rejects bools and NaN; `error_type_from_openai` always returns an Anthropic error
  type (``api_error`` when it knows no better).
"""

from __future__ import annotations

from typing import Any, NoReturn

Event = tuple[str, dict[str, Any]]

_ERROR_TYPES = {
    "invalid_request_error": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "not_found_error": "not_found_error",
    "rate_limit_exceeded": "rate_limit_error",
    "rate_limit_error": "rate_limit_error",
    "service_unavailable": "overloaded_error",
    "overloaded_error": "overloaded_error",
}


class AnthropicRequestError(Exception):
    """A request body Anthropic's API would refuse; rendered as a 400 `invalid_request_error`."""

    type: str = "invalid_request_error"
    status: int = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def ping() -> Event:
    return ("ping", {"type": "ping"})


def error_body(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message}}


def error_type_from_openai(openai_type: Any, code: Any = None) -> str:
    """The Anthropic error type for an OpenAI-style error `type` (or `code`); else api_error."""
    for key in (openai_type, code):
        if isinstance(key, str) and key in _ERROR_TYPES:
            return _ERROR_TYPES[key]
    return "api_error"


# -- request validation primitives (shared by `turns` and `request`) --------------------------


def _fail(path: str, problem: str) -> NoReturn:
    raise AnthropicRequestError(f"{path}: {problem}")


def _object(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        _fail(path, "Input should be an object")
    return value


def _string(obj: dict[str, Any], key: str, path: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        _fail(f"{path}.{key}", "Field required (a non-empty string)")
    return value


def _number(
    body: dict[str, Any], key: str, low: float, high: float | None, integer: bool
) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    kinds: tuple[type[int] | type[float], ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        _fail(key, f"Input should be a valid {'integer' if integer else 'number'}")
    if high is None and not low <= value:  # `not (a <= b)` also rejects NaN
        _fail(key, f"Input should be greater than or equal to {low:g}")
    if high is not None and not low <= value <= high:
        _fail(key, f"Input should be between {low:g} and {high:g}")
    return value
