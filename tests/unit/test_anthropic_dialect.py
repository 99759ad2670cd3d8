"""cortex.dialects.anthropic: both directions, table-driven, checked against the anthropic SDK.

Every Anthropic shape produced here is validated with the SDK's own types (`Message`,
`RawMessageStreamEvent`), and streams are also replayed through a real `anthropic.Anthropic`
client over an in-memory transport, so `messages.stream()` accumulates exactly what a client
would. Stream tests assert the full event sequence — names, block indexes, deltas — strictly.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from cortex.dialects.anthropic import (
    TOOL_ERROR_PREFIX,
    AnthropicRequestError,
    StreamTranslator,
    count_tokens_messages,
    count_tokens_request,
    error_body,
    error_type_from_openai,
    parse_tool_input,
    ping,
    to_anthropic_response,
    to_openai_request,
)

try:  # the transport library the installed SDK is built on (anthropic ≥ 2.x: httpx2)
    import httpx2 as sdk_http
except ImportError:  # pragma: no cover - older SDKs
    import httpx as sdk_http  # type: ignore[no-redef]

EVENT = TypeAdapter(RawMessageStreamEvent)


def tool_ids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"gen{next(counter)}"


def body(**fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": "m",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
    }
    out.update(fields)
    return out


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def assistant(content: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content}


WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather for a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    "cache_control": {"type": "ephemeral"},
}
WEATHER_FN = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": WEATHER_TOOL["input_schema"],
    },
}
TIME_TOOL = {"name": "get_time", "input_schema": {"type": "object"}}
TIME_FN = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
PNG = "iVBORw0KGgo="


# -- request mapping -----------------------------------------------------------------------------

REQUEST_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "minimal",
        body(),
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 64,
            "stream": False,
        },
    ),
    (
        "system string",
        body(system="Be brief."),
        {"messages": [{"role": "system", "content": "Be brief."}, user("hi")]},
    ),
    (
        "system blocks: cache_control ignored, joined by a blank line, billing header dropped",
        body(
            system=[
                {
                    "type": "text",
                    "text": "x-anthropic-billing-header: cc_version=2.1.37.0d9; cch=fa690;",
                },
                {"type": "text", "text": "You are Claude Code."},
                {"type": "text", "text": "Rules.", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": ""},
            ]
        ),
        {"messages": [{"role": "system", "content": "You are Claude Code.\n\nRules."}, user("hi")]},
    ),
    ("empty system", body(system=[]), {"messages": [user("hi")]}),
    (
        "text blocks of one turn join; empty ones are skipped",
        body(
            messages=[
                user(
                    [
                        {"type": "text", "text": "<reminder>x</reminder>"},
                        {"type": "text", "text": ""},
                        {"type": "text", "text": "Go", "cache_control": {"type": "ephemeral"}},
                    ]
                )
            ]
        ),
        {"messages": [user("<reminder>x</reminder>\n\nGo")]},
    ),
    (
        "tool_use / tool_result round trip, results in order before the turn's text",
        body(
            messages=[
                user("Weather in Paris and the time?"),
                assistant(
                    [
                        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                        {"type": "text", "text": "Checking."},
                        {
                            "type": "tool_use",
                            "id": "toolu_1",
                            "name": "get_weather",
                            "input": {"city": "Paris"},
                        },
                        {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}},
                    ]
                ),
                user(
                    [
                        {"type": "text", "text": "Here you go."},
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18°C"},
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_2",
                            "content": [
                                {"type": "text", "text": "clock"},
                                {"type": "text", "text": "broken"},
                            ],
                            "is_error": True,
                        },
                    ]
                ),
            ],
            tools=[WEATHER_TOOL, TIME_TOOL],
        ),
        {
            "messages": [
                user("Weather in Paris and the time?"),
                {
                    "role": "assistant",
                    "content": "Checking.",
                    "tool_calls": [
                        {
                            "id": "toolu_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                        },
                        {
                            "id": "toolu_2",
                            "type": "function",
                            "function": {"name": "get_time", "arguments": "{}"},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "toolu_1", "content": "18°C"},
                {
                    "role": "tool",
                    "tool_call_id": "toolu_2",
                    "content": TOOL_ERROR_PREFIX + "clock\n\nbroken",
                },
                user("Here you go."),
            ],
            "tools": [WEATHER_FN, TIME_FN],
        },
    ),
    (
        "assistant turn with only tool_use has null content; tool_result without content",
        body(
            messages=[
                user("t?"),
                assistant([{"type": "tool_use", "id": "a", "name": "get_time", "input": {}}]),
                user([{"type": "tool_result", "tool_use_id": "a"}]),
            ],
            tools=[TIME_TOOL],
        ),
        {
            "messages": [
                user("t?"),
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "a",
                            "type": "function",
                            "function": {"name": "get_time", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "a", "content": ""},
            ]
        },
    ),
    (
        "non-ASCII tool input stays readable",
        body(
            messages=[
                user("x"),
                assistant([{"type": "tool_use", "id": "a", "name": "f", "input": {"q": "été"}}]),
                user([{"type": "tool_result", "tool_use_id": "a", "content": "ok"}]),
            ]
        ),
        {
            "messages": [
                user("x"),
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "a",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"q": "été"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "a", "content": "ok"},
            ]
        },
    ),
    (
        "images: base64 → data URL, url → url, order kept",
        body(
            messages=[
                user(
                    [
                        {"type": "text", "text": "Compare"},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                        },
                        {
                            "type": "image",
                            "source": {"type": "url", "url": "https://example.com/a.jpg"},
                        },
                    ]
                )
            ]
        ),
        {
            "messages": [
                user(
                    [
                        {"type": "text", "text": "Compare"},
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                        {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
                    ]
                )
            ]
        },
    ),
    (
        "an image inside a tool_result moves to the user message after the tool messages",
        body(
            messages=[
                user("look"),
                assistant([{"type": "tool_use", "id": "r", "name": "read", "input": {}}]),
                user(
                    [
                        {
                            "type": "tool_result",
                            "tool_use_id": "r",
                            "content": [
                                {"type": "text", "text": "a.png"},
                                {
                                    "type": "image",
                                    "source": {
                                        "type": "base64",
                                        "media_type": "image/gif",
                                        "data": PNG,
                                    },
                                },
                            ],
                        }
                    ]
                ),
            ]
        ),
        {
            "messages": [
                user("look"),
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "r",
                            "type": "function",
                            "function": {"name": "read", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "r", "content": "a.png"},
                user([{"type": "image_url", "image_url": {"url": f"data:image/gif;base64,{PNG}"}}]),
            ]
        },
    ),
    (
        "consecutive turns of one role merge (as Anthropic does)",
        body(messages=[user("a"), user([{"type": "text", "text": "b"}]), assistant("c")]),
        {"messages": [user("a\n\nb"), {"role": "assistant", "content": "c"}]},
    ),
    (
        "thinking-only assistant turn keeps the turn, empty",
        body(
            messages=[
                user("a"),
                assistant([{"type": "redacted_thinking", "data": "xx"}]),
                user("b"),
            ]
        ),
        {"messages": [user("a"), {"role": "assistant", "content": ""}, user("b")]},
    ),
    (
        "system-role message (SDK SystemMessageParam): a reminder in the user turn, in place",
        body(messages=[user("a"), {"role": "system", "content": [{"type": "text", "text": "s"}]}]),
        {"messages": [user("a\n\n<system-reminder>\ns\n</system-reminder>")]},
    ),
    (
        "mid-conversation system message joins the next user turn; the prefix stays put",
        body(
            system="S",
            messages=[
                user("a"),
                assistant("b"),
                {"role": "system", "content": "now x"},
                user("c"),
            ],
        ),
        {
            "messages": [
                {"role": "system", "content": "S"},
                user("a"),
                {"role": "assistant", "content": "b"},
                user("<system-reminder>\nnow x\n</system-reminder>\n\nc"),
            ]
        },
    ),
    (
        "an empty system message vanishes",
        body(messages=[{"role": "system", "content": []}, user("a")]),
        {"messages": [user("a")]},
    ),
    (
        "sampling, stop sequences and streaming usage",
        body(
            stream=True,
            stop_sequences=["END", "\n\nHuman:"],
            temperature=0.5,
            top_p=0.9,
            top_k=40,
            metadata={"user_id": "u"},
            thinking={"type": "enabled", "budget_tokens": 2048},
            service_tier="auto",
            container=None,
            mcp_servers=[],
            some_future_field={"x": 1},
        ),
        {
            "model": "m",
            "messages": [user("hi")],
            "max_tokens": 64,
            "stream": True,
            "stream_options": {"include_usage": True},
            "stop": ["END", "\n\nHuman:"],
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 40,
        },
    ),
    ("null optionals are absent", body(temperature=None, system=None, tools=None), {}),
    (
        "tool_choice auto",
        body(tools=[TIME_TOOL], tool_choice={"type": "auto"}),
        {"tool_choice": "auto"},
    ),
    (
        "tool_choice any",
        body(tools=[TIME_TOOL], tool_choice={"type": "any"}),
        {"tool_choice": "required"},
    ),
    (
        "tool_choice tool, no parallel calls",
        body(
            tools=[WEATHER_TOOL, TIME_TOOL],
            tool_choice={"type": "tool", "name": "get_time", "disable_parallel_tool_use": True},
        ),
        {
            "tool_choice": {"type": "function", "function": {"name": "get_time"}},
            "parallel_tool_calls": False,
        },
    ),
    (
        "tool_choice none",
        body(tools=[TIME_TOOL], tool_choice={"type": "none"}),
        {"tool_choice": "none"},
    ),
    (
        "tool_choice auto without tools is plain chat",
        body(tool_choice={"type": "auto"}),
        {"model": "m", "messages": [user("hi")], "max_tokens": 64, "stream": False},
    ),
    (
        "Anthropic-defined/server tools are left out",
        body(
            tools=[
                {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
                {"type": "bash_20250124", "name": "bash"},
                {"type": "custom", **TIME_TOOL},
            ]
        ),
        {"tools": [TIME_FN]},
    ),
    (
        "output_config.format json_schema → response_format",
        body(output_config={"format": {"type": "json_schema", "schema": {"type": "object"}}}),
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": {"type": "object"}},
            }
        },
    ),
]


@pytest.mark.parametrize(
    ("anthropic_body", "expected"),
    [case[1:] for case in REQUEST_CASES],
    ids=[case[0] for case in REQUEST_CASES],
)
def test_request_mapping(anthropic_body: dict[str, Any], expected: dict[str, Any]) -> None:
    original = copy.deepcopy(anthropic_body)
    out = to_openai_request(anthropic_body)
    assert anthropic_body == original  # the input is never mutated
    for key, value in expected.items():
        assert out[key] == value, key
    if "model" in expected:  # a full expectation: nothing else may appear
        assert out == expected
    json.dumps(out)  # plain JSON all the way down


def test_model_override_and_absent_tools() -> None:
    out = to_openai_request(body(model="alias"), model="served-id")
    assert out["model"] == "served-id"
    assert "tools" not in out and "tool_choice" not in out and "stop" not in out


BAD_REQUESTS: list[tuple[Any, str]] = [
    ([], "body: Input should be an object"),
    ({"max_tokens": 5, "messages": [user("x")]}, "model: Field required"),
    ({"model": "m", "messages": [user("x")]}, "max_tokens: Field required"),
    (body(max_tokens=0), "max_tokens: Input should be greater than or equal to 1"),
    (body(max_tokens="64"), "max_tokens: Input should be a valid integer"),
    (body(max_tokens=True), "max_tokens: Input should be a valid integer"),
    (body(max_tokens=1.5), "max_tokens: Input should be a valid integer"),
    ({"model": "m", "max_tokens": 5}, "messages: Field required"),
    (body(messages=[]), "messages: at least one message is required"),
    (body(messages={"role": "user"}), "messages: Input should be a valid list"),
    (body(messages=["hi"]), "messages.0: Input should be an object"),
    (body(messages=[{"role": "tool", "content": "x"}]), "messages.0.role: Input should be"),
    (body(messages=[{"content": "x"}]), "messages.0.role: Input should be"),
    (body(messages=[{"role": "user"}]), "messages.0.content: Field required"),
    (body(messages=[user(5)]), "messages.0.content: Input should be a string or a list"),
    (body(messages=[user(None)]), "messages.0.content: Input should be a string or a list"),
    (body(messages=[user(["x"])]), "messages.0.content.0: Input should be an object"),
    (body(messages=[user([{"text": "x"}])]), "messages.0.content.0.type: Field required"),
    (body(messages=[user([{"type": "text"}])]), "messages.0.content.0.text: Input should be"),
    (body(messages=[user([{"type": "document"}])]), "messages.0.content.0.type: unsupported"),
    (
        body(messages=[user("x"), assistant([{"type": "tool_result", "tool_use_id": "a"}])]),
        "messages.1.content.0.type: tool_result blocks are only allowed in user turns",
    ),
    (
        body(messages=[user([{"type": "tool_use", "id": "a", "name": "f", "input": {}}])]),
        "messages.0.content.0.type: tool_use blocks are only allowed in assistant turns",
    ),
    (
        body(messages=[user("x"), assistant([{"type": "image", "source": {}}])]),
        "messages.1.content.0.type: unsupported content block type 'image' in an assistant",
    ),
    (
        body(messages=[user("x"), assistant([{"type": "tool_use", "name": "f", "input": {}}])]),
        "messages.1.content.0.id: Field required",
    ),
    (
        body(messages=[user("x"), assistant([{"type": "tool_use", "id": "a", "input": {}}])]),
        "messages.1.content.0.name: Field required",
    ),
    (
        body(messages=[user("x"), assistant([{"type": "tool_use", "id": "a", "name": "f"}])]),
        "messages.1.content.0.input: Input should be a valid dictionary",
    ),
    (
        body(messages=[user([{"type": "tool_result", "content": "x"}])]),
        "messages.0.content.0.tool_use_id: Field required",
    ),
    (
        body(messages=[user([{"type": "tool_result", "tool_use_id": "a", "content": 3}])]),
        "messages.0.content.0.content: Input should be a string or a list",
    ),
    (
        body(
            messages=[
                user([{"type": "tool_result", "tool_use_id": "a", "content": [{"type": "doc"}]}])
            ]
        ),
        "messages.0.content.0.content.0.type: unsupported tool_result content type 'doc'",
    ),
    (
        body(messages=[user([{"type": "tool_result", "tool_use_id": "a", "is_error": "yes"}])]),
        "messages.0.content.0.is_error: Input should be a valid boolean",
    ),
    (
        body(
            messages=[
                user(
                    [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/bmp", "data": "x"},
                        }
                    ]
                )
            ]
        ),
        "messages.0.content.0.source.media_type: Input should be one of",
    ),
    (
        body(messages=[user([{"type": "image", "source": {"type": "file", "file_id": "f"}}])]),
        "messages.0.content.0.source.type: Input should be 'base64' or 'url'",
    ),
    (
        body(messages=[user([{"type": "image"}])]),
        "messages.0.content.0.source: Input should be an object",
    ),
    (body(system=5), "system: Input should be a string or a list of text blocks"),
    (body(system=[{"type": "image"}]), "system.0.type: Input should be 'text'"),
    (body(tools={"name": "f"}), "tools: Input should be a valid list"),
    (body(tools=[{"name": "f"}]), "tools.0.input_schema: Field required"),
    (body(tools=[{"input_schema": {}}]), "tools.0.name: Field required"),
    (body(tools=[TIME_TOOL, TIME_TOOL]), "tools.1.name: tool names must be unique"),
    (body(tools=[{**TIME_TOOL, "description": 3}]), "tools.0.description: Input should be"),
    (body(tools=[TIME_TOOL], tool_choice="auto"), "tool_choice: Input should be an object"),
    (body(tools=[TIME_TOOL], tool_choice={"type": "required"}), "tool_choice.type: Input"),
    (
        body(tools=[TIME_TOOL], tool_choice={"type": "tool", "name": "nope"}),
        "tool_choice.name: no tool named 'nope' in tools",
    ),
    (body(tool_choice={"type": "any"}), "tool_choice: tool_choice 'any' requires tools"),
    (
        body(tools=[TIME_TOOL], tool_choice={"type": "auto", "disable_parallel_tool_use": 1}),
        "tool_choice.disable_parallel_tool_use: Input should be a valid boolean",
    ),
    (body(temperature=1.5), "temperature: Input should be between 0 and 1"),
    (body(temperature=float("nan")), "temperature: Input should be between 0 and 1"),
    (body(temperature="hot"), "temperature: Input should be a valid number"),
    (body(top_p=-0.1), "top_p: Input should be between 0 and 1"),
    (body(top_k=-1), "top_k: Input should be greater than or equal to 0"),
    (body(top_k=2.5), "top_k: Input should be a valid integer"),
    (body(stop_sequences="END"), "stop_sequences: Input should be a valid list"),
    (body(stop_sequences=["ok", ""]), "stop_sequences.1: Input should be a non-empty string"),
    (body(stream="yes"), "stream: Input should be a valid boolean"),
    (body(output_config={"format": {"type": "text"}}), "output_config.format.type: Input"),
    (
        body(output_config={"format": {"type": "json_schema"}}),
        "output_config.format.schema: Field required",
    ),
]


@pytest.mark.parametrize(
    ("bad", "message"), BAD_REQUESTS, ids=[message for _, message in BAD_REQUESTS]
)
def test_bad_request_names_the_field(bad: Any, message: str) -> None:
    with pytest.raises(AnthropicRequestError) as caught:
        to_openai_request(bad)
    assert caught.value.message.startswith(message), caught.value.message
    assert str(caught.value) == caught.value.message
    assert (caught.value.type, caught.value.status) == ("invalid_request_error", 400)


def _mutations(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, (dict, list)):
        for key, child in value.items() if isinstance(value, dict) else enumerate(value):
            yield from _mutations(child, (*path, key))


def _replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    out = copy.copy(value)
    out[path[0]] = _replaced(value[path[0]], path[1:], new)
    return out


GARBAGE = [None, 0, -1, 2.5, True, "", "x", [], [None], {}, {"type": None}]


def test_any_garbage_in_a_body_is_a_400_never_a_crash() -> None:
    """Replace every node of a rich body with every kind of garbage: each result is either a
    translation or an AnthropicRequestError — never KeyError, TypeError, AttributeError…"""
    rich = REQUEST_CASES[5][1] | {
        "system": [{"type": "text", "text": "s"}],
        "tool_choice": {"type": "tool", "name": "get_time"},
        "stop_sequences": ["END"],
        "output_config": {"format": {"type": "json_schema", "schema": {}}},
    }
    rich["messages"] = [*rich["messages"], REQUEST_CASES[8][1]["messages"][0]]
    tried = 0
    for path in _mutations(rich):
        for junk in GARBAGE:
            mutated = _replaced(rich, path, junk)
            for translate in (to_openai_request, count_tokens_request):
                with contextlib.suppress(AnthropicRequestError):
                    translate(mutated)
                tried += 1
    assert tried > 1000


def test_count_tokens_shares_validation_without_max_tokens() -> None:
    count_body = {
        "model": "m",
        "system": "sys",
        "messages": [user("hi")],
        "tools": [TIME_TOOL],
        "tool_choice": {"type": "any"},
    }
    assert count_tokens_request(count_body) == {
        "messages": [{"role": "system", "content": "sys"}, user("hi")],
        "tools": [TIME_FN],
        "tool_choice": "required",
    }
    assert count_tokens_messages(count_body) == count_tokens_request(count_body)["messages"]
    full = to_openai_request({**count_body, "max_tokens": 9})
    assert full["messages"] == count_tokens_messages(count_body)
    with pytest.raises(AnthropicRequestError, match=r"^messages\.0\.role"):
        count_tokens_messages({"messages": [{"role": "bot", "content": "x"}]})
    with pytest.raises(AnthropicRequestError, match=r"^messages: Field required"):
        count_tokens_messages({})


# -- response mapping ----------------------------------------------------------------------------


def completion(
    content: Any = None,
    tool_calls: list[dict[str, Any]] | None = None,
    finish: str | None = "stop",
    usage: dict[str, Any] | None = None,
    **choice_extra: Any,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "served",
        "choices": [{"index": 0, "message": message, "finish_reason": finish, **choice_extra}],
        "usage": usage or {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }


def call(call_id: Any, name: Any, arguments: Any) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


USAGE = {
    "input_tokens": 11,
    "output_tokens": 7,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 0,
}

RESPONSE_CASES: list[tuple[str, dict[str, Any], tuple[str, ...], list[Any], str, str | None]] = [
    # (id, openai response, stop_sequences, expected content, stop_reason, stop_sequence)
    ("text", completion("Hello!"), (), [{"type": "text", "text": "Hello!"}], "end_turn", None),
    ("blank text is skipped", completion(" \n"), (), [], "end_turn", None),
    ("null content", completion(None), (), [], "end_turn", None),
    (
        "content as parts",
        completion([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]),
        (),
        [{"type": "text", "text": "ab"}],
        "end_turn",
        None,
    ),
    (
        "tool calls: usable id kept, bad/duplicate/missing ids generated",
        completion(
            None,
            [
                call("toolu_abc-1", "get_weather", '{"city": "Paris"}'),
                call("call abc!", "get_time", "{}"),
                call("toolu_abc-1", "get_time", ""),
                call(None, "get_time", '"{\\"tz\\": \\"UTC\\"}"'),
            ],
            "tool_calls",
        ),
        (),
        [
            {
                "type": "tool_use",
                "id": "toolu_abc-1",
                "name": "get_weather",
                "input": {"city": "Paris"},
            },
            {"type": "tool_use", "id": "toolu_gen1", "name": "get_time", "input": {}},
            {"type": "tool_use", "id": "toolu_gen2", "name": "get_time", "input": {}},
            {"type": "tool_use", "id": "toolu_gen3", "name": "get_time", "input": {"tz": "UTC"}},
        ],
        "tool_use",
        None,
    ),
    (
        "text and a tool call",
        completion("Let me look.", [call("toolu_c1", "get_time", "{}")], "tool_calls"),
        (),
        [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_c1", "name": "get_time", "input": {}},
        ],
        "tool_use",
        None,
    ),
    (
        "tool calls reported with finish_reason stop are still tool_use",
        completion(None, [call("toolu_c1", "get_time", "{}")], "stop"),
        (),
        [{"type": "tool_use", "id": "toolu_c1", "name": "get_time", "input": {}}],
        "tool_use",
        None,
    ),
    (
        "nameless tool call dropped; tool_calls without calls is end_turn",
        completion("ok", [call("toolu_c1", None, "{}")], "tool_calls"),
        (),
        [{"type": "text", "text": "ok"}],
        "end_turn",
        None,
    ),
    (
        "unparseable and non-object arguments become {}",
        completion(
            None,
            [call("toolu_a", "f", "{oops"), call("toolu_b", "f", "[1]"), call("toolu_c", "f", "7")],
        ),
        (),
        [
            {"type": "tool_use", "id": "toolu_a", "name": "f", "input": {}},
            {"type": "tool_use", "id": "toolu_b", "name": "f", "input": {}},
            {"type": "tool_use", "id": "toolu_c", "name": "f", "input": {}},
        ],
        "tool_use",
        None,
    ),
    (
        "legacy function_call",
        {
            **completion(None),
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "function_call",
                    "message": {"content": None, "function_call": {"name": "f", "arguments": "{}"}},
                }
            ],
        },
        (),
        [{"type": "tool_use", "id": "toolu_gen1", "name": "f", "input": {}}],
        "tool_use",
        None,
    ),
    (
        "length",
        completion("Once upon", finish="length"),
        (),
        [{"type": "text", "text": "Once upon"}],
        "max_tokens",
        None,
    ),
    (
        "length wins over tool calls (truncated call)",
        completion(None, [call("toolu_c", "f", '{"a":')], "length"),
        (),
        [{"type": "tool_use", "id": "toolu_c", "name": "f", "input": {}}],
        "max_tokens",
        None,
    ),
    (
        "matched stop sequence named by the upstream",
        completion("1, 2, 3", stop_reason="END"),
        ("END",),
        [{"type": "text", "text": "1, 2, 3"}],
        "stop_sequence",
        "END",
    ),
    (
        "upstream stop_reason that is not a requested stop sequence",
        completion("1, 2, 3", stop_reason=128009),
        ("END",),
        [{"type": "text", "text": "1, 2, 3"}],
        "end_turn",
        None,
    ),
    (
        "stop without a named match is end_turn",
        completion("1, 2, 3"),
        ("END",),
        [{"type": "text", "text": "1, 2, 3"}],
        "end_turn",
        None,
    ),
    ("content_filter", completion("", finish="content_filter"), (), [], "refusal", None),
    ("no choices at all", {"id": "x", "choices": []}, (), [], "end_turn", None),
]


@pytest.mark.parametrize(
    ("openai_response", "stops", "content", "stop_reason", "stop_sequence"),
    [case[1:] for case in RESPONSE_CASES],
    ids=[case[0] for case in RESPONSE_CASES],
)
def test_response_mapping(
    openai_response: dict[str, Any],
    stops: tuple[str, ...],
    content: list[Any],
    stop_reason: str,
    stop_sequence: str | None,
) -> None:
    out = to_anthropic_response(
        openai_response,
        model="my-model",
        message_id="msg_1",
        tool_id=tool_ids(),
        stop_sequences=stops,
    )
    assert out["content"] == content
    assert (out["stop_reason"], out["stop_sequence"]) == (stop_reason, stop_sequence)
    assert (out["id"], out["type"], out["role"], out["model"]) == (
        "msg_1",
        "message",
        "assistant",
        "my-model",
    )
    if "usage" in openai_response:
        assert out["usage"] == USAGE
    Message.model_validate(out)  # the SDK's own type accepts it


def test_response_usage_with_cached_prompt_tokens() -> None:
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 80},
    }
    out = to_anthropic_response(
        completion("x", usage=usage), model="m", message_id="msg_1", tool_id=tool_ids()
    )
    assert out["usage"] == {
        "input_tokens": 20,
        "output_tokens": 5,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 80,
    }


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ('{"a": 1}', {"a": 1}),
        ({"a": 1}, {"a": 1}),
        ("", {}),
        ("   ", {}),
        (None, {}),
        ("{", {}),
        ("null", {}),
        ('"{\\"a\\": 1}"', {"a": 1}),
        ('"plain"', {}),
        ("[" * 100_000, {}),
    ],
)
def test_parse_tool_input(arguments: Any, expected: dict[str, Any]) -> None:
    assert parse_tool_input(arguments) == expected


def _serve(payload: bytes, content_type: str) -> anthropic.Anthropic:
    def handler(request: sdk_http.Request) -> sdk_http.Response:
        return sdk_http.Response(200, content=payload, headers={"content-type": content_type})

    return anthropic.Anthropic(
        api_key="test",
        base_url="http://cortex.test",
        max_retries=0,
        http_client=sdk_http.Client(transport=sdk_http.MockTransport(handler)),
    )


def test_sdk_client_parses_a_translated_response() -> None:
    out = to_anthropic_response(
        completion("Hi.", [call("toolu_c1", "get_time", '{"tz": "UTC"}')], "tool_calls"),
        model="m",
        message_id="msg_1",
        tool_id=tool_ids(),
    )
    client = _serve(json.dumps(out).encode(), "application/json")
    message = client.messages.create(model="m", max_tokens=9, messages=[user("t?")])
    assert message.stop_reason == "tool_use"
    assert message.content[1].type == "tool_use" and message.content[1].input == {"tz": "UTC"}


# -- streaming -----------------------------------------------------------------------------------


def chunk(
    content: str | None = None,
    tools: list[dict[str, Any]] | None = None,
    finish: str | None = None,
    *,
    role: bool = False,
    usage: dict[str, Any] | None = None,
    choices: bool = True,
    **choice_extra: Any,
) -> dict[str, Any]:
    delta: dict[str, Any] = {"role": "assistant"} if role else {}
    if content is not None:
        delta["content"] = content
    if tools is not None:
        delta["tool_calls"] = tools
    out: dict[str, Any] = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    out["choices"] = (
        [{"index": 0, "delta": delta, "finish_reason": finish, **choice_extra}] if choices else []
    )
    if usage is not None:
        out["usage"] = usage
    return out


def piece(index: int, args: str | None = None, *, id: Any = None, name: Any = None) -> dict:
    out: dict[str, Any] = {"index": index, "function": {"name": name, "arguments": args}}
    if id is not None:
        out |= {"id": id, "type": "function"}
    return out


def final_usage(prompt: int = 12, completion_tokens: int = 5) -> dict[str, Any]:
    return chunk(
        choices=False,
        usage={
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
        },
    )


def translator(**kwargs: Any) -> StreamTranslator:
    return StreamTranslator(model="my-model", message_id="msg_s", tool_id=tool_ids(), **kwargs)


def run(chunks: list[dict[str, Any]], *, early: bool = False, **kwargs: Any) -> list[Any]:
    t = translator(**kwargs)
    events = t.start() if early else []
    for c in chunks:
        events += t.feed(c)
    events += t.finish()
    assert t.finish() == [] and t.feed(chunk("late")) == []  # finish is final and idempotent
    return events


def check_grammar(events: list[Any]) -> None:
    """Names match `type`; every event is a valid SDK stream event; the block grammar holds."""
    open_block: int | None = None
    next_index = 0
    names = [name for name, _ in events]
    assert names.count("message_start") == 1 and names[0] == "message_start"
    for name, data in events:
        assert name == data["type"]
        if name == "error":
            assert data == error_body(data["error"]["type"], data["error"]["message"])
            continue
        EVENT.validate_python(data)
        if name == "content_block_start":
            assert open_block is None and data["index"] == next_index
            open_block, next_index = data["index"], next_index + 1
            block = data["content_block"]
            assert block == (
                {"type": "text", "text": ""}
                if block["type"] == "text"
                else {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            )
        elif name == "content_block_delta":
            assert data["index"] == open_block
            delta = data["delta"]
            assert delta.get("text") or delta.get("partial_json")  # never an empty delta
        elif name == "content_block_stop":
            assert data["index"] == open_block
            open_block = None
    if names[-1] == "message_stop":
        assert names[-2] == "message_delta" and open_block is None
        assert names.count("message_delta") == 1 and names.count("message_stop") == 1


def shape(events: list[Any]) -> list[tuple[Any, ...]]:
    """A compact, exact picture of a stream for strict comparison."""
    out: list[tuple[Any, ...]] = []
    for name, data in events:
        if name == "message_start":
            out.append(("start", data["message"]["usage"]["input_tokens"]))
        elif name == "content_block_start":
            block = data["content_block"]
            if block["type"] == "text":
                out.append(("open", data["index"], "text"))
            else:
                out.append(("open", data["index"], "tool_use", block["id"], block["name"]))
        elif name == "content_block_delta":
            delta = data["delta"]
            out.append(("+", data["index"], delta.get("text", delta.get("partial_json"))))
        elif name == "content_block_stop":
            out.append(("close", data["index"]))
        elif name == "message_delta":
            out.append(
                (
                    "delta",
                    data["delta"]["stop_reason"],
                    data["delta"]["stop_sequence"],
                    data["usage"],
                )
            )
        elif name == "message_stop":
            out.append(("stop",))
        elif name == "error":
            out.append(("error", data["error"]["type"], data["error"]["message"]))
    return out


def sdk_final(events: list[Any]) -> Message:
    """Replay the SSE through a real anthropic client's messages.stream()."""
    wire = b"".join(
        f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in [ping(), *events]
    )
    client = _serve(wire, "text/event-stream")
    with client.messages.stream(model="m", max_tokens=9, messages=[user("x")]) as stream:
        for _ in stream:
            pass
        return stream.get_final_message()


