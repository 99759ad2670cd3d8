"""The relay's timeouts against a fake neuron (the stub): fast, no model loaded.

The stub sends its first chunk at once and the next ones seconds apart, longer than the
gateway's `idle_timeout_s`: the client's stream must end with an error event in its dialect soon
after the timeout while other routes keep answering, and the node must come back once it polls
well. A stub frozen with SIGSTOP never begins its answer: a 504 after `first_byte_timeout_s`.
(test_gateway_resilience does the same with real neurons.)
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import CortexProcess
from tests.integration.stub_gateway import StubNeuron, stub_gateway

pytestmark = pytest.mark.slow  # real gateways over stub neurons

IDLE_S = 0.5
FIRST_BYTE_S = 1.0
CHAT = {"model": "stub", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


@pytest.fixture(scope="module")
def slow_stub() -> StubNeuron:
    return StubNeuron("--chunks", "5", "--chunk-delay-ms", "3000")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, slow_stub: StubNeuron) -> Iterator:
    with stub_gateway(
        tmp_path_factory.mktemp("timeouts"),
        stub=slow_stub,
        gateway_toml=f"first_byte_timeout_s = {FIRST_BYTE_S}\nidle_timeout_s = {IDLE_S}\n",
    ) as cortex:
        yield cortex


def nodes_up(cortex: CortexProcess) -> int:
    return httpx.get(cortex.url + "/health", timeout=5).json()["nodes_up"]


def wait_until_up(cortex: CortexProcess) -> None:
    deadline = time.monotonic() + 10
    while nodes_up(cortex) != 1:
        assert time.monotonic() < deadline, "the node did not come back"
        time.sleep(0.05)


def stream(cortex: CortexProcess, path: str, body: dict) -> tuple[list[str], float, float]:
    """Stream `body`; the data lines, the silence between first and last, the slowest /health."""
    data: list[str] = []
    slowest = 0.0
    first_at = 0.0
    with httpx.stream("POST", cortex.url + path, json=body, timeout=10) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                data.append(line[6:])
                if len(data) == 1:
                    first_at = time.monotonic()
                    started = time.monotonic()
                    assert nodes_up(cortex) == 1
                    slowest = time.monotonic() - started
    return data, time.monotonic() - first_at, slowest


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_openai_stream_ends_with_an_error_after_idle_timeout(
    gateway: CortexProcess, path: str
) -> None:
    wait_until_up(gateway)
    body = {**CHAT, "prompt": "hi", "stream": True}
    data, silence, slowest = stream(gateway, path, body)
    # the gateway times the silence from when it got the first chunk, a little before we did
    assert IDLE_S - 0.25 <= silence < IDLE_S + 2 and slowest < 1
    assert data[-1] == "[DONE]"
    error = json.loads(data[-2])["error"]
    assert (error["code"], error["type"]) == ("upstream_timeout", "timeout_error")
    assert "silent" in error["message"]
    wait_until_up(gateway)  # out of routing until its next good poll, which comes at once


def test_anthropic_stream_ends_with_an_error_event_after_idle_timeout(
    gateway: CortexProcess,
) -> None:
    wait_until_up(gateway)
    data, silence, slowest = stream(gateway, "/v1/messages", {**CHAT, "stream": True})
    # the gateway times the silence from when it got the first chunk, a little before we did
    assert IDLE_S - 0.25 <= silence < IDLE_S + 2 and slowest < 1
    last = json.loads(data[-1])
    assert last["type"] == "error" and last["error"]["type"] == "api_error"
    wait_until_up(gateway)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_a_frozen_neuron_is_a_504_after_the_first_byte_timeout(
    gateway: CortexProcess, slow_stub: StubNeuron, path: str
) -> None:
    wait_until_up(gateway)
    os.kill(slow_stub.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        response = httpx.post(gateway.url + path, json=CHAT, timeout=10)
        assert FIRST_BYTE_S <= time.monotonic() - started < FIRST_BYTE_S + 2
        assert nodes_up(gateway) == 0
    finally:
        os.kill(slow_stub.proc.pid, signal.SIGCONT)
    assert response.status_code == 504
    body = response.json()
    if path == "/v1/messages":
        assert body["type"] == "error" and body["error"]["type"] == "api_error"
    else:
        assert body["error"]["code"] == "upstream_timeout"
    wait_until_up(gateway)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {**CHAT, "stream": True}),
        ("/v1/messages", {**CHAT, "stream": True}),
        ("/v1/responses", {"model": "stub", "input": "hi", "stream": True}),
    ],
)
def test_a_stream_keeps_its_client_waiting_while_the_neuron_is_silent(
    gateway: CortexProcess, slow_stub: StubNeuron, path: str, body: dict
) -> None:
    """Headers and keep-alives (or the dialect's opening events and pings) reach the client
    while the neuron has not begun its answer — as while it queues or reads a long prompt —
    and the first-byte timeout ends the stream with the dialect's error."""
    wait_until_up(gateway)
    os.kill(slow_stub.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with httpx.stream("POST", gateway.url + path, json=body, timeout=10) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            lines: list[str] = []
            for line in response.iter_lines():
                if not lines:
                    first_after = time.monotonic() - started
                lines.append(line)
    finally:
        os.kill(slow_stub.proc.pid, signal.SIGCONT)
    assert first_after < FIRST_BYTE_S / 2  # long before the neuron's first byte is due
    first, raw = lines[0], "\n".join(lines)
    data = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    if path == "/v1/chat/completions":
        assert first == ": keep-alive" and raw.count(": keep-alive") >= 2
        assert data[-1]["error"]["code"] == "upstream_timeout" and raw.rstrip().endswith(
            "data: [DONE]"
        )
    elif path == "/v1/messages":
        assert first == "event: message_start"
        assert [d["type"] for d in data].count("ping") >= 2
        assert data[-1]["type"] == "error" and data[-1]["error"]["type"] == "api_error"
    else:
        assert first == "event: response.created" and raw.count(": keep-alive") >= 2
        assert [d["type"] for d in data[-2:]] == ["error", "response.failed"]
        assert data[-2]["code"] == "upstream_timeout"
    wait_until_up(gateway)
