"""An in-process fleet of fake neurons for the gateway's effects layer: no sockets, no models.

`FakeNeuron` answers the neuron ⇄ cortex contract (`/discovery`, `/health`, `/models`,
`/models/plan`, `/models/load`, `/models/unload`, and `/v1/chat/completions` with a fixed
answer, noting the `served` model ids) from a small state machine, unless `answers` holds a
JSON value to send for that path instead (an answer off the contract, say): models load after
`load_s` seconds of event-loop time, take their planned VRAM from one fake GPU and give it back
on unload; an unload of a model with requests in flight is the neuron's 409 `model_busy`, and a
second load of an id that is loading joins the first, as the real manager does. `broken` paths
answer bytes that are not JSON. Every request is logged as "METHOD /path" in `seen`.

`Fleet` wires the real `FleetRegistry`, `Poller`, `Scheduler` and `NeuronClient`s over one
`httpx.AsyncClient` whose `MockTransport` sends each request to the neuron its host names.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import httpx

from cortex.config import GatewayConfig, NeuronEndpoint
from cortex.control.dispatcher import Dispatcher
from cortex.control.registry import FleetRegistry
from cortex.control.scheduler import Scheduler
from cortex.fleet.state import CatalogueEntry, NodeState
from cortex.nodes.client import NeuronClient
from cortex.nodes.poller import Poller


@dataclass
class FakeModel:
    """One model a fake neuron holds."""

    state: str
    vram_mb: float
    in_flight: int = 0
    last_used_at: float | None = None
    loaded: asyncio.Future[None] | None = None


@dataclass
class FakeNeuron:
    """See the module docstring. Sizes are MiB; `sizes` gives each model id its full-offload
    size (default `default_mb`)."""

    name: str
    vram_mb: float = 1_000.0
    sizes: dict[str, float] = field(default_factory=dict)
    default_mb: float = 300.0
    load_s: float = 0.05
    models: dict[str, FakeModel] = field(default_factory=dict)
    broken: set[str] = field(default_factory=set)
    answers: dict[str, Any] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)
    served: list[str] = field(default_factory=list)
    uptime_s: float = 100.0

    @property
    def free_mb(self) -> float:
        return self.vram_mb - sum(m.vram_mb for m in self.models.values())

    def calls(self, route: str) -> int:
        """How many requests reached `route` ("GET /discovery")."""
        return sum(1 for entry in self.seen if entry == route or entry.startswith(route + " "))

    def loads(self, model: str | None = None) -> int:
        """How many `/models/load` calls reached this neuron (for `model`, or any)."""
        return sum(
            1
            for entry in self.seen
            if entry.startswith("POST /models/load ") and model in (None, entry.split(" ")[2])
        )

    def hold(self, model_id: str, *, in_flight: int = 0, last_used_at: float = 1.0) -> None:
        """Make `model_id` resident and ready at once."""
        self.models[model_id] = FakeModel(
            "ready", self.sizes.get(model_id, self.default_mb), in_flight, last_used_at
        )

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        body = json.loads(request.content) if request.content else {}
        model = body.get("model", "") if isinstance(body, dict) else ""
        self.seen.append(f"{request.method} {path} {model}".rstrip())
        if path in self.broken:
            return httpx.Response(200, content=b"\xff not json")
        if path in self.answers:
            return httpx.Response(200, json=self.answers[path])
        if path == "/discovery":
            devices = [{"index": 0, "name": "Fake GPU 0", "vram_total_mb": self.vram_mb}]
            return httpx.Response(
                200, json={"hostname": self.name, "backend": "cuda", "devices": devices}
            )
        if path == "/health":
            return httpx.Response(200, json=self._health())
        if path == "/models":
            return httpx.Response(200, json=[self._describe(i, m) for i, m in self.models.items()])
        if path == "/models/plan":
            size = self.sizes.get(model, self.default_mb)
            held = self.models.get(model)
            answer = {"model": model, "state": held.state if held else None, **self._plan(size)}
            return httpx.Response(200, json=answer)
        if path == "/models/load":
            return await self._load(model)
        if path == "/models/unload":
            return self._unload(model)
        if (
            path == "/v1/chat/completions"
            and self.models.get(model, FakeModel("", 0)).state == "ready"
        ):
            self.served.append(model)
            answer = {"choices": [{"message": {"role": "assistant", "content": self.name}}]}
            # A body to be read as a stream, as the gateway reads a neuron's answers.
            return httpx.Response(
                200,
                headers={"content-type": "application/json"},
                stream=httpx.ByteStream(json.dumps(answer).encode()),
            )
        return httpx.Response(404, json=_error("not_found", f"no route {path}"))

    def _health(self) -> dict[str, Any]:
        devices = [
            {
                "index": 0,
                "vram_total_mb": self.vram_mb,
                "vram_used_mb": self.vram_mb - self.free_mb,
                "vram_free_mb": self.free_mb,
            }
        ]
        models = [
            {
                "id": model_id,
                "state": m.state,
                "in_flight": m.in_flight,
                "queue_depth": 0,
                "max_in_flight": 4,
                "last_used_at": m.last_used_at,
            }
            for model_id, m in self.models.items()
        ]
        return {"uptime_s": self.uptime_s, "draining": False, "devices": devices, "models": models}

    @staticmethod
    def _describe(model_id: str, m: FakeModel) -> dict[str, Any]:
        return {
            "id": model_id,
            "state": m.state,
            "vram_used_mb": m.vram_mb,
            "loaded_at": m.last_used_at,
            "n_gpu_layers": 31,
            "n_layers": 30,
        }

    def _plan(self, size: float) -> dict[str, Any]:
        fits = size <= self.free_mb
        return {
            "available_mb": self.free_mb,
            "capacity_mb": self.vram_mb,
            "n_layers": 30,
            "estimate": {
                "full_offload_mb": size,
                "output_mb": 30,
                "compute_mb": 30,
                "per_layer_mb": (size - 60) / 30,
                "host_mb": size,
            },
            "plan": {
                "n_gpu_layers": 31 if fits else 0,
                "fits_fully": fits,
                "device_mb": {"0": size},
            },
        }

    async def _load(self, model_id: str) -> httpx.Response:
        existing = self.models.get(model_id)
        if existing is not None and existing.state == "loading" and existing.loaded is not None:
            await asyncio.shield(existing.loaded)
            return httpx.Response(200, json=self._describe(model_id, existing))
        if existing is not None and existing.state == "ready":
            return httpx.Response(200, json=self._describe(model_id, existing))
        size = self.sizes.get(model_id, self.default_mb)
        if size > self.free_mb:
            return httpx.Response(507, json=_error("insufficient_vram", "does not fit"))
        loaded = asyncio.get_running_loop().create_future()
        slot = FakeModel("loading", size, loaded=loaded)
        self.models[model_id] = slot
        await asyncio.sleep(self.load_s)
        slot.state, slot.last_used_at = "ready", 1.0
        loaded.set_result(None)
        return httpx.Response(200, json=self._describe(model_id, slot))

    def _unload(self, model_id: str) -> httpx.Response:
        slot = self.models.get(model_id)
        if slot is None:
            return httpx.Response(404, json=_error("model_not_found", f"{model_id} is not loaded"))
        if slot.in_flight:
            return httpx.Response(409, json=_error("model_busy", f"{model_id} is busy"))
        del self.models[model_id]
        return httpx.Response(200, json={"model": model_id, "state": "unloaded"})


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "server_error", "code": code}}


class Fleet:
    """A registry, poller and scheduler over fake neurons; `await Fleet.start(...)` polls once.

    `clock` is the registry's and scheduler's clock (a fixed time unless a test moves it)."""

    def __init__(
        self, neurons: list[FakeNeuron], models: list[CatalogueEntry], **config: Any
    ) -> None:
        self.neurons = {n.name: n for n in neurons}
        self.now = 1_000.0
        self.config = GatewayConfig(
            neurons=tuple(NeuronEndpoint(n.name, f"http://{n.name}") for n in neurons),
            models=tuple(models),
            **config,
        )

        async def route(request: httpx.Request) -> httpx.Response:
            return await self.neurons[request.url.host](request)

        self.http = httpx.AsyncClient(transport=httpx.MockTransport(route))
        self.clients = {e.name: NeuronClient(self.http, e) for e in self.config.neurons}
        self.registry = FleetRegistry(
            [NodeState(name=e.name, endpoint=e.endpoint) for e in self.config.neurons],
            self.config.models,
            self.config.aliases,
            self.clock,
        )
        self.poller = Poller(self.registry, self.clients, interval_s=60, down_after_misses=2)
        self.scheduler = Scheduler(
            self.config, self.registry, self.clients, self.poller, clock=self.clock
        )
        self.dispatcher = Dispatcher(
            self.config, self.scheduler, self.registry, self.poller, self.clients
        )

    def clock(self) -> float:
        return self.now

    @classmethod
    async def start(
        cls, neurons: list[FakeNeuron], models: list[CatalogueEntry], **config: Any
    ) -> Fleet:
        fleet = cls(neurons, models, **config)
        await fleet.poller.poll_all()
        return fleet

    def resident(self) -> dict[str, list[str]]:
        """Model ids each fake neuron holds now, sorted."""
        return {name: sorted(n.models) for name, n in self.neurons.items()}

    async def close(self) -> None:
        await self.scheduler.stop()
        await self.http.aclose()
