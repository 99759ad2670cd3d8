"""Hypothesis strategies for hostile request bodies, per gateway route, in both dialects.

A body is a valid one for its route with one field replaced, several fields replaced, or no body
at all but junk: wrong types for every field, huge and negative numbers, NaN and infinities,
deep nesting, huge integer literals, lone surrogates, NUL, empty and enormous strings, invalid
JSON schemas in tools and output formats, raw bytes. `encode` turns one into the bytes a client
sends; `Raw` pieces are spliced in as literal JSON text (what `json.dumps` cannot write).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
MESSAGES = "/v1/messages"
COUNT = "/v1/messages/count_tokens"
RESPONSES = "/v1/responses"
ROUTES = (CHAT, COMPLETIONS, EMBEDDINGS, MESSAGES, COUNT, RESPONSES)
USER_HI = [{"role": "user", "content": "hi"}]
VALID: dict[str, dict[str, Any]] = {
    CHAT: {"model": "stub", "messages": USER_HI},
    COMPLETIONS: {"model": "stub", "prompt": "hi"},
    EMBEDDINGS: {"model": "stub", "input": "hi"},
    MESSAGES: {"model": "stub", "max_tokens": 8, "messages": USER_HI},
    COUNT: {"model": "stub", "messages": USER_HI},
    RESPONSES: {"model": "stub", "input": "hi"},
}
# Just over the fuzz gateway's max_body_mb = 1: always a 413.
ENORMOUS = "x" * (1024 * 1024 + 1)


@dataclass(frozen=True)
class Raw:
    """Literal JSON text to splice into a body where a value goes."""

    text: str


def encode(body: Any) -> bytes:
    if isinstance(body, bytes):
        return body
    raws: list[str] = []

    def swap(value: Any) -> Any:
        if isinstance(value, Raw):
            raws.append(value.text)
            return f"@@RAW{len(raws) - 1}@@"
        if isinstance(value, dict):
            return {key: swap(item) for key, item in value.items()}
        if isinstance(value, list):
            return [swap(item) for item in value]
        return value

    text = json.dumps(swap(body))  # ensure_ascii: a lone surrogate is sent as its \uXXXX escape
    for index, raw in enumerate(raws):
        text = text.replace(f'"@@RAW{index}@@"', raw)
    return text.encode()


ODD_TEXT = st.sampled_from(
    ["", " ", "\x00", "nul\x00byte", "\ufeff", "é", "🙂", "\u202e", "\ud800", "a\udfffb", "\udbff"]
)
PLAIN_TEXT = st.text(max_size=24)
TEXT = st.one_of(PLAIN_TEXT, PLAIN_TEXT, ODD_TEXT)
HUGE_TEXT = st.sampled_from(["y" * 70_000, ENORMOUS])  # over n_ctx × 32 bytes; over the body cap
NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 1, 2**31, 2**63, 2**64, 10**30, -(10**30)]),
    st.floats(allow_nan=True, allow_infinity=True),  # NaN / Infinity literals
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
RAW = st.sampled_from(
    [
        "[" * 100 + "]" * 100,
        "[" * 10_000 + "]" * 10_000,
        '{"a":' * 80 + "1" + "}" * 80,
        "9" * 65,
        "9" * 4301,
        "-" + "9" * 5000,
        "1e999",
        "-1e999",
        "NaN",
        "-Infinity",
        '"\\ud800"',
        '"\\udfff\\ud800"',
        '"\\u0000"',
        '"\\x41"',
        "tru",
        '"unterminated',
    ]
).map(Raw)
HOSTILE = st.one_of(SCALARS, VALUES, RAW, HUGE_TEXT)

SCHEMA_KEYS = st.sampled_from(
    [
        "type",
        "enum",
        "anyOf",
        "oneOf",
        "allOf",
        "properties",
        "required",
        "items",
        "not",
        "additionalProperties",
        "minItems",
        "maxLength",
        "pattern",
        "$ref",
        "const",
        "$defs",
    ]
)
SCHEMA_LEAVES = st.one_of(
    st.booleans(),
    st.just({}),
    st.just({"enum": []}),
    st.just({"anyOf": []}),
    st.just({"type": []}),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["string", "integer", "object", "array", "null", "bogus"])}
    ),
)
SCHEMAS = st.recursive(
    SCHEMA_LEAVES,
    lambda inner: st.dictionaries(
        SCHEMA_KEYS,
        st.one_of(inner, st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=2)),
        max_size=3,
    ),
    max_leaves=8,
)


def _maybe(strategy: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly the plausible shape, sometimes anything hostile."""
    return st.one_of(strategy, strategy, HOSTILE)


