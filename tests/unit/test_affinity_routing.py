"""Prefix affinity through the real dispatcher, scheduler and poller over fake neurons: each
conversation comes back to the replica that served it, a hot replica sheds new turns, and the
conversation then stays where it went."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cortex.fleet.affinity import affinity_key
from cortex.fleet.state import CatalogueEntry
from tests.fake_neuron import FakeNeuron, Fleet

SYSTEM = {"role": "system", "content": "You are a coding agent."}


@pytest.fixture
async def two_replicas() -> AsyncIterator[Fleet]:
    fleet = await Fleet.start([FakeNeuron("n1"), FakeNeuron("n2")], [CatalogueEntry("m")])
    for neuron in fleet.neurons.values():
        neuron.hold("m")
    await fleet.poller.poll_all()
    yield fleet
    await fleet.close()


async def turn(fleet: Fleet, history: list[dict[str, Any]], text: str) -> str:
    """One turn of a conversation: the node that answered it."""
    history.append({"role": "user", "content": text})
    body = {"model": "m", "messages": [SYSTEM, *history]}
    _exchange, content = await fleet.dispatcher.fetch(
        "m", "/v1/chat/completions", body, json.dumps(body).encode(), affinity_key(None, body)
    )
    node = json.loads(content)["choices"][0]["message"]["content"]
    history.append({"role": "assistant", "content": node})
    return node


async def test_interleaved_conversations_stay_on_their_replicas(two_replicas: Fleet) -> None:
    histories: dict[int, list[dict[str, Any]]] = {c: [] for c in range(4)}
    served: dict[int, list[str]] = {c: [] for c in range(4)}
    for step in range(6):
        # Other traffic makes one replica a request busier than the other, in turn: by load
        # alone each turn would go to the other replica.
        for index, neuron in enumerate(two_replicas.neurons.values()):
            neuron.models["m"].in_flight = (step + index) % 2
        await two_replicas.poller.poll_all()
        for c in histories:
            served[c].append(await turn(two_replicas, histories[c], f"task {c}, step {step}"))
    for c, nodes in served.items():
        assert len(set(nodes)) == 1, (c, nodes)
    assert two_replicas.scheduler.route_now("m") is not None
    assert two_replicas.scheduler.route_now("m").by == "load"  # no conversation: by load


async def test_a_hot_replica_sheds_a_turn_and_the_conversation_moves(two_replicas: Fleet) -> None:
    history: list[dict[str, Any]] = []
    home = await turn(two_replicas, history, "refactor the parser")
    assert await turn(two_replicas, history, "and its tests") == home
    other = "n2" if home == "n1" else "n1"
    two_replicas.neurons[home].models["m"].in_flight = 7  # 7 of 4 slots: 3 waiting
    await two_replicas.poller.poll_all()
    assert await turn(two_replicas, history, "now the docs") == other  # shed: 7 - 0 > 2
    two_replicas.neurons[home].models["m"].in_flight = 0
    await two_replicas.poller.poll_all()
    assert await turn(two_replicas, history, "and the changelog") == other  # its cache is there
    conversation = affinity_key(None, {"messages": [SYSTEM, *history]})
    target = two_replicas.scheduler.route_now("m", conversation=conversation)
    assert target is not None and (target.node, target.by) == (other, "affinity")