USAGE_12_5 = {"output_tokens": 5, "input_tokens": 12, "cache_read_input_tokens": 0}

STREAM_CASES: list[tuple[str, dict[str, Any], list[dict[str, Any]], list[tuple[Any, ...]]]] = [
    (
        "text with empty deltas, usage only at the end",
        {},
        [
            chunk("", role=True),
            chunk("Hel"),
            chunk(""),
            chunk(None),
            chunk("lo"),
            chunk(None, finish="stop"),
            final_usage(),
        ],
        [
            ("start", 0),
            ("open", 0, "text"),
            ("+", 0, "Hel"),
            ("+", 0, "lo"),
            ("close", 0),
            ("delta", "end_turn", None, USAGE_12_5),
            ("stop",),
        ],
    ),
    (
        "no content at all: no blocks, never an empty text block",
        {},
        [chunk("", role=True), chunk("", finish="stop"), final_usage(completion_tokens=1)],
        [
            ("start", 0),
            ("delta", "end_turn", None, {**USAGE_12_5, "output_tokens": 1}),
            ("stop",),
        ],
    ),
    (
        "leading whitespace waits for real text and is kept",
        {},
        [chunk("\n"), chunk(" "), chunk("Hi"), chunk(" there"), chunk(None, finish="stop")],
        [
            ("start", 0),
            ("open", 0, "text"),
            ("+", 0, "\n Hi"),
            ("+", 0, " there"),
            ("close", 0),
            ("delta", "end_turn", None, {"output_tokens": 0}),
            ("stop",),
        ],
    ),
    (
        "whitespace-only text is dropped",
        {},
        [chunk("\n\n"), chunk(None, finish="stop")],
        [("start", 0), ("delta", "end_turn", None, {"output_tokens": 0}), ("stop",)],
    ),
    (
        "text then tool_use with arguments split across many chunks",
        {"input_tokens": 30},
        [
            chunk("Let me check.", role=True),
            chunk(tools=[piece(0, "", id="toolu_1", name="get_weather")]),
            chunk(tools=[piece(0, '{"ci')]),
            chunk(tools=[piece(0, 'ty": ')]),
            chunk(tools=[piece(0, "")]),
            chunk(tools=[piece(0, '"Par')]),
            chunk(tools=[piece(0, 'is"}')]),
            chunk(None, finish="tool_calls"),
            final_usage(30, 9),
        ],
        [
            ("start", 30),
            ("open", 0, "text"),
            ("+", 0, "Let me check."),
            ("close", 0),
            ("open", 1, "tool_use", "toolu_1", "get_weather"),
            ("+", 1, '{"ci'),
            ("+", 1, 'ty": '),
            ("+", 1, '"Par'),
            ("+", 1, 'is"}'),
            ("close", 1),
            (
                "delta",
                "tool_use",
                None,
                {"output_tokens": 9, "input_tokens": 30, "cache_read_input_tokens": 0},
            ),
            ("stop",),
        ],
    ),
    (
        "several tool calls: the first streams live, later ones flush when the choice ends",
        {},
        [
            chunk(tools=[piece(0, '{"city":', id="toolu_a", name="get_weather")]),
            chunk(tools=[piece(0, ' "Oslo"}')]),
            chunk(tools=[piece(1, "", id="toolu_b", name="get_time")]),
            chunk(tools=[piece(1, '{"tz": ')]),
            chunk(tools=[piece(1, '"CET"}')]),
            chunk(tools=[piece(2, "{}", id="toolu_c", name="get_time")]),
            chunk(None, finish="tool_calls"),
            final_usage(),
        ],
        [
            ("start", 0),
            ("open", 0, "tool_use", "toolu_a", "get_weather"),
            ("+", 0, '{"city":'),
            ("+", 0, ' "Oslo"}'),
            ("close", 0),
            ("open", 1, "tool_use", "toolu_b", "get_time"),
            ("+", 1, '{"tz": "CET"}'),
            ("close", 1),
            ("open", 2, "tool_use", "toolu_c", "get_time"),
            ("+", 2, "{}"),
            ("close", 2),
            ("delta", "tool_use", None, USAGE_12_5),
            ("stop",),
        ],
    ),
    (
        "tool call pieces interleaved by index, several in one chunk",
        {},
        [
            chunk(
                tools=[
                    piece(0, '{"a"', id="toolu_x1", name="f"),
                    piece(1, '{"b"', id="toolu_x2", name="g"),
                ]
            ),
            chunk(tools=[piece(1, ": 2}")]),
            chunk(tools=[piece(0, ": 1}")]),
            chunk(None, finish="tool_calls"),
        ],
        [
            ("start", 0),
            ("open", 0, "tool_use", "toolu_x1", "f"),
            ("+", 0, '{"a"'),
            ("+", 0, ": 1}"),
            ("close", 0),
            ("open", 1, "tool_use", "toolu_x2", "g"),
            ("+", 1, '{"b": 2}'),
            ("close", 1),
            ("delta", "tool_use", None, {"output_tokens": 0}),
            ("stop",),
        ],
    ),
    (
        "llama-cpp-python style: id and name repeated in every piece, later names None",
        {},
        [
            chunk(None, role=True),
            chunk(tools=[piece(0, '{"q"', id="toolu__0_f_cmpl-1", name="f")]),
            chunk(tools=[piece(0, ': "x"}', id="toolu__0_f_cmpl-1", name="f")]),
            chunk(tools=[piece(1, "", id="toolu_Z9", name="g")]),
            chunk(tools=[piece(1, "{}", id="toolu_Z9", name=None)]),
            chunk(None, finish="tool_calls"),
        ],
        [
            ("start", 0),
            ("open", 0, "tool_use", "toolu__0_f_cmpl-1", "f"),
            ("+", 0, '{"q"'),
            ("+", 0, ': "x"}'),
            ("close", 0),
            ("open", 1, "tool_use", "toolu_Z9", "g"),
            ("+", 1, "{}"),
            ("close", 1),
            ("delta", "tool_use", None, {"output_tokens": 0}),
            ("stop",),
        ],
    ),
    (
        "arguments before the name are held until the block can open; bad ids replaced",
        {},
        [
            chunk(tools=[piece(0, '{"a": ', id="id with spaces")]),
            chunk(tools=[piece(0, "1}", name="f")]),
            chunk(tools=[piece(1, "{}", name="g")]),
            chunk(None, finish="tool_calls"),
        ],
        [
            ("start", 0),
            ("open", 0, "tool_use", "toolu_gen1", "f"),
            ("+", 0, '{"a": 1}'),
            ("close", 0),
            ("open", 1, "tool_use", "toolu_gen2", "g"),
            ("+", 1, "{}"),
            ("close", 1),
            ("delta", "tool_use", None, {"output_tokens": 0}),
            ("stop",),
        ],
    ),
    (
        "a nameless tool call is dropped; no tool block means end_turn",
        {},
        [
            chunk("ok"),
            chunk(tools=[piece(0, "{}", id="toolu_c1")]),
            chunk(None, finish="tool_calls"),
        ],
        [
            ("start", 0),
            ("open", 0, "text"),
            ("+", 0, "ok"),
            ("close", 0),
            ("delta", "end_turn", None, {"output_tokens": 0}),
            ("stop",),
        ],
    ),
    (
        "text after a tool call becomes a text block after the tool blocks",
        {},
        [
            chunk("  "),
            chunk(tools=[piece(0, "{}", id="toolu_c1", name="f")]),
            chunk("\n"),
            chunk("Done."),
            chunk(None, finish="tool_calls"),
        ],
        [
            ("start", 0),
            ("open", 0, "tool_use", "toolu_c1", "f"),
            ("+", 0, "{}"),
            ("close", 0),
            ("open", 1, "text"),
            ("+", 1, "\nDone."),
            ("close", 1),
            ("delta", "tool_use", None, {"output_tokens": 0}),
            ("stop",),
        ],
    ),
    (
        "content and finish_reason in one chunk; deltas after it are ignored, usage is not",
        {},
        [
            chunk("All", finish="length"),
            chunk(" more"),
            chunk(None, usage={"prompt_tokens": 3, "completion_tokens": 1}),
        ],
        [
            ("start", 0),
            ("open", 0, "text"),
            ("+", 0, "All"),
            ("close", 0),
            (
                "delta",
                "max_tokens",
                None,
                {"output_tokens": 1, "input_tokens": 3, "cache_read_input_tokens": 0},
            ),
            ("stop",),
        ],
    ),
    (
        "stop sequence named by the upstream",
        {"stop_sequences": ["END"]},
        [chunk("1 2 3 "), chunk(None, finish="stop", stop_reason="END")],
        [
            ("start", 0),
            ("open", 0, "text"),
            ("+", 0, "1 2 3 "),
            ("close", 0),
            ("delta", "stop_sequence", "END", {"output_tokens": 0}),
            ("stop",),
        ],
    ),
    (
        "upstream ends without a finish_reason: blocks still close",
        {},
        [chunk("cut"), chunk(tools=[piece(0, '{"a": 1}', id="toolu_c", name="f")])],
        [
            ("start", 0),
            ("open", 0, "text"),
            ("+", 0, "cut"),
            ("close", 0),
            ("open", 1, "tool_use", "toolu_c", "f"),
            ("+", 1, '{"a": 1}'),
            ("close", 1),
            ("delta", "tool_use", None, {"output_tokens": 0}),
            ("stop",),
        ],
    ),
    (
        "usage carried on the first chunk reaches message_start",
        {},
        [
            chunk("x", usage={"prompt_tokens": 7, "completion_tokens": 0}),
            chunk(None, finish="stop"),
        ],
        [
            ("start", 7),
            ("open", 0, "text"),
            ("+", 0, "x"),
            ("close", 0),
            (
                "delta",
                "end_turn",
                None,
                {"output_tokens": 0, "input_tokens": 7, "cache_read_input_tokens": 0},
            ),
            ("stop",),
        ],
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "chunks", "expected"),
    [case[1:] for case in STREAM_CASES],
    ids=[case[0] for case in STREAM_CASES],
)
def test_stream(kwargs: dict[str, Any], chunks: list[dict[str, Any]], expected: list[Any]) -> None:
    events = run(chunks, **kwargs)
    check_grammar(events)
    assert shape(events) == expected
    # The same events through the SDK's accumulator give the message the blocks describe.
    final = sdk_final(events)
    assert final.id == "msg_s" and final.model == "my-model"
    assert final.stop_reason == expected[-2][1]
    assert final.usage.output_tokens == expected[-2][3]["output_tokens"]
    texts = {
        index: "".join(e[2] for e in expected if e[0] == "+" and e[1] == index)
        for index in range(len(final.content))
    }
    for index, block in enumerate(final.content):
        if block.type == "text":
            assert block.text == texts[index]
        else:
            assert block.type == "tool_use"
            assert block.input == json.loads(texts[index] or "{}")