def _object(required: dict[str, Any], optional: dict[str, Any]) -> st.SearchStrategy:
    return st.fixed_dictionaries(
        {k: _maybe(v) for k, v in required.items()},
        optional={k: _maybe(v) for k, v in optional.items()},
    )


OPENAI_PART = _object(
    {"type": st.sampled_from(["text", "image_url", "input_audio", "video"])},
    {"text": TEXT, "image_url": st.one_of(TEXT, _object({"url": TEXT}, {}))},
)
OPENAI_MESSAGE = _object(
    {
        "role": st.sampled_from(["system", "user", "assistant", "tool", "robot"]),
        "content": st.one_of(TEXT, st.lists(OPENAI_PART, max_size=2)),
    },
    {
        "name": TEXT,
        "tool_call_id": TEXT,
        "tool_calls": st.lists(_object({"function": _object({"name": TEXT}, {})}, {}), max_size=2),
    },
)
OPENAI_TOOL = _object(
    {"type": st.just("function"), "function": _object({"name": TEXT}, {"parameters": SCHEMAS})},
    {},
)
ANTHROPIC_BLOCK = _object(
    {"type": st.sampled_from(["text", "image", "tool_use", "tool_result", "thinking", "x"])},
    {
        "text": TEXT,
        "id": TEXT,
        "name": TEXT,
        "input": VALUES,
        "tool_use_id": TEXT,
        "content": st.one_of(TEXT, st.lists(VALUES, max_size=2)),
        "is_error": st.booleans(),
        "source": _object(
            {"type": st.sampled_from(["base64", "url"])},
            {"media_type": st.sampled_from(["image/png", "text/html"]), "data": TEXT, "url": TEXT},
        ),
    },
)
ANTHROPIC_MESSAGE = _object(
    {
        "role": st.sampled_from(["user", "assistant", "system"]),
        "content": st.one_of(TEXT, st.lists(ANTHROPIC_BLOCK, max_size=3)),
    },
    {},
)
ANTHROPIC_TOOL = _object({"name": TEXT, "input_schema": SCHEMAS}, {"description": TEXT})
RESPONSES_PART = _object(
    {"type": st.sampled_from(["input_text", "output_text", "input_image", "refusal", "x"])},
    {"text": TEXT, "image_url": TEXT, "refusal": TEXT},
)
RESPONSES_ITEM = _object(
    {
        "type": st.sampled_from(
            ["message", "function_call", "function_call_output", "reasoning", "item_reference"]
        )
    },
    {
        "role": st.sampled_from(["user", "assistant", "system", "developer", "tool"]),
        "content": st.one_of(TEXT, st.lists(RESPONSES_PART, max_size=2)),
        "call_id": TEXT,
        "name": TEXT,
        "arguments": TEXT,
        "output": st.one_of(TEXT, st.lists(VALUES, max_size=2)),
    },
)
RESPONSES_TOOL = _object(
    {"type": st.sampled_from(["function", "function", "web_search", "custom"]), "name": TEXT},
    {"parameters": SCHEMAS, "description": TEXT, "strict": st.booleans()},
)

