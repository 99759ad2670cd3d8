"""Where a request for a model goes: pure routing and cold-load placement over a `FleetSnapshot`.

Job, in two phases because ranking cold-load candidates needs each neuron's `/models/plan`
answer, which the (impure) scheduler fetches in between:

1. `route(snapshot, requested, now, exclude=...)` resolves aliases, then answers one of
   `Serve` (a ready replica), `AwaitLoad` (a load of it is already running: join it),
   `NeedsPlacement` (cold: ask these nodes for a plan), `Unknown` (404) or `Unavailable`
   (503 + Retry-After).
2. `place(snapshot, model_id, plans, strategy, now)` ranks the nodes that answered and returns a
   `ColdLoad` (node + models to evict first), `Unknown` (404) or `Unavailable` (503).

Serving (`route`): ready replicas on nodes that are up, not excluded (already tried for this
request) and whose neuron is not draining. A cordoned node still serves what it holds; cordoning
only stops new cold loads there, and its models move away as they go idle. Best replica: least
`slot.load` (in flight + queued), then fewest in flight, then most free VRAM on its node, then
node name.

Placement ranking (`place`), best first, over nodes that answered a plan and accept loads:

1. Pin affinity: a node named in the entry's `pinned_on` beats every other node. Other nodes are
   used only when no pinned node can take the load now (pinned nodes down, cordoned, or blocked
   by models that may not be evicted); a pin is a preference, not a prison.
2. Tier: (a) fits in free VRAM now, no eviction; (b) fits after evicting only models of lower or
   equal priority (`plan_eviction` with the request's priority as `max_priority`), ranked by
   total evicted MiB, then number of victims; (c) a CPU-only node (runs anything, evicts
   nothing); (d) partial GPU offload, only with `allow_partial=True` and only when no node could
   ever hold the model fully (see below).
3. Most available VRAM (`NodePlan.available_mb`), then node name.

The size used is the entry's `vram_mb` (operator override) when set, else the plan's
`full_offload_mb`; with an override, the neuron's `fits_fully` (based on its own estimate) is
ignored in favour of `vram_mb <= available_mb`.

Feasibility rule (final): a model *could ever fit fully* on a GPU node whose total VRAM (sum of
its GPUs) is at least the model's size, and on any CPU-only node. Nodes that cannot take a load
now (down, draining, cordoned) count too, since they may come back, judged from their known
inventory. A candidate GPU node whose inventory the snapshot lacks counts as able to fit it:
unknown capacity must not become a 404.
* Some node could ever fit it, but no candidate can take it now (every option needs evicting
  busy, pinned, loading or higher-priority models) → `Unavailable` with Retry-After. Partial
  offload is never used to dodge a wait: it would pin a slow copy of the model in place.
* No node could ever fit it fully → `Unknown` (404, the message says it exceeds every node's
  VRAM), unless the caller passes `allow_partial=True`, in which case it is loaded partially
  offloaded (`ColdLoad.fits_fully=False`) on the best GPU node by pin affinity, then most
  available VRAM, evicting nothing: evicting other models to run one that spills to RAM anyway
  is a poor trade.

Invariants: pure (no I/O, logging or clock; `now` is an argument); inputs are never mutated;
results are frozen dataclasses; equal inputs give equal answers (every tie is broken by name).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cortex.fleet.eviction import Strategy, Victim, plan_eviction
from cortex.fleet.state import FAILED, LOADING, READY, FleetSnapshot, ModelSlot, NodeState

__all__ = [
    "RETRY_AFTER_S",
    "AwaitLoad",
    "ColdLoad",
    "NeedsPlacement",
    "NodePlan",
    "Serve",
    "Unavailable",
    "Unknown",
    "place",
    "route",
]

# How long a client is told to wait when nothing can take the model now. Loads and busy
# requests typically settle within seconds; ten keeps retries from hammering a full fleet.
RETRY_AFTER_S = 10.0


@dataclass(frozen=True)
class Serve:
    """Send the request to this ready replica."""

    node: str
    model_id: str


@dataclass(frozen=True)
class AwaitLoad:
    """A load of the model is already running on `node`: wait for it, then serve there."""

    node: str
    model_id: str


@dataclass(frozen=True)
class NeedsPlacement:
    """Cold model: ask these nodes' `/models/plan`, then call `place`."""

    model_id: str
    candidates: tuple[str, ...]