def test_message_start_early_then_chunks_emit_no_second_one() -> None:
    t = translator()
    early = t.start()
    assert shape(early) == [("start", 0)]
    assert t.start() == []  # e.g. called again when the first chunk lands
    events = early + t.feed(chunk("", role=True)) + t.feed(chunk("Hi", finish="stop"))
    events += t.feed(final_usage(40, 2)) + t.finish()
    check_grammar(events)
    assert shape(events) == [
        ("start", 0),
        ("open", 0, "text"),
        ("+", 0, "Hi"),
        ("close", 0),
        # input_tokens was unknown at message_start: message_delta carries it
        (
            "delta",
            "end_turn",
            None,
            {"output_tokens": 2, "input_tokens": 40, "cache_read_input_tokens": 0},
        ),
        ("stop",),
    ]
    final = sdk_final(events)
    assert (final.usage.input_tokens, final.usage.output_tokens) == (40, 2)


def test_message_start_with_known_input_tokens() -> None:
    events = run([chunk("a", finish="stop")], early=True, input_tokens=21)
    assert events[0][1]["message"] == {
        "id": "msg_s",
        "type": "message",
        "role": "assistant",
        "model": "my-model",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 21,
            "output_tokens": 0,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }
    assert events[-2][1]["usage"] == {"output_tokens": 0, "input_tokens": 21}


