"""Admin routes for the CLI and `cortex top`, plus the public `/health`.

`/admin/*` needs an admin key when `admin_keys` are configured; without admin keys it answers
loopback clients only, so a fresh install is never an open control plane.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import unquote

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from cortex.api import validation
from cortex.config import set_pinned
from cortex.control.registry import FleetRegistry
from cortex.control.scheduler import Scheduler
from cortex.errors import InvalidRequest, ModelNotFound, NotFound
from cortex.fleet.state import EventKind, FleetSnapshot, NodeState

bp = Blueprint("admin")


@bp.get("/health")
async def health(request: Request) -> HTTPResponse:
    snapshot = request.app.ctx.registry.snapshot()
    up = sum(1 for node in snapshot.nodes.values() if node.up)
    return json({"status": "ok", "nodes_up": up, "nodes_total": len(snapshot.nodes)})


@bp.get("/admin/fleet")
async def fleet(request: Request) -> HTTPResponse:
    registry: FleetRegistry = request.app.ctx.registry
    document = fleet_document(registry.snapshot(), registry, request.app.ctx.scheduler)
    document["stats"] = request.app.ctx.metrics.stats.summary(registry.clock())
    return json(document)


def fleet_document(
    snapshot: FleetSnapshot, registry: FleetRegistry, scheduler: Scheduler
) -> dict[str, Any]:
    return {
        "now": registry.clock(),
        "nodes": [_node(node) for node in snapshot.nodes.values()],
        "catalogue": [dataclasses.asdict(entry) for entry in snapshot.catalogue.values()],
        "aliases": dict(snapshot.aliases),
        "loading": scheduler.loads_in_progress(),
        "events": [event.as_dict() for event in list(registry.events)[-50:]],
    }


def _node(node: NodeState) -> dict[str, Any]:
    body = dataclasses.asdict(node)
    body["vram_total_mb"] = node.vram_total_mb
    body["vram_free_mb"] = node.vram_free_mb
    return body


def _body(request: Request) -> dict[str, Any]:
    return validation.json_object(request.body) if request.body else {}


def _node_arg(request: Request, body: dict[str, Any]) -> str | None:
    node = body.get("node")
    if node is not None and not isinstance(node, str):
        raise InvalidRequest("'node' must be a string", param="node")
    if node is not None and node not in request.app.ctx.registry.snapshot().nodes:
        raise NotFound(f"no neuron named {node!r}")
    return node


@bp.post("/admin/models/<model_id:path>/load")
async def load(request: Request, model_id: str) -> HTTPResponse:
    model_id = unquote(model_id)  # ids may contain "/": clients send them URL-encoded
    node = _node_arg(request, _body(request))
    target = await request.app.ctx.scheduler.load_on(model_id, node)
    return json({"model": target.model_id, "node": target.node, "state": "ready"})


@bp.post("/admin/models/<model_id:path>/unload")
async def unload(request: Request, model_id: str) -> HTTPResponse:
    model_id = unquote(model_id)  # ids may contain "/": clients send them URL-encoded
    node = _node_arg(request, _body(request))
    nodes = await request.app.ctx.scheduler.unload(model_id, node)
    return json({"model": model_id, "unloaded_from": nodes})


@bp.post("/admin/models/<model_id:path>/pin")
async def pin(request: Request, model_id: str) -> HTTPResponse:
    model_id = unquote(model_id)  # ids may contain "/": clients send them URL-encoded
    body = _body(request)
    nodes = body.get("nodes")
    if nodes is None:
        node = _node_arg(request, body)
        snapshot = request.app.ctx.registry.snapshot()
        nodes = [node] if node else sorted({s.node for s in snapshot.slots(model_id)})
    if not isinstance(nodes, list) or not nodes or not all(isinstance(n, str) for n in nodes):
        raise InvalidRequest(
            "name the node(s) to pin on: the model is not loaded anywhere", param="nodes"
        )
    return json(_set_pins(request, model_id, nodes))


@bp.post("/admin/models/<model_id:path>/unpin")
async def unpin(request: Request, model_id: str) -> HTTPResponse:
    model_id = unquote(model_id)  # ids may contain "/": clients send them URL-encoded
    return json(_set_pins(request, model_id, []))


def _set_pins(request: Request, model_id: str, nodes: list[str]) -> dict[str, Any]:
    registry: FleetRegistry = request.app.ctx.registry
    snapshot = registry.snapshot()
    model_id = snapshot.resolve(model_id)
    entry = snapshot.entry(model_id)
    if entry is None:
        raise ModelNotFound(f"model {model_id!r} is not in the catalogue", param="model")
    unknown = [n for n in nodes if n not in snapshot.nodes]
    if unknown:
        raise NotFound(f"no neuron named {unknown[0]!r}")
    registry.put_entry(dataclasses.replace(entry, pinned_on=tuple(nodes)))
    config = request.app.ctx.config
    persisted = False
    if config.models_path is not None and config.models_path.exists():
        set_pinned(config.models_path, model_id, nodes)
        persisted = True
    what = f"pinned {model_id} on {', '.join(nodes)}" if nodes else f"unpinned {model_id}"
    registry.record(EventKind.PIN, what, model=model_id)
    return {"model": model_id, "pinned_on": nodes, "persisted": persisted}


# `drain`/`undrain` are the names of the first release, kept as synonyms: in cortex, draining
# is a neuron's own shutdown, and taking a node out of placement is a cordon.
@bp.post("/admin/nodes/<name>/cordon", name="cordon")
@bp.post("/admin/nodes/<name>/drain", name="cordon_as_drain")
async def cordon(request: Request, name: str) -> HTTPResponse:
    name = unquote(name)
    return json(_cordon(request, name, True))


@bp.post("/admin/nodes/<name>/uncordon", name="uncordon")
@bp.post("/admin/nodes/<name>/undrain", name="uncordon_as_undrain")
async def uncordon(request: Request, name: str) -> HTTPResponse:
    name = unquote(name)
    return json(_cordon(request, name, False))


def _cordon(request: Request, name: str, cordoned: bool) -> dict[str, Any]:
    registry: FleetRegistry = request.app.ctx.registry
    if name not in registry.snapshot().nodes:
        raise NotFound(f"no neuron named {name!r}")
    registry.update_node(name, cordoned=cordoned)
    what = "cordoned: no new loads, models move as they go idle" if cordoned else "uncordoned"
    registry.record(
        EventKind.CORDON if cordoned else EventKind.UNCORDON, f"{name} {what}", node=name
    )
    # "drained" is the first release's key, kept for its clients.
    return {"node": name, "cordoned": cordoned, "drained": cordoned}
