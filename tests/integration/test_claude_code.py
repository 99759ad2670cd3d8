"""Claude Code's real request shapes replayed against a real cortex + neuron (SmolLM2).

The bodies are tests/fixtures/claude_code/*.json (billing header, 15 tools, thinking settings
and history, context_management, a mid-conversation system message), sent with Claude Code's
headers and an `anthropic-beta` list that includes a feature nobody knows. Only `max_tokens` is
lowered (Claude Code asks for 32 000) so that a CPU finishes quickly. The model id is Claude
Code's own; an alias pattern maps it, as an operator would.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.conftest import CortexProcess
from tests.unit.test_claude_code_bodies import NAMES, fixture, next_turn

pytestmark = pytest.mark.slow  # real neurons, real models

MODELS = """
[[models]]
id = "smol"
source = "smollm2-135m-instruct"
n_ctx = 8192

[aliases]
"claude-*haiku*" = "smol"
"""
HEADERS = {
    "x-api-key": "sk-test",
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,"
    "context-management-2025-06-27,fine-grained-tool-streaming-2025-05-14,"
    "some-feature-from-the-future-2099-01-01",
    "user-agent": "claude-cli/2.1.37 (external, cli)",
    "x-app": "cli",
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


def post(cortex: CortexProcess, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(cortex.url + "/v1/messages", json=body, headers=HEADERS, timeout=120)


def events_of(raw: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in raw.strip().split("\n\n"):
        lines = block.splitlines()
        assert [line.split(": ", 1)[0] for line in lines] == ["event", "data"], block
        out.append((lines[0][7:], json.loads(lines[1][6:])))
    return out


def assert_strict_grammar(events: list[tuple[str, dict[str, Any]]]) -> None:
    """Anthropic's stream grammar, every event checked: message_start then a ping at once,
    pings only between events, blocks 0, 1, 2… opened, delta'd and closed one at a time, one
    message_delta, message_stop last."""
    names = [name for name, _ in events]
    assert names[:2] == ["message_start", "ping"], names
    assert names[-2:] == ["message_delta", "message_stop"], names
    assert names.count("message_start") == names.count("message_delta") == 1
    assert all(data["type"] == name for name, data in events)
    open_block: dict[str, Any] | None = None
    next_index = 0
    for name, data in events[2:-2]:
        if name == "ping":
            continue
        if name == "content_block_start":
            assert open_block is None and data["index"] == next_index, names
            open_block = data["content_block"]
            assert open_block["type"] in ("text", "tool_use")
            assert open_block.get("text", "") == "" and open_block.get("input", {}) == {}
        elif name == "content_block_delta":
            assert open_block is not None and data["index"] == next_index, names
            expected = "text_delta" if open_block["type"] == "text" else "input_json_delta"
            assert data["delta"]["type"] == expected
        elif name == "content_block_stop":
            assert open_block is not None and data["index"] == next_index, names
            open_block, next_index = None, next_index + 1
        else:
            raise AssertionError(f"unexpected {name} inside the message: {names}")
    assert open_block is None and next_index >= 1
    start = events[0][1]["message"]
    assert start["id"].startswith("msg_") and start["role"] == "assistant"
    assert start["content"] == [] and start["model"] == "claude-haiku-4-5-20251001"
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] in ("end_turn", "max_tokens", "tool_use")
    assert delta["usage"]["output_tokens"] > 0


@pytest.mark.parametrize("name", NAMES)
def test_replayed_stream_follows_the_grammar(cortex: CortexProcess, name: str) -> None:
    body = {**fixture(name), "max_tokens": 24}
    response = post(cortex, body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = events_of(response.text)
    assert_strict_grammar(events)
    # The prompt's count (message_start has it once the model is loaded; message_delta always):
    # tools included, so well over a thousand tokens.
    usage = events[-2][1]["usage"]
    assert usage["input_tokens"] + usage.get("cache_read_input_tokens", 0) > 1000


def test_two_turns_reuse_the_prompt_prefix(cortex: CortexProcess) -> None:
    first = {**fixture("billing_many_tools"), "stream": False, "max_tokens": 16}
    answer = post(cortex, first)
    assert answer.status_code == 200, answer.text
    reply = "".join(b["text"] for b in answer.json()["content"] if b["type"] == "text")
    second = next_turn(first, reply or "OK.", "Thanks, and the lint target?", "77aa1")
    usage = post(cortex, second).json()["usage"]
    prompt = usage["input_tokens"] + usage["cache_read_input_tokens"]
    # Everything up to turn 1's question is cached; only the new turns are read afresh.
    assert usage["cache_read_input_tokens"] > 0.8 * prompt, usage
