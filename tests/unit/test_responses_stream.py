"""`ResponsesStream`: chat chunks → Responses events, every stream checked against the grammar.

`assert_grammar` is the strict checker the integration tests use on real streams too.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from cortex.dialects.responses import ResponsesStream, to_chat_request

TERMINAL = ("response.completed", "response.incomplete", "response.failed")


def assert_grammar(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Check one whole stream against OpenAI's Responses event grammar; return the final
    response object (of the terminal event)."""
    names = [name for name, _ in events]
    assert names[:2] == ["response.created", "response.in_progress"], names
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert all(data["type"] == name for name, data in events)
    response_id = events[0][1]["response"]["id"]
    open_item: dict[str, Any] | None = None
    next_index = 0
    texts: dict[str, str] = {}
    for position, (name, data) in enumerate(events[2:], start=2):
        if name in TERMINAL:
            assert position == len(events) - 1, names
            # A failure may cut an item short; every other end closes what it opened.
            assert open_item is None or name == "response.failed", names
            assert data["response"]["id"] == response_id
            if name == "response.failed":
                assert names[position - 1] == "error" and data["response"]["error"]
            return data["response"]
        if name == "error":
            assert names[position + 1] == "response.failed", names
            continue
        if name == "response.output_item.added":
            assert open_item is None and data["output_index"] == next_index, names
            open_item, next_index = data["item"], next_index + 1
            assert open_item["status"] == "in_progress"
            continue
        assert open_item is not None, f"{name} outside an item: {names}"
        if name == "response.output_item.done":
            assert data["item"]["id"] == open_item["id"] and data["item"]["status"] != "in_progress"
            if open_item["type"] == "message":
                assert data["item"]["content"][0]["text"] == texts[open_item["id"]]
            open_item = None
            continue
        assert data["item_id"] == open_item["id"] and data["output_index"] == next_index - 1
        if open_item["type"] == "message":
            assert name.startswith(("response.content_part.", "response.output_text.")), name
            if name == "response.output_text.delta":
                texts[open_item["id"]] = texts.get(open_item["id"], "") + data["delta"]
            if name == "response.output_text.done":
                assert data["text"] == texts[open_item["id"]]
        else:
            assert name.startswith("response.function_call_arguments."), name
    raise AssertionError(f"no terminal event: {names}")


def new_stream(**fields: Any) -> ResponsesStream:
    counter = itertools.count()
    parsed = to_chat_request({"model": "m", "input": "hi", **fields})
    return ResponsesStream(
        parsed.echo,
        response_id="resp_1",
        model="m",
        created_at=1,
        new_id=lambda prefix: f"{prefix}_{next(counter)}",
        namespaces=parsed.namespaces,
    )


