"""Hostile and malformed bodies through a real gateway in front of a fake neuron (the stub).

Every body named in issue 13 as its own regression test: each used to be a 500 (or reached the
neuron) and must now be a 400 (413 for a body over `max_body_mb`) in the route's dialect, with
`param` naming the field where one can be named. Valid bodies must still pass.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import CortexProcess
from tests.integration.stub_gateway import stub_gateway

pytestmark = pytest.mark.slow  # real gateways over stub neurons

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
MESSAGES = "/v1/messages"
COUNT = "/v1/messages/count_tokens"
OPENAI_ROUTES = (CHAT, COMPLETIONS, EMBEDDINGS)
ANTHROPIC_ROUTES = (MESSAGES, COUNT)
USER_HI = [{"role": "user", "content": "hi"}]
VALID = {
    CHAT: {"model": "stub", "messages": USER_HI},
    COMPLETIONS: {"model": "stub", "prompt": "hi"},
    EMBEDDINGS: {"model": "stub", "input": "hi"},
    MESSAGES: {"model": "stub", "max_tokens": 8, "messages": USER_HI},
    COUNT: {"model": "stub", "messages": USER_HI},
}
EMPTY_SCHEMAS = (
    {"anyOf": []},
    {"enum": []},
    {"type": []},
    {"type": "object", "properties": {"x": {"enum": []}}},
)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CortexProcess]:
    with stub_gateway(tmp_path_factory.mktemp("validation"), gateway_toml="max_body_mb = 1\n") as g:
        yield g


def post(gateway: CortexProcess, path: str, body: object) -> httpx.Response:
    content = body if isinstance(body, bytes | str) else json.dumps(body)
    headers = {"content-type": "application/json"}
    return httpx.post(gateway.url + path, content=content, headers=headers, timeout=10)


def refused(response: httpx.Response, path: str, status: int = 400) -> dict:
    """The error of a refused request, checked for its status and the route's envelope."""
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text
    body = response.json()
    if path.startswith(MESSAGES):
        assert body["type"] == "error" and set(body["error"]) == {"type", "message", "src"}
        return body["error"]
    assert set(body["error"]) == {"message", "type", "code", "param", "src"}
    return body["error"]


def raw_body(path: str, field: str, literal: str) -> str:
    """A valid body for `path` with `field` set to a raw JSON literal."""
    return json.dumps({**VALID[path], field: "@@"}).replace('"@@"', literal)


@pytest.mark.parametrize("path", OPENAI_ROUTES + ANTHROPIC_ROUTES)
def test_valid_bodies_pass(gateway: CortexProcess, path: str) -> None:
    assert post(gateway, path, VALID[path]).status_code == 200


@pytest.mark.parametrize("path", OPENAI_ROUTES + ANTHROPIC_ROUTES)
def test_json_nested_ten_thousand_deep(gateway: CortexProcess, path: str) -> None:
    error = refused(
        post(gateway, path, raw_body(path, "metadata", "[" * 10000 + "]" * 10000)), path
    )
    assert "nests more than" in error["message"]


@pytest.mark.parametrize("path", OPENAI_ROUTES + ANTHROPIC_ROUTES)
def test_integer_literal_of_4301_digits(gateway: CortexProcess, path: str) -> None:
    error = refused(post(gateway, path, raw_body(path, "max_tokens", "9" * 4301)), path)
    assert "integer literal" in error["message"]


@pytest.mark.parametrize("path", OPENAI_ROUTES + ANTHROPIC_ROUTES)
@pytest.mark.parametrize("literal", ["NaN", "Infinity", "1e999"])
def test_non_finite_numbers(gateway: CortexProcess, path: str, literal: str) -> None:
    refused(post(gateway, path, raw_body(path, "temperature", literal)), path)


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
@pytest.mark.parametrize("options", [[], "usage", 1, True])
def test_stream_with_non_object_stream_options(
    gateway: CortexProcess, path: str, options: object
) -> None:
    body = {**VALID[path], "stream": True, "stream_options": options}
    assert refused(post(gateway, path, body), path)["param"] == "stream_options"


# "@S@" becomes a lone surrogate as a JSON escape (\ud800 and friends), as a client sends it.
LONE_SURROGATES = [
    (CHAT, {"messages": [{"role": "user", "content": "hi @S@"}]}, "messages[0].content"),
    (
        CHAT,
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "@S@"}]}]},
        "messages[0].content[0].text",
    ),
    (
        CHAT,
        {"tools": [{"type": "function", "function": {"name": "f@S@"}}]},
        "tools[0].function.name",
    ),
    (CHAT, {"x@S@": 1}, None),
    (CHAT, {"model": "stub@S@"}, "model"),
    (COMPLETIONS, {"prompt": "@S@"}, "prompt"),
    (COMPLETIONS, {"prompt": ["ok", "@S@"]}, "prompt[1]"),
    (EMBEDDINGS, {"input": "a@S@b"}, "input"),
    (MESSAGES, {"messages": [{"role": "user", "content": "@S@"}]}, None),
    (MESSAGES, {"system": "@S@"}, None),
    (COUNT, {"messages": [{"role": "user", "content": [{"type": "text", "text": "@S@"}]}]}, None),
]


