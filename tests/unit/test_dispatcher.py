"""The dispatcher and scheduler over a scripted fake neuron, in process.

Races with unloads:
The gateway routes on its last poll, and a neuron may have moved on since: a model it still
lists as ready may be unloading (an eviction or an operator's unload), and a cold load of the
same id is refused with 409 `model_unloading` until the old replica is gone. A client must see
neither; these tests drive the real `Dispatcher`, `Scheduler`, `Poller` and `NeuronClient`
over an `httpx.MockTransport` and assert what the neuron was asked, in order.

What reaches the neuron: the client's bytes, or the real model id for an alias and the
catalogue's `max_output_tokens` cap.

Counting tokens (Anthropic `count_tokens`) never plans, loads or evicts: a ready replica counts,
else an up neuron counts from the catalogue source (a neuron that takes loads first).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from cortex.config import GatewayConfig, NeuronEndpoint
from cortex.control.dispatcher import Dispatcher
from cortex.control.registry import FleetRegistry
from cortex.control.scheduler import Scheduler
from cortex.errors import (
    Conflict,
    LoadTimeout,
    ModelNotFound,
    NoCapacity,
    NodeUnavailable,
    UpstreamError,
)
from cortex.fleet.state import CatalogueEntry, NodeState
from cortex.nodes.client import NeuronClient
from cortex.nodes.poller import Poller

BODY = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}
ANSWER = {"choices": [{"message": {"role": "assistant", "content": "Hello"}}]}


class ScriptedNeuron:
    """A neuron holding model "m" whose answers a test scripts.

    `state` is what /models reports for "m" (None: not resident). `chat` and `load` are lists
    of (status, body) answers used in turn, the last one repeated. Every request is logged
    as "METHOD /path" in `seen`.
    """

    def __init__(self, state: str | None = "ready") -> None:
        self.state = state
        self.chat: list[tuple[int, Any]] = [(200, ANSWER)]  # a body: a JSON value or raw bytes
        self.load: list[tuple[int, dict[str, Any]]] = [(200, {"id": "m", "state": "ready"})]
        self.seen: list[str] = []
        self.bodies: list[bytes] = []
        self.on_load_attempt = lambda attempt: None
        self.tokenize: list[tuple[int, dict[str, Any]]] = [(200, {"model": "m", "count": 7})]
        self.tokenized: list[dict[str, Any]] = []  # every /tokenize body, parsed
        self.unreachable = False  # /tokenize fails to connect

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path not in ("/health", "/discovery"):
            self.seen.append(f"{request.method} {path}")
        if path == "/discovery":
            return httpx.Response(200, json={"hostname": "h", "devices": [], "backend": "cpu"})
        if path == "/health":
            return httpx.Response(200, json={"uptime_s": 100, "devices": [], "models": []})
        if path == "/models":
            models = [] if self.state is None else [{"id": "m", "state": self.state}]
            return httpx.Response(200, json=models)
        if path == "/models/plan":
            return httpx.Response(
                200,
                json={
                    "model": "m",
                    "estimate": {"full_offload_mb": 100},
                    "plan": {"n_gpu_layers": 31, "fits_fully": True},
                    "available_mb": 1000,
                },
            )
        if path == "/models/load":
            attempt = sum(1 for s in self.seen if s.endswith("/models/load"))
            self.on_load_attempt(attempt)
            status, body = _nth(self.load, attempt - 1)
            if status == 200:
                self.state = "ready"
            return httpx.Response(status, json=body)
        if path == "/tokenize":
            if self.unreachable:
                raise httpx.ConnectError("refused", request=request)
            self.tokenized.append(json.loads(request.content))
            status, body = _nth(self.tokenize, len(self.tokenized) - 1)
            return httpx.Response(status, json=body)
        if path == "/v1/chat/completions":
            self.bodies.append(request.content)
            attempt = sum(1 for s in self.seen if s.endswith("/v1/chat/completions"))
            status, body = _nth(self.chat, attempt - 1)
            return httpx.Response(
                status,
                headers={"content-type": "application/json", "retry-after": "5"},
                stream=_Streamed(body if isinstance(body, bytes) else json.dumps(body).encode()),
            )
        return httpx.Response(404, json={"error": {"message": "no route"}})


class _Streamed(httpx.AsyncByteStream):
    """A body read as it arrives, as from a real socket (httpx reads `json=` bodies at once)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self):  # type: ignore[override]
        yield self.data