@dataclass(frozen=True)
class Unknown:
    """404: not a model the fleet has or could ever hold."""

    model_id: str
    message: str


@dataclass(frozen=True)
class Unavailable:
    """503 + Retry-After: the model exists but nothing can serve or load it now."""

    model_id: str
    message: str
    retry_after_s: float


@dataclass(frozen=True)
class NodePlan:
    """One neuron's `/models/plan` answer, condensed by the scheduler.

    `available_mb` is free VRAM minus the neuron's headroom, summed over its GPUs.
    """

    node: str
    full_offload_mb: float
    available_mb: float
    fits_fully: bool
    has_gpus: bool


@dataclass(frozen=True)
class ColdLoad:
    """Load `model_id` on `node` after unloading `evict` (in order).

    `fits_fully` is False only for a partial GPU offload (some layers run from system RAM); a
    CPU-only node runs the whole model from RAM by design and counts as fitting.
    """

    node: str
    model_id: str
    evict: tuple[Victim, ...]
    fits_fully: bool


def _servable(node: NodeState, exclude: frozenset[str]) -> bool:
    return node.up and not node.draining and node.name not in exclude


def route(
    snapshot: FleetSnapshot,
    requested: str,
    now: float,
    *,
    exclude: frozenset[str] = frozenset(),
) -> Serve | AwaitLoad | NeedsPlacement | Unknown | Unavailable:
    """Decide how to serve `requested` (an id or an alias); see the module docstring."""
    del now  # routing depends on state only; `now` keeps the pure-planner signature uniform
    model_id = snapshot.resolve(requested)
    here: list[tuple[NodeState, ModelSlot]] = [
        (node, slot)
        for node in snapshot.nodes.values()
        if _servable(node, exclude)
        for slot in node.models
        if slot.model_id == model_id
    ]
    ready = [(node, slot) for node, slot in here if slot.state == READY]
    if ready:
        node, _slot = min(
            ready,
            key=lambda ns: (ns[1].load, ns[1].in_flight, -ns[0].vram_free_mb, ns[0].name),
        )
        return Serve(node.name, model_id)
    loading = sorted(node.name for node, slot in here if slot.state == LOADING)
    if loading:
        return AwaitLoad(loading[0], model_id)

    named = model_id if model_id == requested else f"{requested!r} (alias of {model_id!r})"
    if snapshot.entry(model_id) is None:
        # Not loadable by cortex; if some node still holds it (down, draining, excluded or
        # unloading), it may come back, so that is a 503, not a 404.
        if any(slot.state != FAILED for slot in snapshot.slots(model_id)):
            return Unavailable(
                model_id,
                f"model {named} is resident but no replica can serve it now",
                RETRY_AFTER_S,
            )
        return Unknown(
            model_id, f"model {named} is neither in the catalogue nor loaded on any node"
        )
    candidates = tuple(
        sorted(
            node.name
            for node in snapshot.nodes.values()
            if node.accepts_loads and node.name not in exclude
        )
    )
    if not candidates:
        return Unavailable(
            model_id, f"model {named} is not loaded and no node can take a load now", RETRY_AFTER_S
        )
    return NeedsPlacement(model_id, candidates)


# Placement tiers, best first.
_FITS_NOW, _AFTER_EVICT, _CPU, _PARTIAL = range(4)


@dataclass(frozen=True)
class _Option:
    key: tuple
    load: ColdLoad


def _is_cpu_node(node: NodeState) -> bool:
    # Known inventory without GPUs: a discovered CPU host (backend is set once discovered).
    return not node.gpus and node.backend is not None


def _could_ever_fit(node: NodeState, plan: NodePlan | None, need_mb: float) -> bool:
    if plan is not None and not plan.has_gpus:
        return True
    if plan is None and _is_cpu_node(node):
        return True
    if not node.gpus:
        # GPU node whose inventory the snapshot lacks (plan says GPUs, discovery not merged
        # yet): unknown capacity must not turn into a 404.
        return plan is not None
    return need_mb <= node.vram_total_mb