@pytest.mark.parametrize("surrogate", ["\\ud800", "\\udfff", "\\udbff"])
@pytest.mark.parametrize(("path", "change", "param"), LONE_SURROGATES)
def test_lone_surrogates_anywhere(
    gateway: CortexProcess, path: str, change: dict, param: str | None, surrogate: str
) -> None:
    body = json.dumps({**VALID[path], **change}).replace("@S@", surrogate)
    error = refused(post(gateway, path, body), path)
    assert "surrogate" in error["message"]
    if not path.startswith(MESSAGES):
        assert error["param"] == param


@pytest.mark.parametrize("path", OPENAI_ROUTES + ANTHROPIC_ROUTES)
def test_nul_in_a_string(gateway: CortexProcess, path: str) -> None:
    body = json.dumps(VALID[path]).replace('"hi"', '"h\\u0000i"')
    assert "NUL" in refused(post(gateway, path, body), path)["message"]


@pytest.mark.parametrize(
    "body",
    [b"\xff\xfe{}", b"", b"null", b"[]", b'"text"', b"{", b'{"model": "stub",}', b"\x00"],
    ids=["bad-utf8", "empty", "null", "array", "string", "truncated", "trailing-comma", "nul"],
)
@pytest.mark.parametrize("path", OPENAI_ROUTES + ANTHROPIC_ROUTES)
def test_not_a_json_object(gateway: CortexProcess, path: str, body: bytes) -> None:
    refused(post(gateway, path, body), path)


WRONG_TYPES = [
    (CHAT, {"model": 5}, "model"),
    (CHAT, {"model": "x" * 300}, "model"),
    (CHAT, {"messages": "hi"}, "messages"),
    (CHAT, {"messages": []}, "messages"),
    (CHAT, {"messages": [{"role": 1, "content": "hi"}]}, "messages[0].role"),
    (CHAT, {"messages": [{"role": ["user"], "content": "hi"}]}, "messages[0].role"),
    (CHAT, {"messages": [{"role": "user", "content": 7}]}, "messages[0].content"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0].text"),  # noqa: E501
    (CHAT, {"max_tokens": "10"}, "max_tokens"),
    (CHAT, {"max_tokens": 0}, "max_tokens"),
    (CHAT, {"max_tokens": -5}, "max_tokens"),
    (CHAT, {"max_tokens": 10**30}, "max_tokens"),
    (CHAT, {"temperature": True}, "temperature"),
    (CHAT, {"temperature": -1}, "temperature"),
    (CHAT, {"top_p": 1e300}, "top_p"),
    (CHAT, {"n": 10**6}, "n"),
    (CHAT, {"seed": 2**70}, "seed"),
    (CHAT, {"stream": "yes"}, "stream"),
    (CHAT, {"stop": [1, 2]}, "stop"),
    (CHAT, {"logit_bias": {"1": "x"}}, "logit_bias"),
    (CHAT, {"tools": {"type": "function"}}, "tools"),
    (CHAT, {"tools": [{"type": "function", "function": {"name": ""}}]}, "tools[0].function.name"),
    (CHAT, {"tools": [{"function": {"name": "f", "parameters": 1}}]}, "tools[0].function.parameters"),  # noqa: E501
    (CHAT, {"tool_choice": "sometimes"}, "tool_choice"),
    (CHAT, {"tool_choice": {"function": {"name": "nope"}}}, "tool_choice.function.name"),
    (CHAT, {"response_format": {"type": "yaml"}}, "response_format"),
    (CHAT, {"response_format": {"type": "json_schema", "json_schema": 1}}, "response_format.json_schema"),  # noqa: E501
    (COMPLETIONS, {"prompt": ""}, "prompt"),
    (COMPLETIONS, {"prompt": []}, "prompt"),
    (COMPLETIONS, {"prompt": [[]]}, "prompt"),
    (COMPLETIONS, {"prompt": [1, -2]}, "prompt"),
    (COMPLETIONS, {"prompt": {"text": "hi"}}, "prompt"),
    (COMPLETIONS, {"logprobs": 100}, "logprobs"),
    (EMBEDDINGS, {"input": None}, "input"),
    (EMBEDDINGS, {"input": [""]}, "input"),
    (EMBEDDINGS, {"encoding_format": "hex"}, "encoding_format"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "change", "param"), WRONG_TYPES)
def test_wrong_types_name_the_param(
    gateway: CortexProcess, path: str, change: dict, param: str
) -> None:
    assert refused(post(gateway, path, {**VALID[path], **change}), path)["param"] == param


