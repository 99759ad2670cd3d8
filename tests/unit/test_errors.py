"""cortex.errors: one mapping for every error body, in both dialects, with `src`."""

from __future__ import annotations

import pytest

from cortex.dialects.anthropic import StreamTranslator
from cortex.errors import (
    Conflict,
    CortexError,
    InvalidRequest,
    ModelNotFound,
    NoCapacity,
    OffContract,
    UpstreamError,
)


def neuron_error(status: int, kind: str, code: str) -> UpstreamError:
    return UpstreamError(status, {"error": {"message": "m", "type": kind, "code": code}})


@pytest.mark.parametrize(
    ("error", "anthropic", "src"),
    [
        (InvalidRequest("bad", param="x"), "invalid_request_error", "gateway"),
        (ModelNotFound("no"), "not_found_error", "gateway"),
        (Conflict("busy", code="model_busy"), "invalid_request_error", "gateway"),
        (NoCapacity("full", retry_after=10), "overloaded_error", "gateway"),
        (OffContract("garbage"), "overloaded_error", "gateway"),
        (neuron_error(409, "conflict", "model_busy"), "invalid_request_error", "neuron"),
        (
            neuron_error(507, "insufficient_storage", "insufficient_vram"),
            "overloaded_error",
            "neuron",
        ),
        (neuron_error(500, "server_error", "engine_failure"), "api_error", "neuron"),
    ],
)
def test_one_anthropic_type_before_and_during_a_stream(
    error: CortexError, anthropic: str, src: str
) -> None:
    before = error.anthropic_body()["error"]
    assert (before["type"], before["src"]) == (anthropic, src)
    assert error.openai_body()["error"]["src"] == src
    translator = StreamTranslator(model="m", message_id="msg_1", tool_id=lambda: "t")
    (_kind, during), *_ = [
        e for e in translator.error(error.anthropic_type, error.message) if e[0] == "error"
    ]
    assert during["error"]["type"] == anthropic


@pytest.mark.parametrize(
    ("status", "openai_type", "anthropic"),
    [
        (400, "invalid_request_error", "invalid_request_error"),
        (404, "not_found_error", "not_found_error"),
        (405, "invalid_request_error", "invalid_request_error"),
        (500, "server_error", "api_error"),
    ],
)
def test_errors_without_a_class_render_the_same_way(
    status: int, openai_type: str, anthropic: str
) -> None:
    error = CortexError.for_status(status, "what happened")
    assert error.status == status
    assert error.openai_body() == {
        "error": {
            "message": "what happened",
            "type": openai_type,
            "code": None,
            "param": None,
            "src": "gateway",
        }
    }
    assert error.anthropic_body()["error"]["type"] == anthropic
