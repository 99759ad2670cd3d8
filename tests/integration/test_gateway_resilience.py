"""Real neurons that freeze (SIGSTOP) or restart under a real gateway.

* A neuron frozen mid-stream: the client's stream ends with an error event in its dialect within
  2 s of `idle_timeout_s`; a frozen neuron that never begins its answer costs a non-streaming
  client a 504 after `first_byte_timeout_s`; the gateway's other routes answer in under a second
  meanwhile, the node leaves routing, and serves again once it answers polls (SIGCONT).
* A neuron killed and restarted within one poll interval: the gateway still believes it holds
  the model, gets `model_not_found`, polls it again and cold-loads; the client sees no 404.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.conftest import CortexProcess, NeuronProcess

pytestmark = pytest.mark.slow

MODELS = '[[models]]\nid = "smol"\nsource = "smollm2-135m-instruct"\nn_ctx = 1024\n'
IDLE_S = 1.5
FIRST_BYTE_S = 10.0  # roomy: a first request on a busy 2-core box can take seconds
NEURON_TOML = "vram_headroom_mb = 0\n"
FAKE_GPU = {"NEURON_FAKE_GPUS": "0:1GiB"}


@pytest.fixture(scope="module")
def frozen_fleet(
    start_module_neuron, tmp_path_factory
) -> Iterator[tuple[CortexProcess, NeuronProcess]]:
    neuron = start_module_neuron(NEURON_TOML, env=FAKE_GPU)
    cortex = CortexProcess(
        tmp_path_factory.mktemp("frozen"),
        {"one": neuron},
        MODELS,
        gateway_toml=f"first_byte_timeout_s = {FIRST_BYTE_S}\nidle_timeout_s = {IDLE_S}\n",
    )
    try:
        cortex.wait_ready()
        loaded = httpx.post(f"{cortex.url}/admin/models/smol/load", json={}, timeout=120)
        assert loaded.status_code == 200, loaded.text
        # First requests on a fresh model are slow (template set-up): not a test subject.
        client = openai.OpenAI(base_url=cortex.url + "/v1", api_key="x", max_retries=0)
        client.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
        client.completions.create(model="smol", prompt="Hi", max_tokens=2)
        yield cortex, neuron
    finally:
        os.kill(neuron.proc.pid, signal.SIGCONT)
        cortex.stop()


def node_up(cortex: CortexProcess) -> bool:
    return cortex.fleet()["nodes"][0]["up"]


def wait_for(predicate, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


class Prober(threading.Thread):
    """Times /health and /v1/models on the gateway over and over until stopped."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.latencies: list[float] = []
        self.statuses: set[int] = set()
        self.done = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while True:  # at least one round, however soon it is stopped
                for path in ("/health", "/v1/models"):
                    started = time.monotonic()
                    self.statuses.add(client.get(self.url + path).status_code)
                    self.latencies.append(time.monotonic() - started)
                if self.done.wait(0.05):
                    return


def freeze_mid_stream(
    cortex: CortexProcess, neuron: NeuronProcess, path: str, body: dict
) -> tuple[list[str], float]:
    """Stream `body`, SIGSTOP the neuron after five events (pings aside: they come from the
    gateway, also before the neuron answers); the events and how long the stream took to end
    after the freeze."""
    events: list[str] = []
    frozen_at = 0.0
    prober = Prober(cortex.url)
    with httpx.stream("POST", cortex.url + path, json=body, timeout=30) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == 'data: {"type":"ping"}':
                continue
            events.append(line[6:])
            if len(events) == 5:
                os.kill(neuron.proc.pid, signal.SIGSTOP)
                frozen_at = time.monotonic()
                prober.start()
    assert frozen_at, f"the answer ended before the freeze: {events}"
    ended_after = time.monotonic() - frozen_at
    prober.done.set()
    prober.join()
    assert prober.statuses == {200}
    assert prober.latencies and max(prober.latencies) < 1.0, max(prober.latencies)
    return events, ended_after