def _nth(answers: list[tuple[int, Any]], index: int) -> tuple[int, Any]:
    return answers[min(index, len(answers) - 1)]


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "server_error", "code": code}}


async def _dispatcher(
    neuron: ScriptedNeuron, cold_load_timeout_s: float = 10, entry: CatalogueEntry | None = None
) -> Dispatcher:
    config = GatewayConfig(
        neurons=(NeuronEndpoint("n", "http://n"),),
        models=(entry or CatalogueEntry("m", n_ctx=512),),
        aliases={"claude-*": "m"},
        cold_load_timeout_s=cold_load_timeout_s,
    )
    http = httpx.AsyncClient(transport=httpx.MockTransport(neuron))
    clients = {"n": NeuronClient(http, config.neurons[0])}
    registry = FleetRegistry(
        [NodeState(name="n", endpoint="http://n")], config.models, config.aliases, lambda: 0.0
    )
    poller = Poller(registry, clients, interval_s=60, down_after_misses=2)
    scheduler = Scheduler(config, registry, clients, poller)
    await poller.poll("n")
    return Dispatcher(config, scheduler, registry, poller, clients)


async def _chat(dispatcher: Dispatcher, body: dict[str, Any] = BODY) -> dict[str, Any]:
    _exchange, content = await dispatcher.fetch(
        body["model"], "/v1/chat/completions", body, json.dumps(body).encode()
    )
    return json.loads(content)


async def test_a_model_found_unloading_is_routed_again_and_cold_loaded() -> None:
    neuron = ScriptedNeuron()
    dispatcher = await _dispatcher(neuron)
    neuron.seen.clear()
    # Since the poll, the model began unloading; the old replica is gone after two tries.
    neuron.state = "unloading"
    neuron.chat = [(503, _error("model_unavailable", "model 'm' is unloading")), (200, ANSWER)]
    neuron.load = [
        (409, _error("model_unloading", "model 'm' is unloading")),
        (409, _error("model_unloading", "model 'm' is unloading")),
        (200, {"id": "m", "state": "ready"}),
    ]

    def unloaded_after_two(attempt: int) -> None:
        if attempt == 2:
            neuron.state = None

    neuron.on_load_attempt = unloaded_after_two
    assert await _chat(dispatcher) == ANSWER
    assert neuron.seen[0] == "POST /v1/chat/completions"  # routed on the stale poll
    assert neuron.seen[1] == "GET /models"  # looked again
    assert neuron.seen.count("POST /models/load") == 3  # waited out the unload, then loaded
    assert neuron.seen[-1] == "POST /v1/chat/completions"
    assert neuron.seen.count("POST /v1/chat/completions") == 2


async def test_an_unload_that_never_ends_is_retried_then_refused_not_a_409() -> None:
    neuron = ScriptedNeuron(state="unloading")
    dispatcher = await _dispatcher(neuron, cold_load_timeout_s=1)
    neuron.load = [(409, _error("model_unloading", "model 'm' is unloading"))]
    with pytest.raises((NoCapacity, LoadTimeout)) as raised:
        await _chat(dispatcher)
    assert raised.value.status in (503, 504) and raised.value.retry_after
    assert neuron.seen.count("POST /models/load") >= 3


async def test_other_neuron_errors_pass_through_untouched() -> None:
    neuron = ScriptedNeuron()
    dispatcher = await _dispatcher(neuron)
    neuron.chat = [(429, _error("rate_limited", "queue full"))]
    with pytest.raises(UpstreamError) as raised:
        await _chat(dispatcher)
    assert (raised.value.status, raised.value.code, raised.value.retry_after) == (
        429,
        "rate_limited",
        5,
    )
    assert neuron.seen.count("POST /v1/chat/completions") == 1


