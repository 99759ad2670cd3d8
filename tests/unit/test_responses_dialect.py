"""The Responses dialect, table by table: request → chat body, chat answer → Response, chunks →
events (with the event grammar checked on every stream)."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from cortex.dialects.responses import to_chat_request, to_response, usage_of
from cortex.errors import InvalidRequest

TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
CHAT_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": TOOL["parameters"],
    },
}


def ids():
    counter = itertools.count()
    return lambda prefix: f"{prefix}_{next(counter)}"


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "input": "hi", **fields}


@pytest.mark.parametrize(
    ("fields", "messages"),
    [
        ({}, [{"role": "user", "content": "hi"}]),
        (
            {"instructions": "Be terse."},
            [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"}],
        ),
        (  # leading developer messages join the system prompt; parts become one string
            {
                "instructions": "A",
                "input": [
                    {"role": "developer", "content": "B"},
                    {
                        "type": "message",
                        "role": "user",
                        "content": [
                            {"type": "input_text", "text": "one"},
                            {"type": "input_text", "text": "two"},
                        ],
                    },
                ],
            },
            [{"role": "system", "content": "A\n\nB"}, {"role": "user", "content": "one\n\ntwo"}],
        ),
        (  # a later system message stays in place as a reminder, merged into the user turn
            {
                "input": [
                    {"role": "user", "content": "q1"},
                    {"role": "assistant", "content": [{"type": "output_text", "text": "a1"}]},
                    {"role": "system", "content": "now be brief"},
                    {"role": "user", "content": "q2"},
                ]
            },
            [
                {"role": "user", "content": "q1"},
                {"role": "assistant", "content": "a1"},
                {
                    "role": "user",
                    "content": "<system-reminder>\nnow be brief\n</system-reminder>\n\nq2",
                },
            ],
        ),
        (  # a function call round trip; reasoning items are dropped
            {
                "input": [
                    {"role": "user", "content": "weather?"},
                    {"type": "reasoning", "id": "rs_1", "summary": []},
                    {
                        "type": "function_call",
                        "call_id": "call_1",
                        "name": "get_weather",
                        "arguments": '{"city":"Paris"}',
                    },
                    {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
                ]
            },
            [
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            ],
        ),
    ],
)
def test_input_becomes_chat_messages(fields: dict[str, Any], messages: list[dict]) -> None:
    assert to_chat_request(body(**fields)).chat["messages"] == messages


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, {"stream": False}),
        ({"stream": True}, {"stream": True, "stream_options": {"include_usage": True}}),
        (
            {"max_output_tokens": 32, "temperature": 0.5, "top_p": 0.9},
            {"max_tokens": 32, "temperature": 0.5, "top_p": 0.9},
        ),
        ({"tools": [TOOL]}, {"tools": [CHAT_TOOL]}),
        (
            {"tools": [TOOL], "tool_choice": {"type": "function", "name": "get_weather"}},
            {
                "tools": [CHAT_TOOL],
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            },
        ),
        ({"tools": [TOOL], "tool_choice": "none"}, {}),
        (
            {"tools": [TOOL], "tool_choice": "required", "parallel_tool_calls": False},
            {"tools": [CHAT_TOOL], "tool_choice": "required", "parallel_tool_calls": False},
        ),
        (
            {
                "text": {
                    "format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}
                }
            },
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "object"}},
                }
            },
        ),
        ({"text": {"format": {"type": "text"}, "verbosity": "low"}}, {}),
        (  # accepted and ignored: never in the chat body
            {
                "reasoning": {"effort": "high"},
                "store": False,
                "include": ["reasoning.encrypted_content"],
                "prompt_cache_key": "conv-1",
                "user": "u1",
                "metadata": {"k": "v"},
                "service_tier": "auto",
                "truncation": "auto",
                "some_future_field": 1,
            },
            {},
        ),
    ],
)
def test_fields_map_to_the_chat_body(fields: dict[str, Any], expected: dict[str, Any]) -> None:
    chat = to_chat_request(body(**fields)).chat
    rest = {k: v for k, v in chat.items() if k not in ("model", "messages")}
    assert rest == {"stream": False, **expected}


def test_hints_and_echo_keep_what_the_chat_body_must_not() -> None:
    parsed = to_chat_request(body(prompt_cache_key="conv-1", user="u1", store=False))
    assert (parsed.hints.prompt_cache_key, parsed.hints.user) == ("conv-1", "u1")
    assert "conv-1" not in json.dumps(parsed.chat) and "u1" not in json.dumps(parsed.chat)
    assert parsed.echo["store"] is False and parsed.echo["prompt_cache_key"] == "conv-1"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"background": True}, "background"),
        ({"input": []}, "input"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        ({"input": [{"type": "web_search_call", "id": "ws"}]}, "input[0].type"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0].type",
        ),
        ({"input": [{"type": "function_call", "name": "f"}]}, "input[0].call_id"),
        ({"tools": [{"type": "custom", "name": "apply_patch"}]}, "tools[0].type"),
        (
            {"tools": [{"type": "web_search"}], "tool_choice": {"type": "web_search"}},
            "tool_choice.type",
        ),
        (
            {"tools": [{"type": "namespace", "name": "ns", "tools": [{"type": "mcp"}]}]},
            "tools[0].tools[0].type",
        ),
        ({"tools": [{"type": "namespace", "tools": []}]}, "tools[0].name"),
        ({"tools": [TOOL, TOOL]}, "tools[1].name"),
        (
            {"tools": [TOOL], "tool_choice": {"type": "function", "name": "nope"}},
            "tool_choice.name",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"stream": "yes"}, "stream"),
        ({"text": {"format": {"type": "json_schema"}}}, "text.format.schema"),
        ({"text": {"format": {"type": "xml"}}}, "text.format.type"),
        ({"model": ""}, "model"),
    ],
)
def test_refusals_name_the_param(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        to_chat_request(body(**fields))
    assert caught.value.param == param and caught.value.status == 400


def test_previous_response_id_says_responses_are_not_stored() -> None:
    with pytest.raises(InvalidRequest, match="not stored"):
        to_chat_request(body(previous_response_id="resp_1"))


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (
            {
                "prompt_tokens": 10,
                "completion_tokens": 4,
                "prompt_tokens_details": {"cached_tokens": 8},
            },
            (10, 8, 4, 14),
        ),
        ({"prompt_tokens": 3, "prompt_tokens_details": {"cached_tokens": 9}}, (3, 3, 0, 3)),
        (None, (0, 0, 0, 0)),
        ({"prompt_tokens": True, "completion_tokens": -2}, (0, 0, 0, 0)),
    ],
)
def test_usage(usage: Any, expected: tuple[int, int, int, int]) -> None:
    got = usage_of(usage)
    assert (
        got["input_tokens"],
        got["input_tokens_details"]["cached_tokens"],
        got["output_tokens"],
        got["total_tokens"],
    ) == expected
    assert got["output_tokens_details"] == {"reasoning_tokens": 0}


def whole(message: dict[str, Any], finish: str = "stop") -> dict[str, Any]:
    parsed = to_chat_request(body(tools=[TOOL]))
    chat = {
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2},
    }
    return to_response(
        chat, parsed.echo, response_id="resp_x", model="m", created_at=7, new_id=ids()
    )


@pytest.mark.parametrize(
    ("message", "finish", "status", "output"),
    [
        (
            {"content": "Hi"},
            "stop",
            "completed",
            [("message", "completed", "Hi")],
        ),
        ({"content": "Hi"}, "length", "incomplete", [("message", "incomplete", "Hi")]),
        (
            {
                "content": "\n",
                "tool_calls": [
                    {"id": "call_a", "function": {"name": "get_weather", "arguments": "{}"}},
                    {"id": "call_a", "function": {"name": "get_weather", "arguments": "{}"}},
                    {"function": {"name": None, "arguments": "{}"}},
                ],
            },
            "tool_calls",
            "completed",
            [("function_call", "completed", "call_a"), ("function_call", "completed", "call_1")],
        ),
    ],
)
def test_whole_response(message: dict, finish: str, status: str, output: list[tuple]) -> None:
    response = whole(message, finish)
    assert response["object"] == "response" and response["id"] == "resp_x"
    assert response["status"] == status and response["created_at"] == 7
    assert (response["incomplete_details"] is None) == (status == "completed")
    got = [
        (
            item["type"],
            item["status"],
            item["content"][0]["text"] if item["type"] == "message" else item["call_id"],
        )
        for item in response["output"]
    ]
    assert got == output
    assert response["usage"]["total_tokens"] == 7
    assert response["tools"][0]["name"] == "get_weather" and response["store"] is True


def test_whole_response_of_a_non_object_is_empty() -> None:
    parsed = to_chat_request(body())
    response = to_response(
        "garbage", parsed.echo, response_id="r", model="m", created_at=0, new_id=ids()
    )
    assert response["output"] == [] and response["status"] == "completed"


NAMESPACE = {
    "type": "namespace",
    "name": "agents",
    "description": "Sub-agents",
    "tools": [{**TOOL, "name": "spawn"}, {**TOOL, "name": "close"}],
}


def test_hosted_tools_are_not_offered_to_the_model() -> None:
    """Codex CLI offers `web_search` on every turn; the gateway runs no hosted tools, so the
    model is offered the functions only and the request is served."""
    parsed = to_chat_request(body(tools=[{"type": "web_search"}, TOOL, {"type": "file_search"}]))
    assert parsed.chat["tools"] == [CHAT_TOOL]
    assert [t["type"] for t in parsed.echo["tools"]] == ["web_search", "function", "file_search"]
    only_hosted = to_chat_request(
        body(tools=[{"type": "web_search", "external_web_access": False}])
    )
    assert "tools" not in only_hosted.chat


def test_namespace_functions_reach_the_model_qualified_and_come_back_split() -> None:
    parsed = to_chat_request(
        body(
            tools=[TOOL, NAMESPACE],
            input=[
                {"role": "user", "content": "go"},
                {
                    "type": "function_call",
                    "call_id": "c1",
                    "name": "spawn",
                    "namespace": "agents",
                    "arguments": "{}",
                },
                {"type": "function_call_output", "call_id": "c1", "output": "spawned"},
            ],
        )
    )
    names = [tool["function"]["name"] for tool in parsed.chat["tools"]]
    assert names == ["get_weather", "agents.spawn", "agents.close"]
    assert parsed.namespaces == {"agents.spawn": "agents", "agents.close": "agents"}
    history = parsed.chat["messages"][1]["tool_calls"][0]["function"]["name"]
    assert history == "agents.spawn"
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "x",
                "type": "function",
                "function": {"name": "agents.close", "arguments": "{}"},
            },
            {"id": "y", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
        ],
    }
    response = to_response(
        {"choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}]},
        parsed.echo,
        response_id="r",
        model="m",
        created_at=0,
        new_id=ids(),
        namespaces=parsed.namespaces,
    )
    calls = [(i["name"], i.get("namespace")) for i in response["output"]]
    assert calls == [("close", "agents"), ("get_weather", None)]


def test_a_forced_namespace_function_is_named_qualified() -> None:
    choice = {"type": "function", "name": "spawn", "namespace": "agents"}
    parsed = to_chat_request(body(tools=[NAMESPACE], tool_choice=choice))
    assert parsed.chat["tool_choice"] == {"type": "function", "function": {"name": "agents.spawn"}}
