"""The poller over a fake neuron: answers off the contract are misses, restarts are noticed."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from cortex.config import NeuronEndpoint
from cortex.fleet.registry import FleetRegistry
from cortex.fleet.state import NodeState
from cortex.nodes.client import NeuronClient
from cortex.nodes.poller import Poller

MODEL = {"id": "m", "state": "ready"}


class FakeNeuron:
    """Answers /discovery, /health and /models from attributes a test changes."""

    def __init__(self) -> None:
        self.uptime = 100.0
        self.models: Any = [MODEL]
        self.discoveries = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/discovery":
            self.discoveries += 1
            return httpx.Response(200, json={"hostname": "h", "devices": [], "backend": "cpu"})
        if request.url.path == "/health":
            return httpx.Response(200, json={"uptime_s": self.uptime, "devices": [], "models": []})
        return httpx.Response(200, json=self.models)


def poller_for(neuron: FakeNeuron) -> tuple[Poller, FleetRegistry]:
    http = httpx.AsyncClient(transport=httpx.MockTransport(neuron))
    client = NeuronClient(http, NeuronEndpoint("n", "http://n"))
    registry = FleetRegistry([NodeState(name="n", endpoint="http://n")], [], {}, lambda: 0.0)
    return Poller(registry, {"n": client}, interval_s=1, down_after_misses=2), registry


@pytest.mark.parametrize(
    "models",
    [[{"state": "ready"}], [{"id": "m"}], {"not": "a list"}, [None], "text", [{"id": "m"}, 5]],
)
async def test_answers_off_the_contract_are_misses(models: Any) -> None:
    neuron = FakeNeuron()
    poller, registry = poller_for(neuron)
    assert (await poller.poll("n")).up
    neuron.models = models
    await poller.poll("n")
    await poller.poll("n")
    assert not registry.node("n").up and registry.node("n").models == ()
    neuron.models = [MODEL]
    assert (await poller.poll("n")).up


async def test_uptime_going_down_is_a_restart() -> None:
    neuron = FakeNeuron()
    poller, registry = poller_for(neuron)
    await poller.poll("n")
    neuron.uptime = 101.0
    await poller.poll("n")
    assert neuron.discoveries == 1 and not [
        e for e in registry.events if e.kind == "node_restarted"
    ]
    neuron.uptime, neuron.models = 0.5, []
    node = await poller.poll("n")
    assert node.up and node.models == ()
    assert neuron.discoveries == 2
    assert [e.kind for e in registry.events].count("node_restarted") == 1


async def test_the_polling_loop_outlives_an_unexpected_error() -> None:
    poller, _registry = poller_for(FakeNeuron())
    poller.interval_s = 0.01
    rounds: list[int] = []

    async def flaky() -> None:
        rounds.append(1)
        if len(rounds) == 1:
            raise RuntimeError("a bug while reading an answer")

    poller.poll_all = flaky  # type: ignore[method-assign]
    poller.start()
    for _ in range(100):
        if len(rounds) >= 3:
            break
        await asyncio.sleep(0.01)
    await poller.stop()
    assert len(rounds) >= 3
