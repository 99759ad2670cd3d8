"""Pure: the `/v1/models` view of a fleet snapshot.

Every catalogue model and every model resident anywhere appears once, plus one entry per
alias (not per alias pattern: it names no model), in the OpenAI list shape with cortex's extra
fields: `loaded`, `locations` [{node, state, offload}] (`offload` says how the replica sits:
`full offload`, `18/31 layers on GPU`, `CPU only`), `feasible_on` (up nodes that take loads and
could hold it under the entry's `offload` setting: with `full` only GPU nodes with enough VRAM,
with `partial` any GPU node, with `any` every node), `n_ctx`, `pinned`.
"""

from __future__ import annotations

from typing import Any

from cortex.fleet.state import READY, FleetSnapshot, Offload, is_pattern


def model_view(
    snapshot: FleetSnapshot, model_id: str, *, alias_of: str | None = None
) -> dict[str, Any]:
    """One model's entry; with `alias_of`, the entry for that alias of `model_id`."""
    entry = snapshot.entry(model_id)
    slots = snapshot.slots(model_id)
    up_slots = [s for s in slots if snapshot.nodes[s.node].up]
    need = entry.vram_mb if entry and entry.vram_mb else _known_estimate(snapshot, model_id)
    offload = entry.offload if entry else Offload.ANY
    feasible = [
        node.name
        for node in snapshot.nodes.values()
        if node.accepts_loads
        and (
            offload is Offload.ANY
            or (
                node.gpus
                and (offload is Offload.PARTIAL or need is None or need <= node.vram_total_mb)
            )
        )
    ]
    loaded_at = [s.loaded_at for s in up_slots if s.loaded_at]
    view: dict[str, Any] = {
        "id": alias_of or model_id,
        "object": "model",
        "created": int(min(loaded_at)) if loaded_at else 0,
        "owned_by": "cortex",
        "loaded": any(s.state == READY for s in up_slots),
        "locations": [{"node": s.node, "state": s.state, "offload": s.offload} for s in up_slots],
        "feasible_on": feasible if entry else [s.node for s in up_slots],
        "n_ctx": entry.n_ctx if entry else None,
        "pinned": list(entry.pinned_on) if entry else [],
    }
    if alias_of is not None:
        view["alias_for"] = model_id
    return view


def _known_estimate(snapshot: FleetSnapshot, model_id: str) -> float | None:
    estimates = [s.estimate_mb for s in snapshot.slots(model_id) if s.estimate_mb]
    return max(estimates) if estimates else None


def model_ids(snapshot: FleetSnapshot) -> list[str]:
    ids = list(snapshot.catalogue)
    for node in snapshot.nodes.values():
        if node.up:
            ids += [s.model_id for s in node.models if s.model_id not in ids]
    return ids


def catalogue_view(snapshot: FleetSnapshot) -> dict[str, Any]:
    data = [model_view(snapshot, model_id) for model_id in model_ids(snapshot)]
    data += [  # patterns name no model a client could list; they resolve requests only
        model_view(snapshot, target, alias_of=alias)
        for alias, target in snapshot.aliases.items()
        if not is_pattern(alias)
    ]
    return {"object": "list", "data": data}