def text(piece: str, finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": finish}]}


def call(index: int, name: str | None, arguments: str, call_id: str | None = None) -> dict:
    piece = {"index": index, "id": call_id, "function": {"name": name, "arguments": arguments}}
    return {"choices": [{"index": 0, "delta": {"tool_calls": [piece]}, "finish_reason": None}]}


FINISH_STOP = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
FINISH_CALLS = {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}
FINISH_LENGTH = {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
USAGE = {
    "choices": [],
    "usage": {
        "prompt_tokens": 9,
        "completion_tokens": 3,
        "prompt_tokens_details": {"cached_tokens": 6},
    },
}


def run(chunks: list[Any], stream: ResponsesStream | None = None) -> list:
    stream = stream or new_stream()
    events = stream.start()
    for chunk in chunks:
        events += stream.feed(chunk)
    return events + stream.finish()


def summary(response: dict[str, Any]) -> list[tuple]:
    return [
        (
            item["type"],
            item["content"][0]["text"] if item["type"] == "message" else item["arguments"],
        )
        for item in response["output"]
    ]


@pytest.mark.parametrize(
    ("chunks", "status", "output"),
    [
        ([text("Hel"), text("lo"), FINISH_STOP, USAGE], "completed", [("message", "Hello")]),
        ([text("  "), text("\nHi"), FINISH_STOP], "completed", [("message", "  \nHi")]),
        ([text("Hi"), FINISH_LENGTH, USAGE], "incomplete", [("message", "Hi")]),
        ([], "completed", []),
        (  # whitespace before a call makes no message; arguments stream live
            [text("\n"), call(0, "f", '{"a":', "call_9"), call(0, None, "1}"), FINISH_CALLS],
            "completed",
            [("function_call", '{"a":1}')],
        ),
        (  # text, then two calls whose pieces interleave, then trailing text
            [
                text("Let me look."),
                call(0, "f", '{"x"'),
                call(1, "g", "{}"),
                call(0, None, ":1}"),
                text(" done"),
                FINISH_CALLS,
                USAGE,
            ],
            "completed",
            [
                ("message", "Let me look."),
                ("function_call", '{"x":1}'),
                ("function_call", "{}"),
                ("message", " done"),
            ],
        ),
        ([call(0, None, "{}"), FINISH_CALLS], "completed", []),  # nameless: dropped
        (["junk", {"choices": "x"}, text("ok"), FINISH_STOP], "completed", [("message", "ok")]),
    ],
)
def test_streams_follow_the_grammar(chunks: list, status: str, output: list[tuple]) -> None:
    final = assert_grammar(run(chunks))
    assert final["status"] == status and summary(final) == output


def test_completed_carries_usage_and_the_request_echo() -> None:
    final = assert_grammar(run([text("Hi"), FINISH_STOP, USAGE], new_stream(temperature=0.3)))
    assert final["usage"]["input_tokens"] == 9 and final["usage"]["output_tokens"] == 3
    assert final["usage"]["input_tokens_details"]["cached_tokens"] == 6
    assert final["temperature"] == 0.3 and final["model"] == "m"


def test_call_ids_come_from_upstream_when_usable() -> None:
    final = assert_grammar(run([call(0, "f", "{}", "call_up"), call(1, "g", "{}", "call_up")]))
    first, second = (item["call_id"] for item in final["output"])
    assert first == "call_up" and second.startswith("call_") and second != first


def test_an_upstream_error_line_fails_the_stream() -> None:
    stream = new_stream()
    events = stream.start() + stream.feed(text("par"))
    events += stream.feed({"error": {"message": "engine died", "code": "engine_failure"}})
    assert stream.finish() == [] and stream.feed(text("more")) == []
    final = assert_grammar(events)
    assert final["status"] == "failed" and final["error"]["code"] == "engine_failure"
    error = next(data for name, data in events if name == "error")
    assert error["message"] == "engine died"


def test_fail_before_any_chunk_starts_the_stream_first() -> None:
    stream = new_stream()
    events = stream.fail("cold_load_timeout", "the model did not load")
    assert [name for name, _ in events] == [
        "response.created",
        "response.in_progress",
        "error",
        "response.failed",
    ]
    assert stream.fail("x", "y") == []


def test_start_is_sent_once() -> None:
    stream = new_stream()
    assert len(stream.start()) == 2 and stream.start() == []
    assert next(name for name, _ in stream.feed(text("a"))) == "response.output_item.added"


def test_a_streamed_call_of_a_namespace_function_carries_its_namespace() -> None:
    tool = {"type": "function", "name": "spawn", "parameters": {"type": "object"}}
    stream = new_stream(tools=[{"type": "namespace", "name": "agents", "tools": [tool]}])
    events = run([call(0, "agents.spawn", '{"a":'), call(0, None, "1}"), FINISH_CALLS], stream)
    response = assert_grammar(events)
    added = [data["item"] for name, data in events if name == "response.output_item.added"]
    assert (added[0]["name"], added[0]["namespace"]) == ("spawn", "agents")
    item = response["output"][0]
    assert (item["name"], item["namespace"], item["arguments"]) == ("spawn", "agents", '{"a":1}')
