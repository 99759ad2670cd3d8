"""The Anthropic dialect through a real cortex and a real neuron, driven by the anthropic SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import httpx
import pytest

from tests.conftest import CortexProcess

pytestmark = pytest.mark.slow  # real neurons, real models

SMOL = "smollm2-135m-instruct"
MODELS = f"""
[[models]]
id = "smol"
source = "{SMOL}"
n_ctx = 2048
aliases = ["claude-local"]

[[models]]
id = "smol-cold"
source = "{SMOL}"
n_ctx = 1024

[[models]]
id = "gemma"
source = "gemma3-270m"
n_ctx = 512
"""
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture(scope="module")
def cortex(start_module_neuron, tmp_path_factory: pytest.TempPathFactory):
    neuron = start_module_neuron("[admission]\nmax_queue_depth = 16\n")
    gateway = CortexProcess(
        tmp_path_factory.mktemp("cortex"),
        {"n1": neuron},
        MODELS,
        gateway_toml='api_keys = ["sk-test"]\n',
    )
    gateway.wait_ready()
    yield gateway
    gateway.stop()


@pytest.fixture
def client(cortex) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=cortex.url, api_key="sk-test", max_retries=0) as sdk:
        yield sdk


def test_messages_create(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model="smol",
        max_tokens=24,
        system="You are terse.",
        messages=[{"role": "user", "content": "Say hello."}],
    )
    assert message.id.startswith("msg_")
    assert message.role == "assistant" and message.model == "smol"
    assert message.content and message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens > 5 and 0 < message.usage.output_tokens <= 24


def test_max_tokens_stop_reason(client: anthropic.Anthropic) -> None:
    message = client.messages.create(  # greedy: a sampled answer may end within three tokens
        model="smol",
        max_tokens=3,
        messages=[{"role": "user", "content": "Count to ten."}],
        extra_body={"temperature": 0},  # this SDK release no longer sends it by name
    )
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 3


def test_stop_sequence_is_reported(client: anthropic.Anthropic) -> None:
    request = dict(
        model="smol",
        max_tokens=40,
        extra_body={"temperature": 0},  # this SDK version has no temperature argument
        stop_sequences=["3", "7"],
        messages=[{"role": "user", "content": "Count from 1 to 10, separated by commas."}],
    )
    message = client.messages.create(**request)
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "3"
    assert "3" not in message.content[0].text
    with client.messages.stream(**request) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == "3"
    assert final.content[0].text == message.content[0].text


def test_messages_stream_text_and_final_message(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model="claude-local",  # alias of smol
        max_tokens=20,
        messages=[{"role": "user", "content": "Name a colour."}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].text == text
    assert final.usage.output_tokens > 0 and final.usage.input_tokens > 5


def test_tool_round_trip(client: anthropic.Anthropic) -> None:
    question = {"role": "user", "content": "What's the weather in Paris?"}
    first = client.messages.create(
        model="smol",
        max_tokens=64,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[question],
    )
    assert first.stop_reason == "tool_use"
    call = next(block for block in first.content if block.type == "tool_use")
    assert call.id.startswith("toolu_") and call.name == "get_weather"
    assert isinstance(call.input.get("city"), str)
    second = client.messages.create(
        model="smol",
        max_tokens=32,
        tools=[WEATHER_TOOL],
        messages=[
            question,
            {"role": "assistant", "content": first.content},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": call.id, "content": "18°C and sunny"}
                ],
            },
        ],
    )
    assert second.content and second.stop_reason in ("end_turn", "max_tokens", "tool_use")

    # Anthropic counts prompt tokens read from the cache apart from `input_tokens`.
    def prompt(usage: object) -> int:
        return usage.input_tokens + (usage.cache_read_input_tokens or 0)

    assert prompt(second.usage) > prompt(first.usage)
    assert second.usage.cache_read_input_tokens > first.usage.input_tokens // 2  # prefix reused


def test_count_tokens(client: anthropic.Anthropic) -> None:
    short = client.messages.count_tokens(model="smol", messages=[{"role": "user", "content": "Hi"}])
    longer = client.messages.count_tokens(
        model="smol",
        system="You are a helpful assistant.",
        messages=[{"role": "user", "content": "Hi there, how are you doing today?"}],
        tools=[WEATHER_TOOL],
    )
    assert 0 < short.input_tokens < longer.input_tokens
    created = client.messages.create(
        model="smol", max_tokens=1, messages=[{"role": "user", "content": "Hi"}]
    )
    usage = created.usage
    assert short.input_tokens == usage.input_tokens + (usage.cache_read_input_tokens or 0)


def test_auth_failures(cortex) -> None:
    with (
        anthropic.Anthropic(base_url=cortex.url, api_key="wrong", max_retries=0) as wrong,
        pytest.raises(anthropic.AuthenticationError) as info,
    ):
        wrong.messages.create(
            model="smol", max_tokens=5, messages=[{"role": "user", "content": "Hi"}]
        )
    assert info.value.body["type"] == "error"
    assert info.value.body["error"]["type"] == "authentication_error"
    response = httpx.post(cortex.url + "/v1/messages", json={})
    assert response.status_code == 401 and response.json()["type"] == "error"


def test_unknown_model_and_bad_bodies(client: anthropic.Anthropic, cortex) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.create(
            model="nope", max_tokens=5, messages=[{"role": "user", "content": "Hi"}]
        )
    assert info.value.body["error"]["type"] == "not_found_error"
    headers = {"x-api-key": "sk-test", "anthropic-version": "2023-06-01"}
    for body, fragment in (
        ({"model": "smol", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        ({"model": "smol", "max_tokens": 5, "messages": []}, "messages"),
        (
            {"model": "smol", "max_tokens": 5, "messages": [{"role": "robot", "content": "x"}]},
            "role",
        ),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, "model"),
    ):
        response = httpx.post(cortex.url + "/v1/messages", json=body, headers=headers)
        assert response.status_code == 400, response.text
        error = response.json()
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
        assert fragment in error["error"]["message"]
    broken = httpx.post(cortex.url + "/v1/messages", content=b"{", headers=headers)
    assert broken.status_code == 400 and broken.json()["type"] == "error"
    with pytest.raises(anthropic.BadRequestError):  # a base model without a chat template
        client.messages.create(
            model="gemma", max_tokens=5, messages=[{"role": "user", "content": "Hi"}]
        )


def parse_events(raw: str) -> list[tuple[str, dict]]:
    events = []
    for block in raw.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events


def assert_grammar(events: list[tuple[str, dict]]) -> None:
    names = [name for name, _ in events if name != "ping"]
    assert names[0] == "message_start" and names.count("message_start") == 1
    assert names[-2:] == ["message_delta", "message_stop"]
    open_index = None
    next_index = 0
    for name, data in events:
        if name == "content_block_start":
            assert open_index is None and data["index"] == next_index
            open_index = data["index"]
            if data["content_block"]["type"] == "text":
                assert data["content_block"]["text"] == ""
        elif name == "content_block_delta":
            assert data["index"] == open_index
            assert data["delta"]["type"] in ("text_delta", "input_json_delta")
        elif name == "content_block_stop":
            assert data["index"] == open_index
            open_index, next_index = None, next_index + 1
    assert open_index is None and next_index >= 1


def test_claude_code_shaped_stream(cortex) -> None:
    tools = [
        {**WEATHER_TOOL, "name": f"tool_{i}", "description": f"Tool number {i}"} for i in range(12)
    ]
    body = {
        "model": "claude-local",
        "max_tokens": 48,
        "stream": True,
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1; nonce=1"},
            {
                "type": "text",
                "text": "You are Claude Code.",
                "cache_control": {"type": "ephemeral"},
            },
            {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "<system-reminder>ctx</system-reminder>"},
                    {"type": "text", "text": "Say hi.", "cache_control": {"type": "ephemeral"}},
                ],
            }
        ],
        "tools": tools,
        "metadata": {"user_id": "user_abc"},
        "temperature": 1,
    }
    headers = {
        "x-api-key": "sk-test",
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
    }
    response = httpx.post(cortex.url + "/v1/messages", json=body, headers=headers, timeout=60)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_events(response.text)
    assert_grammar(events)
    start = events[0][1]["message"]
    assert start["id"].startswith("msg_") and start["content"] == []
    assert start["usage"]["input_tokens"] > 50  # counted before the first block, tools included
    delta = next(data for name, data in events if name == "message_delta")
    assert delta["delta"]["stop_reason"] in ("end_turn", "max_tokens", "tool_use")
    assert delta["usage"]["output_tokens"] > 0


def test_stream_during_cold_load_starts_early_with_pings(cortex) -> None:
    body = {
        "model": "smol-cold",
        "max_tokens": 8,
        "stream": True,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    with httpx.stream(
        "POST",
        cortex.url + "/v1/messages",
        json=body,
        headers={"x-api-key": "sk-test"},
        timeout=60,
    ) as response:
        raw = response.read().decode()
    events = parse_events(raw)
    assert [name for name, _ in events[:2]] == ["message_start", "ping"]
    assert_grammar(events)
    delta = next(data for name, data in events if name == "message_delta")
    assert delta["usage"]["output_tokens"] > 0
