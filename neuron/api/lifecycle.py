"""Lifecycle routes: /discovery, /health, /models, /models/plan, /models/load, /models/unload.

Every answer is a value of the neuron ⇄ cortex contract (`synapse.contract`), rendered with
`to_json`; the gateway parses it with the same types.

`/models/load` and `/models/unload` need `Authorization: Bearer <token>` when the neuron has a
token; the read-only routes are open so that a gateway and operators can always look.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from neuron import __version__
from neuron.api.auth import require_token
from neuron.api.schema import require_object
from neuron.config import MAX_PARALLEL, ModelSpec
from neuron.errors import InvalidRequest
from neuron.manager import ModelManager
from synapse.contract import (
    DeviceInfo,
    DeviceStatus,
    Discovery,
    Health,
    Unloaded,
    to_json,
)

bp = Blueprint("lifecycle")


def _manager(request: Request) -> ModelManager:
    return request.app.ctx.manager


def _string(body: dict[str, Any], name: str, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"'{name}' must be a non-empty string", param=name)
    return value


def _model_id(body: dict[str, Any]) -> str:
    """The id a model is served under: printable text of at most 256 characters.

    Ids become metric labels and log fields, so control characters and lone surrogates (which
    no UTF-8 encoder accepts) are refused here rather than failing /metrics later."""
    model = _string(body, "model", required=True) or ""
    if len(model) > 256 or not model.isprintable():  # lone surrogates are not printable
        raise InvalidRequest(
            "'model' must be printable text of at most 256 characters", param="model"
        )
    return model


def _positive_int(body: dict[str, Any], name: str, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidRequest(f"'{name}' must be an integer ≥ {minimum}", param=name)
    return value


def _parallel(body: dict[str, Any]) -> int | None:
    value = _positive_int(body, "parallel", 1)
    if value is not None and value > MAX_PARALLEL:
        raise InvalidRequest(f"'parallel' must be at most {MAX_PARALLEL}", param="parallel")
    return value


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
    body = require_object(request.json)
    model = _model_id(body)
    source = _string(body, "source") or model
    manager = _manager(request)
    placement = await manager.placement(source, _positive_int(body, "n_ctx", 16), _parallel(body))
    # What this neuron already does with that id (a load another gateway started, say), so a
    # gateway about to place it elsewhere joins it instead.
    resident = manager.models.get(model)
    state = resident.state if resident is not None else None
    return json(to_json(placement.answer(model, state)))


@bp.post("/models/load")
async def load(request: Request) -> HTTPResponse:
    require_token(request)
    body = require_object(request.json)
    embedding = body.get("embedding", False)
    if not isinstance(embedding, bool):
        raise InvalidRequest("'embedding' must be a boolean", param="embedding")
    n_gpu_layers = body.get("n_gpu_layers")
    if n_gpu_layers is not None and (
        isinstance(n_gpu_layers, bool) or not isinstance(n_gpu_layers, int) or n_gpu_layers < -1
    ):
        raise InvalidRequest("'n_gpu_layers' must be an integer ≥ -1", param="n_gpu_layers")
    min_gpu_layers = body.get("min_gpu_layers")
    if min_gpu_layers is not None and (
        isinstance(min_gpu_layers, bool)
        or not isinstance(min_gpu_layers, int)
        or not 0 <= min_gpu_layers <= 100_000
    ):
        raise InvalidRequest(
            "'min_gpu_layers' must be an integer from 0 to 100000", param="min_gpu_layers"
        )
    spec = ModelSpec(
        id=_model_id(body),
        source=_string(body, "source"),
        n_ctx=_positive_int(body, "n_ctx", 16),
        n_gpu_layers=n_gpu_layers,
        min_gpu_layers=min_gpu_layers,
        embedding=embedding,
        parallel=_parallel(body),
        chat_template=_string(body, "chat_template"),
    )
    resident = await _manager(request).load(spec)
    # The contract's ModelInfo; `model` (= `id`) is kept for scripts written against it.
    return json({"model": spec.id, **to_json(resident.describe())})


@bp.post("/models/unload")
async def unload(request: Request) -> HTTPResponse:
    require_token(request)
    body = require_object(request.json)
    model = _string(body, "model", required=True)
    assert model is not None
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise InvalidRequest("'force' must be a boolean", param="force")
    await _manager(request).unload(model, force=force)
    return json(to_json(Unloaded(model)))