COMMON = {
    "model": st.sampled_from(["stub", "stub", "stub-alias", "cold", "nope"]),
    "stream": st.booleans(),
    "temperature": NUMBERS,
    "top_p": NUMBERS,
    "top_k": NUMBERS,
    "metadata": VALUES,
}
OPENAI_COMMON = {
    **COMMON,
    "max_tokens": NUMBERS,
    "n": NUMBERS,
    "seed": NUMBERS,
    "stop": st.one_of(TEXT, st.lists(TEXT, max_size=3)),
    "stream_options": _object({}, {"include_usage": st.booleans()}),
    "logit_bias": st.dictionaries(TEXT, NUMBERS, max_size=2),
    "user": TEXT,
}
PROMPTS = st.one_of(
    TEXT,
    st.lists(TEXT, max_size=3),
    st.lists(st.integers(-5, 2**33), max_size=4),
    st.lists(st.lists(st.integers(-5, 2**33), max_size=3), max_size=2),
)
FIELDS: dict[str, dict[str, st.SearchStrategy]] = {
    CHAT: {
        **OPENAI_COMMON,
        "messages": st.lists(OPENAI_MESSAGE, max_size=3),
        "tools": st.lists(OPENAI_TOOL, max_size=2),
        "tool_choice": st.one_of(
            st.sampled_from(["auto", "none", "required", "x"]),
            _object({"type": st.just("function"), "function": _object({"name": TEXT}, {})}, {}),
        ),
        "response_format": _object(
            {"type": st.sampled_from(["text", "json_object", "json_schema", "yaml"])},
            {"json_schema": _object({"name": TEXT, "schema": SCHEMAS}, {}), "schema": SCHEMAS},
        ),
        "logprobs": st.booleans(),
        "top_logprobs": NUMBERS,
    },
    COMPLETIONS: {**OPENAI_COMMON, "prompt": PROMPTS, "echo": st.booleans(), "suffix": TEXT},
    EMBEDDINGS: {
        **OPENAI_COMMON,
        "input": PROMPTS,
        "encoding_format": st.sampled_from(["float", "base64", "hex"]),
        "dimensions": NUMBERS,
    },
    MESSAGES: {
        **COMMON,
        "max_tokens": NUMBERS,
        "messages": st.lists(ANTHROPIC_MESSAGE, max_size=3),
        "system": st.one_of(TEXT, st.lists(ANTHROPIC_BLOCK, max_size=2)),
        "tools": st.lists(ANTHROPIC_TOOL, max_size=2),
        "tool_choice": _object(
            {"type": st.sampled_from(["auto", "any", "tool", "none", "x"])},
            {"name": TEXT, "disable_parallel_tool_use": st.booleans()},
        ),
        "stop_sequences": st.lists(TEXT, max_size=3),
        "output_config": _object(
            {"format": _object({"type": st.just("json_schema"), "schema": SCHEMAS}, {})}, {}
        ),
    },
}
FIELDS[RESPONSES] = {
    **COMMON,
    "input": st.one_of(TEXT, st.lists(RESPONSES_ITEM, max_size=3)),
    "instructions": TEXT,
    "tools": st.lists(RESPONSES_TOOL, max_size=2),
    "tool_choice": st.one_of(
        st.sampled_from(["auto", "none", "required", "x"]),
        _object({"type": st.sampled_from(["function", "web_search"])}, {"name": TEXT}),
    ),
    "max_output_tokens": NUMBERS,
    "text": _object(
        {},
        {
            "format": _object(
                {"type": st.sampled_from(["text", "json_schema", "json_object", "xml"])},
                {"schema": SCHEMAS, "name": TEXT, "strict": st.booleans()},
            )
        },
    ),
    "reasoning": VALUES,
    "store": st.booleans(),
    "previous_response_id": TEXT,
    "prompt_cache_key": TEXT,
    "user": TEXT,
    "parallel_tool_calls": st.booleans(),
    "background": st.booleans(),
}
FIELDS[COUNT] = {k: v for k, v in FIELDS[MESSAGES].items() if k not in ("max_tokens", "stream")}

JUNK = st.one_of(
    st.binary(max_size=64),
    VALUES,
    RAW,
    st.just({**VALID[CHAT], "padding": ENORMOUS}),
)


def bodies(route: str) -> st.SearchStrategy:
    """Bodies for `route`: one field changed, several changed, or junk."""
    fields = FIELDS[route]
    one = st.sampled_from(sorted(fields)).flatmap(
        lambda key: _maybe(fields[key]).map(lambda value: {**VALID[route], key: value})
    )
    several = st.fixed_dictionaries(
        {}, optional={key: _maybe(strategy) for key, strategy in fields.items()}
    ).map(lambda changes: {**VALID[route], **changes})
    return st.one_of(one, one, several, JUNK)


CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/json",
        "application/json; charset=latin-1",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=zzz",
        "application/octet-stream",
        "",
    ]
)
