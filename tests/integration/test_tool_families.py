"""Native tool calling per model family on a real GGUF: SmolLM2 served with a minimal chat
template of each family's own format (Hermes/Qwen, Llama 3.x, Mistral, and one without tools)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest

pytestmark = pytest.mark.slow

TEMPLATES = Path(__file__).resolve().parent.parent / "fixtures" / "templates"
FAMILIES = ["hermes", "llama3", "mistral", "plain"]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a time zone",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "enum": ["UTC", "CET", "PST"]}},
            "required": ["zone"],
        },
    },
}


@pytest.fixture(scope="module")
def client(start_module_neuron) -> openai.OpenAI:
    node = start_module_neuron("[engine]\nparallel = 2\n")
    for family in FAMILIES:
        body = {
            "model": family,
            "source": "smollm2-135m-instruct",
            "n_ctx": 2048,
            "chat_template": (TEMPLATES / f"{family}.jinja").read_text(),
        }
        response = httpx.post(node.url + "/models/load", json=body, timeout=120)
        assert response.status_code == 200, response.text
    return openai.OpenAI(base_url=node.url + "/v1", api_key="unused", max_retries=0)


def ask(client: openai.OpenAI, family: str, text: str, **kwargs: object):
    return client.chat.completions.create(
        model=family,
        messages=[{"role": "user", "content": text}],
        tools=[WEATHER, TIME],
        max_tokens=96,
        temperature=0,
        **kwargs,
    ).choices[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_forced_calls_parse_to_valid_arguments(client: openai.OpenAI, family: str) -> None:
    named = ask(
        client, family, "What's the weather in Paris?",
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )  # fmt: skip
    assert named.finish_reason == "tool_calls"
    (call,) = named.message.tool_calls
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)
    required = ask(client, family, "What time is it in Berlin?", tool_choice="required")
    assert required.finish_reason == "tool_calls" and required.message.tool_calls
    for call in required.message.tool_calls:
        arguments = json.loads(call.function.arguments)
        assert call.function.name in ("get_weather", "get_time")
        if call.function.name == "get_time":
            assert arguments["zone"] in ("UTC", "CET", "PST")  # the schema's enum holds


@pytest.mark.parametrize("family", FAMILIES)
def test_auto_leaves_free_text_as_text(client: openai.OpenAI, family: str) -> None:
    reply = ask(client, family, "Say hello to my friend Ann in one short sentence.")
    if reply.message.tool_calls:  # a call made in auto mode must still be well formed
        for call in reply.message.tool_calls:
            json.loads(call.function.arguments)
        assert reply.finish_reason == "tool_calls"
    else:
        assert reply.message.content and reply.finish_reason in ("stop", "length")
        assert "<tool_call>" not in reply.message.content


def test_streamed_forced_call_arrives_as_tool_calls(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="hermes",
            messages=[{"role": "user", "content": "Weather in Rome?"}],
            tools=[WEATHER],
            tool_choice="required",
            max_tokens=64,
            temperature=0,
            stream=True,
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    calls = [call for delta in deltas for call in delta.tool_calls or []]
    assert calls and calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments)["city"]
    assert not "".join(delta.content or "" for delta in deltas).strip()  # no raw call text
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