def test_finish_alone_is_a_complete_empty_message() -> None:
    events = translator().finish()
    check_grammar(events)
    assert shape(events) == [
        ("start", 0),
        ("delta", "end_turn", None, {"output_tokens": 0}),
        ("stop",),
    ]


def test_upstream_error_mid_stream_ends_the_stream() -> None:
    t = translator()
    events = t.feed(chunk("partial", role=True))
    events += t.feed(chunk(tools=[piece(0, '{"pa', id="toolu_c", name="f")]))
    events += t.error("overloaded_error", "the neuron went away")
    assert t.error("api_error", "again") == [] and t.finish() == [] and t.feed(chunk("x")) == []
    check_grammar(events)
    # The tool block stays open: a content_block_stop would present truncated input as complete.
    assert shape(events) == [
        ("start", 0),
        ("open", 0, "text"),
        ("+", 0, "partial"),
        ("close", 0),
        ("open", 1, "tool_use", "toolu_c", "f"),
        ("+", 1, '{"pa'),
        ("error", "overloaded_error", "the neuron went away"),
    ]
    with pytest.raises(anthropic.APIStatusError) as caught:
        sdk_final(events)
    assert caught.value.body == error_body("overloaded_error", "the neuron went away")


def test_error_before_any_chunk_is_only_the_error_event() -> None:
    t = translator()
    assert t.error("api_error", "boom") == [("error", error_body("api_error", "boom"))]
    assert t.start() == [] and t.finish() == []


