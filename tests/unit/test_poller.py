"""The poller over a fake neuron: answers off the contract are misses, restarts are noticed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.fake_neuron import FakeNeuron, Fleet


async def fleet_of_one() -> tuple[FakeNeuron, Fleet]:
    neuron = FakeNeuron("n")
    neuron.hold("m")
    return neuron, await Fleet.start([neuron], [])  # down after two misses


@pytest.mark.parametrize(
    "models",
    [[{"state": "ready"}], [{"id": "m"}], {"not": "a list"}, [None], "text", [{"id": "m"}, 5]],
)
async def test_answers_off_the_contract_are_misses(models: Any) -> None:
    neuron, fleet = await fleet_of_one()
    poller, registry = fleet.poller, fleet.registry
    assert registry.node("n").up
    neuron.answers["/models"] = models
    await poller.poll("n")
    await poller.poll("n")
    assert not registry.node("n").up and registry.node("n").models == ()
    (down,) = [e for e in registry.events if e.kind == "node_down"]
    assert "off the contract" in down.message or "non-JSON" in down.message
    del neuron.answers["/models"]
    assert (await poller.poll("n")).up
    await fleet.close()


async def test_uptime_going_down_is_a_restart() -> None:
    neuron, fleet = await fleet_of_one()
    poller, registry = fleet.poller, fleet.registry
    neuron.uptime_s = 101.0
    await poller.poll("n")
    assert neuron.calls("GET /discovery") == 1 and not [
        e for e in registry.events if e.kind == "node_restarted"
    ]
    neuron.uptime_s = 0.5
    neuron.models.clear()
    node = await poller.poll("n")
    assert node.up and node.models == ()
    assert neuron.calls("GET /discovery") == 2
    assert [e.kind for e in registry.events].count("node_restarted") == 1
    await fleet.close()


async def test_the_polling_loop_outlives_an_unexpected_error() -> None:
    _neuron, fleet = await fleet_of_one()
    poller = fleet.poller
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
    await fleet.close()
    assert len(rounds) >= 3