def thaw(cortex: CortexProcess, neuron: NeuronProcess) -> None:
    assert not node_up(cortex)  # out of routing while frozen
    os.kill(neuron.proc.pid, signal.SIGCONT)
    assert wait_for(lambda: node_up(cortex))


def test_openai_stream_ends_with_an_error_when_the_neuron_freezes(frozen_fleet) -> None:
    cortex, neuron = frozen_fleet
    body = {
        "model": "smol",
        "prompt": "1, 2, 3,",
        "max_tokens": 900,
        "temperature": 0,
        "stream": True,
    }
    events, ended_after = freeze_mid_stream(cortex, neuron, "/v1/completions", body)
    assert ended_after < IDLE_S + 2, ended_after
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert (error["code"], error["type"]) == ("upstream_timeout", "timeout_error")
    thaw(cortex, neuron)
    client = openai.OpenAI(base_url=cortex.url + "/v1", api_key="x", max_retries=0)
    assert client.completions.create(model="smol", prompt="Hi", max_tokens=3).choices


def test_anthropic_stream_ends_with_an_error_event_when_the_neuron_freezes(frozen_fleet) -> None:
    cortex, neuron = frozen_fleet
    body = {  # greedy SmolLM2 writes this story for all 900 tokens (a short answer could end
        "model": "smol",  # before the freeze takes hold)
        "max_tokens": 900,
        "temperature": 0,
        "stream": True,
        "messages": [{"role": "user", "content": "Write a long story about a dragon."}],
    }
    events, ended_after = freeze_mid_stream(cortex, neuron, "/v1/messages", body)
    assert ended_after < IDLE_S + 2, ended_after
    last = json.loads(events[-1])
    assert last["type"] == "error" and last["error"]["type"] == "api_error"
    assert "silent" in last["error"]["message"]
    thaw(cortex, neuron)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_a_frozen_neuron_that_never_answers_is_a_504(frozen_fleet, path: str) -> None:
    cortex, neuron = frozen_fleet
    assert wait_for(lambda: node_up(cortex))
    body = {"model": "smol", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]}
    os.kill(neuron.proc.pid, signal.SIGSTOP)
    started = time.monotonic()
    response = httpx.post(cortex.url + path, json=body, timeout=30)
    assert time.monotonic() - started < FIRST_BYTE_S + 2
    assert response.status_code == 504
    error = response.json()["error"]
    if path == "/v1/messages":
        assert response.json()["type"] == "error" and error["type"] == "api_error"
    else:
        assert error["code"] == "upstream_timeout"
    thaw(cortex, neuron)


def test_restart_within_one_poll_interval_is_not_a_404(start_neuron, tmp_path) -> None:
    neuron = start_neuron(NEURON_TOML, env=FAKE_GPU)
    # Polls so rare that the gateway cannot notice the restart before the next request.
    cortex = CortexProcess(tmp_path, {"one": neuron}, MODELS, poll_interval_s=120)
    try:
        cortex.wait_ready()
        loaded = httpx.post(f"{cortex.url}/admin/models/smol/load", json={}, timeout=120)
        assert loaded.status_code == 200, loaded.text
        client = openai.OpenAI(base_url=cortex.url + "/v1", api_key="x", max_retries=0)
        assert client.completions.create(model="smol", prompt="Hi", max_tokens=3).choices
        neuron.restart()
        assert httpx.get(neuron.url + "/models", timeout=5).json() == []
        reply = client.completions.create(model="smol", prompt="Hi", max_tokens=3)
        assert reply.choices[0].text is not None
        fleet = cortex.fleet()
        kinds = [event["kind"] for event in fleet["events"]]
        assert "node_restarted" in kinds and "node_down" not in kinds
        assert [m["model_id"] for m in fleet["nodes"][0]["models"]] == ["smol"]
    finally:
        cortex.stop()