@pytest.mark.parametrize(
    "change",
    [
        {"max_tokens": "8"},
        {"max_tokens": 0},
        {"messages": "hi"},
        {"messages": [{"role": "robot", "content": "hi"}]},
        {"model": ""},
        {"temperature": 5},
        {"tools": [{"name": "f"}]},
        {"tool_choice": {"type": "tool", "name": "missing"}},
    ],
)
def test_anthropic_wrong_types(gateway: CortexProcess, change: dict) -> None:
    error = refused(post(gateway, MESSAGES, {**VALID[MESSAGES], **change}), MESSAGES)
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("schema", EMPTY_SCHEMAS, ids=lambda s: json.dumps(s))
def test_schemas_with_an_empty_alternative(gateway: CortexProcess, schema: dict) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    for body, param in (
        ({"tools": [tool], "tool_choice": "required"}, "tools[0].function.parameters"),
        ({"tools": [tool]}, "tools[0].function.parameters"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": schema}}},
            "response_format.json_schema.schema",
        ),
    ):
        error = refused(post(gateway, CHAT, {**VALID[CHAT], **body}), CHAT)
        assert error["param"].startswith(param) and error["code"] == "invalid_schema"
    anthropic_tool = {"name": "f", "input_schema": schema}
    for body in (
        {"tools": [anthropic_tool], "tool_choice": {"type": "tool", "name": "f"}},
        {"output_config": {"format": {"type": "json_schema", "schema": schema}}},
    ):
        for path in ANTHROPIC_ROUTES:
            refused(post(gateway, path, {**VALID[path], **body}), path)


@pytest.mark.parametrize("path", OPENAI_ROUTES + ANTHROPIC_ROUTES)
def test_body_over_max_body_mb_is_413_in_the_dialect(gateway: CortexProcess, path: str) -> None:
    body = json.dumps({**VALID[path], "padding": "x" * (1024 * 1024)})
    error = refused(post(gateway, path, body), path, status=413)
    assert error.get("code", "request_too_large") == "request_too_large"
    if path.startswith(MESSAGES):
        assert error["type"] == "request_too_large"
    assert post(gateway, path, VALID[path]).status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (CHAT, {"messages": [{"role": "user", "content": "a" * (512 * 32 + 1)}]}, "messages"),
        (COMPLETIONS, {"prompt": "ü" * (512 * 16 + 1)}, "prompt"),
        (COMPLETIONS, {"prompt": list(range(513))}, "prompt"),
        (EMBEDDINGS, {"input": ["short", "a" * (512 * 32 + 1)]}, "input"),
        (MESSAGES, {"messages": [{"role": "user", "content": "a" * (512 * 32 + 1)}]}, None),
    ],
)
def test_prompt_that_cannot_fit_n_ctx_is_refused_before_any_cold_load(
    gateway: CortexProcess, path: str, body: dict, param: str | None
) -> None:
    response = post(gateway, path, {**VALID[path], **body, "model": "cold"})
    error = refused(response, path)
    if path.startswith(MESSAGES):
        assert "context" in error["message"]
    else:
        assert (error["code"], error["param"]) == ("context_length_exceeded", param)
    fleet = gateway.fleet()
    assert not [e for e in fleet["events"] if e.get("model") == "cold"]
    assert fleet["loading"] == []


def test_a_prompt_just_under_the_floor_is_left_to_the_neuron(gateway: CortexProcess) -> None:
    # "stub" has n_ctx 2048: exactly 2048 × 32 bytes may still fit some tokenizer.
    body = {"model": "stub", "prompt": "a" * (2048 * 32)}
    assert post(gateway, COMPLETIONS, body).status_code == 200
    body["prompt"] += "a"
    error = refused(post(gateway, COMPLETIONS, body), COMPLETIONS)
    assert error["code"] == "context_length_exceeded"


def test_neuron_token_is_sent_on_inference_too(tmp_path: Path) -> None:
    with stub_gateway(
        tmp_path, stub_args=("--token", "neuron-secret"), tokens={"stub": "neuron-secret"}
    ) as gateway:
        for path in OPENAI_ROUTES + ANTHROPIC_ROUTES:
            assert post(gateway, path, VALID[path]).status_code == 200, path
            stream = post(gateway, path, {**VALID[path], "stream": True})
            assert stream.status_code == 200 and "error" not in stream.text, path


def test_a_ten_mib_prompt_is_413_under_the_default_cap(tmp_path: Path) -> None:
    with stub_gateway(tmp_path) as gateway:  # max_body_mb left at its default
        prompt = "a" * (10 * 1024 * 1024)
        for path, body in ((COMPLETIONS, {"prompt": prompt}), (MESSAGES, {"system": prompt})):
            error = refused(post(gateway, path, {**VALID[path], **body}), path, status=413)
            assert "8 MiB" in error["message"]
        assert post(gateway, CHAT, VALID[CHAT]).status_code == 200
