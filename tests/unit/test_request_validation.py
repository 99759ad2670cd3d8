"""The pure request checks: real-world bodies and schemas pass, the prompt-size floor is exact."""

from __future__ import annotations

import pytest

from cortex.api.validation import MAX_DEPTH, decode
from cortex.dialects.openai import MAX_BYTES_PER_TOKEN, check_request, min_prompt_tokens
from cortex.dialects.schema import check_schema
from cortex.errors import InvalidRequest

# Shapes real clients send: Claude Code / MCP tool schemas, OpenAI structured outputs.
REAL_SCHEMAS = [
    {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {
            "command": {"type": "string", "description": "The command to run"},
            "timeout": {"type": "number", "minimum": 0, "maximum": 600000},
            "mode": {"type": "string", "enum": ["a", "b"], "default": "a"},
            "paths": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            "maybe": {"type": ["string", "null"]},
            "either": {"anyOf": [{"type": "integer"}, {"type": "string", "pattern": "^x"}]},
            "nested": {"$ref": "#/$defs/node"},
        },
        "required": ["command"],
        "additionalProperties": False,
        "$defs": {"node": {"type": "object", "properties": {"v": {"const": 1}}}},
    },
    {"type": "object", "properties": {}},
    {},
    {"type": "array", "prefixItems": [{"type": "string"}, True], "items": False},
]
CHAT = {
    "model": "m",
    "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:x"}}]},
    ],
    "tools": [{"type": "function", "function": {"name": "f", "parameters": REAL_SCHEMAS[0]}}],
    "tool_choice": {"type": "function", "function": {"name": "f"}},
    "response_format": {"type": "json_schema", "json_schema": {"name": "o", "schema": {}}},
    "max_tokens": 100,
    "temperature": 0.7,
    "stop": ["\n\n"],
    "seed": 2**63,
    "logprobs": True,
    "top_logprobs": 3,
    "stream": True,
    "stream_options": {"include_usage": True},
    "logit_bias": {"50256": -100},
    "some_engine_extension": {"anything": [1, 2]},
}


@pytest.mark.parametrize("schema", REAL_SCHEMAS)
def test_real_world_schemas_pass(schema: dict) -> None:
    check_schema(schema, "tools[0].function.parameters")


def test_an_ordinary_chat_body_passes() -> None:
    check_request(CHAT, "chat")


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [
        ("completions", {"model": "m", "prompt": ["a", "b"], "logprobs": 5, "echo": True}),
        ("completions", {"model": "m", "prompt": [1, 2, 3]}),
        ("completions", {"model": "m", "prompt": [[1, 2], [3]]}),
        ("embeddings", {"model": "m", "input": ["a", "b"], "encoding_format": "base64"}),
    ],
)
def test_ordinary_completion_and_embedding_bodies_pass(endpoint: str, body: dict) -> None:
    check_request(body, endpoint)


def test_the_deepest_accepted_body_and_one_more() -> None:
    nested = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    decode(f'{{"a": {nested}}}'.encode())
    with pytest.raises(InvalidRequest):
        decode(f'{{"a": [{nested}]}}'.encode())


@pytest.mark.parametrize(
    ("body", "floor"),
    [
        ({"prompt": "a" * MAX_BYTES_PER_TOKEN}, 1),
        ({"prompt": "a" * (MAX_BYTES_PER_TOKEN + 1)}, 2),
        ({"prompt": "é" * MAX_BYTES_PER_TOKEN}, 2),  # bytes, not characters
        ({"prompt": ["a" * 64, "a" * 320]}, 10),  # a batch: its longest item
        ({"prompt": [7] * 40}, 40),  # token ids count as themselves
        ({"input": [[1, 2], [1] * 9]}, 9),
        ({"messages": [{"role": "user", "content": "a" * 64}] * 2}, 4),  # a chat: all of it
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "a" * 96}]}]}, 3),
        ({"messages": [], "tools": [{"type": "function", "function": {"name": "f" * 200}}]}, 8),
    ],
)
def test_min_prompt_tokens(body: dict, floor: int) -> None:
    assert min_prompt_tokens(body) == floor


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (rb'{"a": "x\u0000y"}', "a"),
        (rb'{"a": ["ok", "\uDFFF"]}', "a[1]"),  # upper-case hex: JSON allows it
        (rb'{"a\ud800": 1}', None),  # a key: the body, no param
        (rb'{"m": [{"c": "\u0000"}]}', "m[0].c"),
        (
            b'{"deep": ' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"}",
            "deep" + "[0]" * (MAX_DEPTH - 1),
        ),
    ],
)
def test_bad_text_and_depth_are_refused_where_they_are(raw: bytes, param: str | None) -> None:
    with pytest.raises(InvalidRequest) as refused:
        decode(raw)
    assert refused.value.param == param


@pytest.mark.parametrize(
    "raw",
    [
        rb'{"a": "\\u0000 is how JSON writes NUL"}',  # an escaped backslash, then text
        rb'{"emoji": "\ud83d\ude00", "e": "\u00e9"}',  # a surrogate pair decodes to one point
        '{"text": "caf\u00e9 \U0001f600"}'.encode(),  # raw UTF-8, nothing escaped
    ],
)
def test_escapes_that_decode_to_good_text_pass(raw: bytes) -> None:
    assert isinstance(decode(raw), dict)
