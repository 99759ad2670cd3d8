"""The scheduler over fake neurons, in process: housekeeping that survives a bad neuron and
keeps pins, and operator loads that are single flight with requests' cold loads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from cortex.control import scheduler as scheduler_module
from cortex.errors import NoCapacity
from cortex.fleet.state import CatalogueEntry
from tests.fake_neuron import FakeNeuron, Fleet

MODELS = [CatalogueEntry("a"), CatalogueEntry("b"), CatalogueEntry("p", pinned_on=("n1",))]


@pytest.fixture
async def pair() -> AsyncIterator[Fleet]:
    fleet = await Fleet.start(
        [FakeNeuron("n1"), FakeNeuron("n2")],
        MODELS,
        idle_unload_after_s=60,
        poll_interval_s=0.01,
        cold_load_timeout_s=0.5,  # also how long a blocked placement is retried
    )
    yield fleet
    await fleet.close()


async def test_a_neuron_answering_garbage_is_marked_down_and_the_others_are_still_served(
    pair: Fleet,
) -> None:
    n1, n2 = pair.neurons["n1"], pair.neurons["n2"]
    n1.hold("a", last_used_at=1.0)
    n2.hold("b", last_used_at=1.0)
    await pair.poller.poll_all()
    n1.broken.add("/models/unload")  # its answer is not JSON
    await pair.scheduler.housekeep()  # both are idle for 999 s: both are victims
    assert pair.resident() == {"n1": ["a"], "n2": []}
    assert not pair.registry.node("n1").up and pair.registry.node("n2").up
    assert any(e.kind == "node_down" and e.node == "n1" for e in pair.registry.events)


async def test_housekeeping_goes_on_after_an_unexpected_error(
    pair: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    rounds: list[int] = []

    def flaky(*args: object) -> list:
        rounds.append(1)
        if len(rounds) == 1:
            raise RuntimeError("a bug in a planner")
        return []

    monkeypatch.setattr(scheduler_module, "idle_unloads", flaky)
    pair.scheduler.start()
    for _ in range(100):
        if len(rounds) >= 3:
            break
        await asyncio.sleep(0.01)
    assert len(rounds) >= 3  # the first round's exception did not end the loop


async def test_a_cordoned_node_keeps_its_pinned_models(pair: Fleet) -> None:
    n1 = pair.neurons["n1"]
    n1.hold("p", last_used_at=999.0)
    n1.hold("a", last_used_at=999.0)
    await pair.poller.poll_all()
    pair.registry.update_node("n1", cordoned=True)
    await pair.scheduler.housekeep()
    assert pair.resident()["n1"] == ["p"]  # "a" moved off; the pin stays where it is pinned


async def test_an_operator_load_and_a_request_for_the_same_model_share_one_load(
    pair: Fleet,
) -> None:
    for neuron in pair.neurons.values():
        neuron.load_s = 0.2
    admin = asyncio.create_task(pair.scheduler.load_on("a", "n2"))
    await asyncio.sleep(0.02)  # the operator's load is under way on n2
    request = await pair.scheduler.wait_loaded(pair.scheduler.loading("a"), 10**9)
    assert await admin == request
    assert request.node == "n2"
    assert sum(n.loads("a") for n in pair.neurons.values()) == 1


async def test_an_operator_load_waits_for_a_requests_load_then_adds_its_replica(
    pair: Fleet,
) -> None:
    pair.neurons["n1"].load_s = 0.2
    cold = pair.scheduler.loading("a")
    await asyncio.sleep(0.02)
    placed = await pair.scheduler.wait_loaded(cold, 10**9)
    second = await pair.scheduler.load_on("a", "n2" if placed.node == "n1" else "n1")
    assert second.node != placed.node
    assert sorted(n for n, ids in pair.resident().items() if "a" in ids) == ["n1", "n2"]
    again = await pair.scheduler.load_on("a", second.node)  # already there: no second load
    assert again == second and sum(n.loads("a") for n in pair.neurons.values()) == 2


async def test_a_plan_answer_off_the_contract_is_skipped(pair: Fleet) -> None:
    pair.neurons["n1"].broken.add("/models/plan")
    pair.neurons["n2"].broken.add("/models/plan")
    with pytest.raises(NoCapacity):
        await pair.scheduler.wait_loaded(pair.scheduler.loading("b"), 10**9)
    assert pair.resident() == {"n1": [], "n2": []}


async def test_two_gateways_place_each_model_once_under_concurrent_cold_requests() -> None:
    neurons = [FakeNeuron("n1", vram_mb=1_000.0), FakeNeuron("n2", vram_mb=1_000.0)]
    for neuron in neurons:
        neuron.load_s = 0.1
    models = [CatalogueEntry(m) for m in ("a", "b", "c")]
    gateways = [await Fleet.start(neurons, models) for _ in range(2)]
    try:
        requests = [
            gateways[i % 2].scheduler.wait_loaded(
                gateways[i % 2].scheduler.loading("abc"[i % 3]), 10**9
            )
            for i in range(20)
        ]
        targets = await asyncio.gather(*requests)
        replicas = {m: [n.name for n in neurons if m in n.models] for m in "abc"}
        assert all(len(nodes) == 1 for nodes in replicas.values()), replicas
        for target in targets:
            assert replicas[target.model_id] == [target.node]
    finally:
        for gateway in gateways:
            await gateway.close()


async def test_a_gateway_joins_the_load_another_gateway_started() -> None:
    neurons = [FakeNeuron("n1", vram_mb=1_000.0), FakeNeuron("n2", vram_mb=1_000.0)]
    for neuron in neurons:
        neuron.load_s = 0.2
    first, second = [await Fleet.start(neurons, [CatalogueEntry("a")]) for _ in range(2)]
    try:
        started = first.scheduler.loading("a")
        await asyncio.sleep(0.05)  # loading on one node, which now has less free VRAM
        joined = await second.scheduler.wait_loaded(second.scheduler.loading("a"), 10**9)
        placed = await first.scheduler.wait_loaded(started, 10**9)
        assert joined.node == placed.node
        assert [n.name for n in neurons if "a" in n.models] == [placed.node]
        assert sum(n.loads("a") for n in neurons) == 1  # the second gateway sent no load
    finally:
        await first.close()
        await second.close()