@pytest.mark.parametrize(
    ("cap", "asked", "sent"),
    [
        (None, {}, {}),
        (None, {"max_tokens": 32000}, {"max_tokens": 32000}),
        (256, {}, {"max_tokens": 256}),
        (256, {"max_tokens": 32000}, {"max_tokens": 256}),
        (256, {"max_tokens": 100}, {"max_tokens": 100}),
        (256, {"max_completion_tokens": 9999}, {"max_completion_tokens": 256}),
    ],
)
async def test_the_catalogue_caps_what_a_request_asks_for(
    cap: int | None, asked: dict[str, int], sent: dict[str, int]
) -> None:
    neuron = ScriptedNeuron()
    dispatcher = await _dispatcher(neuron, entry=CatalogueEntry("m", max_output_tokens=cap))
    body = {**BODY, **asked}
    raw = json.dumps(body).encode()
    await dispatcher.fetch("m", "/v1/chat/completions", body, raw)
    forwarded = json.loads(neuron.bodies[-1])
    assert {k: forwarded[k] for k in forwarded if "tokens" in k} == sent
    if asked == sent:  # nothing to change: the client's own bytes go through
        assert neuron.bodies[-1] == raw


@pytest.mark.parametrize(
    ("default", "asked", "sent"),
    [(None, None, None), (0.7, None, 0.7), (0.7, 1.2, 1.2), (0.7, 0, 0), (None, 0.3, 0.3)],
)
async def test_the_catalogue_temperature_applies_when_the_client_sends_none(
    default: float | None, asked: float | None, sent: float | None
) -> None:
    neuron = ScriptedNeuron()
    dispatcher = await _dispatcher(neuron, entry=CatalogueEntry("m", temperature=default))
    body = BODY if asked is None else {**BODY, "temperature": asked}
    await _chat(dispatcher, body)
    assert json.loads(neuron.bodies[-1]).get("temperature") == sent


async def test_an_alias_reaches_the_neuron_as_the_real_id() -> None:
    neuron = ScriptedNeuron()
    dispatcher = await _dispatcher(neuron)
    assert await _chat(dispatcher, {**BODY, "model": "claude-haiku-4-5"}) == ANSWER
    assert json.loads(neuron.bodies[-1])["model"] == "m"


async def test_a_load_refused_for_good_is_the_neurons_409_not_a_retry() -> None:
    neuron = ScriptedNeuron(state=None)
    dispatcher = await _dispatcher(neuron)
    neuron.load = [(409, _error("model_conflict", "'m' holds another source; unload it first"))]
    with pytest.raises(Conflict) as raised:
        await _chat(dispatcher)
    assert raised.value.code == "model_conflict" and "unload it first" in raised.value.message
    assert neuron.seen.count("POST /models/load") == 1


@pytest.mark.parametrize("answer", [b"<html>proxy error</html>", b"[1, 2]", b""])
async def test_a_malformed_whole_answer_is_node_unavailable_and_the_node_leaves_routing(
    answer: bytes,
) -> None:
    neuron = ScriptedNeuron()
    dispatcher = await _dispatcher(neuron)
    neuron.chat = [(200, answer)]
    with pytest.raises(NodeUnavailable, match="malformed answer"):
        await dispatcher.fetch_json("m", "/v1/chat/completions", BODY, json.dumps(BODY).encode())
    assert not dispatcher.registry.node("n").up


# -- counting tokens (Anthropic count_tokens) never loads a model ----------------------------------

COUNT = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}


async def _fleet(neurons: dict[str, ScriptedNeuron], entry: CatalogueEntry) -> Dispatcher:
    config = GatewayConfig(
        neurons=tuple(NeuronEndpoint(name, f"http://{name}") for name in neurons),
        models=(entry,),
        aliases={"claude-*": "m"},
    )
    clients = {
        endpoint.name: NeuronClient(
            httpx.AsyncClient(transport=httpx.MockTransport(neurons[endpoint.name])), endpoint
        )
        for endpoint in config.neurons
    }
    registry = FleetRegistry(
        [NodeState(name=name, endpoint=f"http://{name}") for name in neurons],
        config.models,
        config.aliases,
        lambda: 0.0,
    )
    poller = Poller(registry, clients, interval_s=60, down_after_misses=2)
    for name in neurons:
        await poller.poll(name)
        neurons[name].seen.clear()
    return Dispatcher(
        config, Scheduler(config, registry, clients, poller), registry, poller, clients
    )