@pytest.mark.parametrize(
    ("error", "expected_type"),
    [
        ({"type": "rate_limit_exceeded", "code": "rate_limit_exceeded"}, "rate_limit_error"),
        (
            {"type": "invalid_request_error", "code": "context_length_exceeded"},
            "invalid_request_error",
        ),
        ({"type": "service_unavailable", "code": "draining"}, "overloaded_error"),
        ({"type": "server_error", "code": "engine_failure"}, "api_error"),
        ({"code": "rate_limit_exceeded"}, "rate_limit_error"),
        ({}, "api_error"),
    ],
)
def test_upstream_error_chunk(error: dict[str, Any], expected_type: str) -> None:
    t = translator()
    events = t.feed(chunk("hi")) + t.feed({"error": {"message": "nope", **error}})
    assert events[-1] == ("error", error_body(expected_type, "nope"))
    assert t.finish() == []


def test_error_type_from_openai_defaults() -> None:
    assert error_type_from_openai(None) == "api_error"
    assert error_type_from_openai("authentication_error") == "authentication_error"
    assert error_type_from_openai("not_found_error", "model_not_found") == "not_found_error"


def test_garbage_chunks_never_raise() -> None:
    t = translator()
    events = t.start()
    for junk in [
        None,
        "data",
        [],
        {},
        {"choices": None},
        {"choices": [None, 3]},
        {"choices": [{"delta": None}]},
        {"choices": [{"index": 1, "delta": {"content": "other choice"}}]},
        {"choices": [{"delta": {"content": 5, "tool_calls": "x"}}]},
        {"choices": [{"delta": {"tool_calls": [None, {"index": "0", "function": None}]}}]},
        {
            "choices": [
                {"delta": {"tool_calls": [{"index": True, "id": 5, "function": {"name": 3}}]}}
            ]
        },
        {"usage": {"prompt_tokens": -4, "completion_tokens": "many"}},
        {"error": "not an object"},
    ]:
        events += t.feed(junk)  # type: ignore[arg-type]
    events += t.finish()
    check_grammar(events)
    assert shape(events) == [
        ("start", 0),
        (
            "delta",
            "end_turn",
            None,
            {"output_tokens": 0, "input_tokens": 0, "cache_read_input_tokens": 0},
        ),
        ("stop",),
    ]