def _blockers(snapshot: FleetSnapshot, node: NodeState, max_priority: int) -> list[str]:
    """Why resident models on `node` cannot be evicted, for the 503 message."""
    why: set[str] = set()
    for slot in node.models:
        if slot.state == LOADING:
            why.add("loading")
        elif slot.busy:
            why.add("busy")
        elif node.name in snapshot.pinned_on(slot.model_id):
            why.add("pinned")
        elif snapshot.priority_of(slot.model_id) > max_priority:
            why.add("higher priority")
    return sorted(why)


def place(
    snapshot: FleetSnapshot,
    model_id: str,
    plans: Mapping[str, NodePlan],
    strategy: Strategy,
    now: float,
    *,
    allow_partial: bool = False,
) -> ColdLoad | Unknown | Unavailable:
    """Choose the node to cold-load `model_id` on from the neurons' plans (keyed by node name).

    Ranking and the feasibility rule are in the module docstring. Plans from nodes missing from
    the snapshot or no longer accepting loads are ignored.
    """
    entry = snapshot.entry(model_id)
    override = entry.vram_mb if entry is not None else None
    priority = snapshot.priority_of(model_id)
    pinned = snapshot.pinned_on(model_id)

    usable = {
        name: plan
        for name, plan in plans.items()
        if name in snapshot.nodes and snapshot.nodes[name].accepts_loads
    }
    if not usable:
        return Unavailable(model_id, f"no node can take a load of {model_id!r} now", RETRY_AFTER_S)

    options: list[_Option] = []
    partial: list[_Option] = []
    blocked: dict[str, list[str]] = {}
    for name, plan in sorted(usable.items()):
        node = snapshot.nodes[name]
        need = override if override is not None else plan.full_offload_mb
        affinity = 0 if name in pinned else 1
        if not plan.has_gpus:
            options.append(
                _Option((affinity, _CPU, 0.0, 0, -plan.available_mb, name), _load(name, model_id))
            )
            continue
        fits_now = need <= plan.available_mb or (override is None and plan.fits_fully)
        if fits_now:
            key = (affinity, _FITS_NOW, 0.0, 0, -plan.available_mb, name)
            options.append(_Option(key, _load(name, model_id)))
            continue
        if not _could_ever_fit(node, plan, need):
            key = (affinity, _PARTIAL, 0.0, 0, -plan.available_mb, name)
            partial.append(_Option(key, _load(name, model_id, fits_fully=False)))
            continue
        victims = plan_eviction(
            snapshot, name, need - plan.available_mb, strategy, now, max_priority=priority
        )
        if victims is None:
            blocked[name] = _blockers(snapshot, node, priority)
            continue
        evicted = sum(victim.vram_mb for victim in victims)
        key = (affinity, _AFTER_EVICT, evicted, len(victims), -plan.available_mb, name)
        options.append(_Option(key, _load(name, model_id, evict=tuple(victims))))

    if options:
        return min(options, key=lambda option: option.key).load

    # Candidates that could ever fit it are exactly the blocked ones; other nodes (down,
    # draining, cordoned) are judged from their inventory, with the smallest estimate we have.
    need_any = override if override is not None else min(p.full_offload_mb for p in usable.values())
    ever = bool(blocked) or any(
        _could_ever_fit(node, None, need_any)
        for name, node in snapshot.nodes.items()
        if name not in usable
    )
    if ever:
        detail = "; ".join(
            f"{name}: {', '.join(why) or 'not enough'}" for name, why in blocked.items()
        )
        suffix = (
            f" (models in the way on {detail})"
            if detail
            else " (the nodes that could hold it are down, draining or cordoned)"
        )
        return Unavailable(
            model_id,
            f"no node can make room for {model_id!r} now{suffix}",
            RETRY_AFTER_S,
        )
    if allow_partial and partial:
        return min(partial, key=lambda option: option.key).load
    largest = max((node.vram_total_mb for node in snapshot.nodes.values()), default=0.0)
    return Unknown(
        model_id,
        f"model {model_id!r} needs {need_any:.0f} MiB of VRAM, more than any node has "
        f"(largest: {largest:.0f} MiB)",
    )


def _load(
    node: str, model_id: str, *, evict: tuple[Victim, ...] = (), fits_fully: bool = True
) -> ColdLoad:
    return ColdLoad(node=node, model_id=model_id, evict=evict, fits_fully=fits_fully)