async def test_a_model_not_loaded_is_counted_from_its_source_and_nothing_loads() -> None:
    neuron = ScriptedNeuron(state=None)
    dispatcher = await _fleet({"n": neuron}, CatalogueEntry("m", source="org/repo:Q4_K_M"))
    assert await dispatcher.tokenize("claude-haiku", {**COUNT, "model": "claude-haiku"}) == 7
    assert neuron.seen == ["POST /tokenize"]  # no plan, no load, no unload
    assert neuron.tokenized == [{**COUNT, "source": "org/repo:Q4_K_M"}]  # the real id
    assert dispatcher.scheduler.loads_in_progress() == []
    assert not any(event.kind.startswith("load") for event in dispatcher.registry.events)


async def test_a_ready_replica_counts_and_gets_no_source() -> None:
    neuron = ScriptedNeuron()
    dispatcher = await _fleet({"n": neuron}, CatalogueEntry("m", source="org/repo"))
    assert await dispatcher.tokenize("m", COUNT) == 7
    assert neuron.seen == ["POST /tokenize"] and neuron.tokenized == [COUNT]


async def test_a_replica_gone_since_the_poll_is_polled_again_then_counted_from_the_source() -> None:
    neuron = ScriptedNeuron()
    dispatcher = await _fleet({"n": neuron}, CatalogueEntry("m"))
    neuron.state = None  # unloaded within one poll interval
    gone = _error("model_not_found", "model 'm' is not loaded")
    neuron.tokenize = [(404, gone), (200, {"model": "m", "count": 9})]
    assert await dispatcher.tokenize("m", COUNT) == 9
    assert neuron.seen == ["POST /tokenize", "GET /models", "POST /tokenize"]
    assert neuron.tokenized == [COUNT, {**COUNT, "source": "m"}]


async def test_other_count_errors_pass_through() -> None:
    neuron = ScriptedNeuron(state=None)
    dispatcher = await _fleet({"n": neuron}, CatalogueEntry("m", source="gone.gguf"))
    neuron.tokenize = [(404, _error("source_not_found", "no GGUF named gone.gguf"))]
    with pytest.raises(UpstreamError) as raised:
        await dispatcher.tokenize("m", COUNT)
    assert (raised.value.status, raised.value.code) == (404, "source_not_found")
    assert neuron.seen == ["POST /tokenize"]


async def test_an_unknown_model_is_404_and_no_neuron_is_asked() -> None:
    neuron = ScriptedNeuron(state=None)
    dispatcher = await _fleet({"n": neuron}, CatalogueEntry("m"))
    with pytest.raises(ModelNotFound):
        await dispatcher.tokenize("nope", {**COUNT, "model": "nope"})
    assert neuron.seen == []


async def test_with_no_neuron_up_a_count_is_no_capacity() -> None:
    neuron = ScriptedNeuron(state=None)
    dispatcher = await _fleet({"n": neuron}, CatalogueEntry("m"))
    dispatcher.poller.mark_down("n", "test")
    with pytest.raises(NoCapacity) as raised:
        await dispatcher.tokenize("m", COUNT)
    assert raised.value.status == 503 and raised.value.retry_after
    assert neuron.seen == []


async def test_a_neuron_that_takes_loads_counts_first_and_a_cordoned_one_still_can() -> None:
    a, b = ScriptedNeuron(state=None), ScriptedNeuron(state=None)
    dispatcher = await _fleet({"a": a, "b": b}, CatalogueEntry("m"))
    dispatcher.registry.update_node("a", cordoned=True)
    assert await dispatcher.tokenize("m", COUNT) == 7
    assert (a.seen, b.seen) == ([], ["POST /tokenize"])
    dispatcher.registry.update_node("b", cordoned=True)  # no node takes loads: still counted
    assert await dispatcher.tokenize("m", COUNT) == 7
    assert (a.seen, b.seen) == (["POST /tokenize"], ["POST /tokenize"])


async def test_an_unreachable_neuron_leaves_routing_and_the_next_one_counts() -> None:
    a, b = ScriptedNeuron(state=None), ScriptedNeuron(state=None)
    dispatcher = await _fleet({"a": a, "b": b}, CatalogueEntry("m"))
    a.unreachable = True
    assert await dispatcher.tokenize("m", COUNT) == 7
    assert not dispatcher.registry.node("a").up and b.tokenized == [{**COUNT, "source": "m"}]
    b.unreachable = True
    with pytest.raises(NodeUnavailable):
        await dispatcher.tokenize("m", COUNT)
    assert not dispatcher.registry.node("b").up
