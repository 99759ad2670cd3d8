"""Lifecycle routes: /discovery, /health, /models, /models/plan, /models/load, /models/unload.

Every answer is a value of the neuron ⇄ cortex contract (`synapse.contract`), rendered with
`to_json`; the gateway parses it with the same types.

`/models/load` and `/models/unload` need `Authorization: Bearer <token>` when the neuron has a
token; the read-only routes are open so that a gateway and operators can always look.
"""

from __future__ import annotations

import socket
import time
from typing import TypeVar

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from neuron import __version__
from neuron.api.auth import require_token
from neuron.api.schema import require_object
from neuron.errors import InvalidRequest
from neuron.manager import ModelManager
from synapse.contract import (
    ContractError,
    DeviceInfo,
    DeviceStatus,
    Discovery,
    Health,
    LoadRequest,
    PlanRequest,
    Unloaded,
    UnloadRequest,
    parse,
    to_json,
)

bp = Blueprint("lifecycle")
T = TypeVar("T")


def _manager(request: Request) -> ModelManager:
    return request.app.ctx.manager


def _body(kind: type[T], request: Request) -> T:
    """The request body as the contract's `kind`, or a 400 naming the first field off it."""
    try:
        return parse(kind, require_object(request.json))
    except ContractError as exc:
        raise InvalidRequest(f"'{exc.path}' {exc.problem}", param=exc.path) from None


@bp.get("/discovery")
async def discovery(request: Request) -> HTTPResponse:
    probe = request.app.ctx.probe
    offload = request.app.ctx.gpu_offload
    answer = Discovery(
        hostname=socket.gethostname(),
        version=__version__,
        devices=tuple(
            DeviceInfo(d.index, d.name, d.vram_total_mb, d.compute_capability)
            for d in probe.devices()
        ),
        backend="cuda" if offload else "cpu",
        gpu_probe=probe.kind,
        driver_version=probe.driver_version,
        cuda_version=probe.cuda_version,
        cuda_unavailable_reason=None
        if offload
        else probe.backend_reason or "llama-cpp-python was built without GPU offload",
    )
    return json(to_json(answer))


@bp.get("/health")
async def health(request: Request) -> HTTPResponse:
    manager = _manager(request)
    answer = Health(
        status="draining" if manager.draining else "ok",
        uptime_s=round(time.time() - manager.started_at, 1),
        draining=manager.draining,
        devices=tuple(
            DeviceStatus(
                s.index,
                s.vram_total_mb,
                s.vram_used_mb,
                s.vram_free_mb,
                s.utilization_pct,
                s.temp_c,
            )
            for s in request.app.ctx.probe.status()
        ),
        models=manager.health(),
    )
    return json(to_json(answer))


@bp.get("/models")
async def models(request: Request) -> HTTPResponse:
    return json([to_json(resident.describe()) for resident in _manager(request).models.values()])


@bp.post("/models/plan")
async def plan(request: Request) -> HTTPResponse:
    require_token(request)
    asked = _body(PlanRequest, request)
    manager = _manager(request)
    placement = await manager.placement(asked.source_or_id, asked.n_ctx, asked.parallel)
    # What this neuron already does with that id (a load another gateway started, say), so a
    # gateway about to place it elsewhere joins it instead.
    resident = manager.models.get(asked.model)
    state = resident.state if resident is not None else None
    return json(to_json(placement.answer(asked.model, state)))


@bp.post("/models/load")
async def load(request: Request) -> HTTPResponse:
    require_token(request)
    spec = _body(LoadRequest, request)
    resident = await _manager(request).load(spec)
    # The contract's ModelInfo; `model` (= `id`) is kept for scripts written against it.
    return json({"model": spec.model, **to_json(resident.describe())})


@bp.post("/models/unload")
async def unload(request: Request) -> HTTPResponse:
    require_token(request)
    asked = _body(UnloadRequest, request)
    await _manager(request).unload(asked.model, force=asked.force)
    return json(to_json(Unloaded(asked.model)))