def test_ping_and_error_body() -> None:
    assert ping() == ("ping", {"type": "ping"})
    assert error_body("not_found_error", "no such model") == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "no such model"},
    }
    anthropic.types.shared.ErrorResponse.model_validate(error_body("api_error", "x"))


def test_any_garbage_in_a_response_still_gives_a_valid_message() -> None:
    rich = completion(
        "Hi",
        [call("toolu_c1", "f", '{"a": [1, {"b": null}]}'), call("toolu_c2", "g", "{}")],
        "tool_calls",
        usage={
            "prompt_tokens": 9,
            "completion_tokens": 3,
            "prompt_tokens_details": {"cached_tokens": 2},
        },
        stop_reason="END",
    )
    parts = completion([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}])
    for response, path in [(r, p) for r in (rich, parts) for p in _mutations(r)]:
        for junk in GARBAGE:
            out = to_anthropic_response(
                _replaced(response, path, junk),
                model="m",
                message_id="msg_1",
                tool_id=tool_ids(),
                stop_sequences=["END"],
            )
            Message.model_validate(out)


def test_any_garbage_in_a_stream_keeps_the_grammar() -> None:
    chunks = [
        chunk("Hi", role=True),
        chunk(
            tools=[piece(0, '{"a": ', id="toolu_c1", name="f"), piece(1, "{}", id="c2", name="g")]
        ),
        chunk(tools=[piece(0, "1}")]),
        chunk(" done"),
        chunk(None, finish="tool_calls", stop_reason="END"),
        final_usage(),
    ]
    for path in list(_mutations(chunks))[1:]:  # the stream itself stays a list
        for junk in GARBAGE:
            check_grammar(run(_replaced(chunks, path, junk), stop_sequences=["END"]))
