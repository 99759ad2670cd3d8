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
only stops new cold loads there, and its models move away as they go idle. Least busy replica:
least `slot.load` (in flight + queued), then fewest in flight, then most free VRAM on its node,
then node name.

Prefix affinity (`prefer`: the node that served this conversation last, see `affinity`): that
replica keeps the conversation, because its KV cache holds the prompt so far, as long as it has
a free decode slot (`load < max_in_flight`) or is at most `AFFINITY_SLACK` requests busier than
the least busy replica (a bounded-load rule: a hot replica sheds new turns to the others rather
than queueing them). `Serve.by` says which rule chose: `affinity` or `load`. A conversation
with no replica of its own yet (`conversation` given, `prefer` None or unusable) goes to the
least busy replica, ties broken by a rendezvous hash of the key and the node name rather than by
free VRAM: new conversations spread evenly over equally idle replicas, and the same key picks
the same replica while the set of replicas is the same.

Placement (`place`) over the nodes that answered a plan and accept loads. Each node offers at
most one option; the best option wins, compared in this order:

1. Pin affinity: a node named in the entry's `pinned_on` beats every other node. Other nodes are
   used only when no pinned node can take the load now; a pin is a preference, not a prison.
2. Tier: (a) full offload in free VRAM now; (b) full offload after evicting only idle models of
   lower or equal priority (`plan_eviction` with the request's priority as `max_priority`),
   fewest evicted MiB, then fewest victims; (c) partial offload: the most layers on GPUs, after
   evicting such models where that buys more layers (the shortest `eviction_order` prefix that
   reaches the most), then fewest evicted MiB; (d) no layer on a GPU: a CPU-only node first,
   then a GPU host with no room left.
3. Most available VRAM (`NodePlan.available_mb`), then node name.

The entry bounds what may be offered (`Offload`): `full` offers only (a) and (b); `partial` no
(d); and `min_gpu_share` drops options with fewer layers than that share of all layers
(rounded up). A load carries that minimum (`ColdLoad.min_gpu_layers`) so that the neuron refuses
it if VRAM shrank between plan and load.

Layers: a plan carries the neuron's own split for its free VRAM now (`gpu_layers`, llama.cpp's
numbering: `n_layers + 1` is every layer). What evictions would add is estimated from the
plan's costs (`NodePlan.layers_within`): the first layer costs the output layer and the compute
buffer, each further one `per_layer_mb`. The neuron plans the real split again when it loads.

Size: the entry's `vram_mb` when set, else the plan's `full_offload_mb`; with an override, the
neuron's `fits_fully` is ignored in favour of `vram_mb <= available_mb`, and layer estimates
are scaled by `vram_mb / full_offload_mb`.

Waiting versus a slower copy: a node where the model would fit fully once the busy or loading
models in the way are done (free VRAM + what those and the idle evictable models of lower or
equal priority hold >= the size) makes waiting worthwhile. Then a partial or CPU option is not
taken, unless it is on a more preferred (pinned) node, and the answer is `Unavailable` with
Retry-After (the scheduler first retries on fresh polls for a while). Down, draining or
cordoned nodes are not waited for.

Nothing to offer now:
* some node could take it under the entry's settings once empty (a GPU node: its usable VRAM,
  the plan's `capacity_mb`, else the inventory's total; a partial or CPU load also needs the
  host RAM its CPU layers take, within `host_total_mb`), judged from the inventory for nodes
  that did not plan → `Unavailable` (503 + Retry-After), naming what is in the way on each node;
* only a placement the entry's settings forbid could ever work → `Refused` (400, with sizes);
* nothing could hold it even on empty nodes → `Unknown` (404, with sizes).
A candidate GPU node whose inventory the snapshot lacks counts as able to hold it: unknown
capacity must not become a 404.

Invariants: pure (no I/O, logging or clock; `now` is an argument); inputs are never mutated;
results are frozen dataclasses; equal inputs give equal answers (every tie is broken by name).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from cortex.fleet.eviction import Reason, Strategy, Victim, eviction_order, plan_eviction
from cortex.fleet.state import (
    FAILED,
    LOADING,
    READY,
    CatalogueEntry,
    FleetSnapshot,
    ModelSlot,
    NodeState,
    Offload,
    offload_text,
)

__all__ = [
    "AFFINITY_SLACK",
    "RETRY_AFTER_S",
    "AwaitLoad",
    "ColdLoad",
    "NeedsPlacement",
    "NodePlan",
    "Refused",
    "Serve",
    "Unavailable",
    "Unknown",
    "place",
    "route",
]

# How long a client is told to wait when nothing can take the model now. Loads and busy
# requests typically settle within seconds; ten keeps retries from hammering a full fleet.
RETRY_AFTER_S = 10.0
# How much busier (in requests) than the least busy replica a conversation's own replica may be
# and still keep it: re-reading a long prompt elsewhere costs more than waiting for one or two.
AFFINITY_SLACK = 2


@dataclass(frozen=True)
class Serve:
    """Send the request to this ready replica, chosen `by` prefix affinity or by load."""

    node: str
    model_id: str
    by: str = "load"


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
class Refused:
    """400: the entry's own settings (`offload`, `min_gpu_share`) rule out every placement the
    fleet could ever make; an operator must change them."""

    model_id: str
    message: str


@dataclass(frozen=True)
class NodePlan:
    """One neuron's `/models/plan` answer, condensed by the scheduler. MiB throughout.

    `available_mb` is free VRAM minus the neuron's headroom, summed over its GPUs, and
    `capacity_mb` the same for empty GPUs (None: unknown). `n_layers` counts repeating layers
    and `gpu_layers` is the neuron's split for `available_mb` (None when it did not say);
    `fixed_gpu_mb` (output layer + compute buffer) and `per_layer_mb` are its cost figures.
    `host_mb` is the host RAM of a CPU-only load; the host figures are None when unknown.
    """

    node: str
    full_offload_mb: float
    available_mb: float
    fits_fully: bool
    has_gpus: bool
    capacity_mb: float | None = None
    n_layers: int | None = None
    gpu_layers: int | None = None
    fixed_gpu_mb: float = 0.0
    per_layer_mb: float = 0.0
    host_mb: float | None = None
    host_total_mb: float | None = None
    host_available_mb: float | None = None

    @property
    def all_layers(self) -> int | None:
        """llama.cpp's `n_gpu_layers` for a full offload."""
        return None if self.n_layers is None else self.n_layers + 1

    def layers_within(self, mb: float, scale: float = 1.0) -> int:
        """Estimated layers that fit in `mb` MiB of VRAM (costs multiplied by `scale`)."""
        if self.n_layers is None:
            return 0
        if mb >= self.full_offload_mb * scale:
            return self.n_layers + 1
        room = mb - self.fixed_gpu_mb * scale
        if room < 0 or self.per_layer_mb <= 0:
            return 0
        return min(self.n_layers, 1 + math.floor(room / (self.per_layer_mb * scale)))

    def host_need_mb(self, layers: int) -> float | None:
        """Estimated host RAM of a load with `layers` on GPUs (None when unknown)."""
        if self.host_mb is None:
            return None
        on_gpu = 0.0 if layers <= 0 else self.fixed_gpu_mb + (layers - 1) * self.per_layer_mb
        return max(0.0, self.host_mb - on_gpu)


@dataclass(frozen=True)
class ColdLoad:
    """Load `model_id` on `node` after unloading `evict` (in order).

    `fits_fully` is False when some layers run from system RAM on a GPU host (a partial offload,
    or none at all); a CPU-only node runs the whole model from RAM by design and counts as
    fitting. `gpu_layers`/`all_layers` are the expected split when the plan gave layer counts;
    `min_gpu_layers` is what the entry's settings require (None: anything goes).
    """

    node: str
    model_id: str
    evict: tuple[Victim, ...]
    fits_fully: bool
    gpu_layers: int | None = None
    all_layers: int | None = None
    min_gpu_layers: int | None = None

    def describe(self) -> str:
        """How it will sit: `full offload`, `18/31 layers on GPU` or `CPU only`."""
        text = offload_text(self.gpu_layers, self.n_layers)
        if text is not None:
            return text
        return "full offload" if self.fits_fully else "partial offload"

    @property
    def n_layers(self) -> int | None:
        return None if self.all_layers is None else self.all_layers - 1


def _servable(node: NodeState, exclude: frozenset[str]) -> bool:
    return node.up and not node.draining and node.name not in exclude


def route(
    snapshot: FleetSnapshot,
    requested: str,
    now: float,
    *,
    exclude: frozenset[str] = frozenset(),
    prefer: str | None = None,
    conversation: str | None = None,
) -> Serve | AwaitLoad | NeedsPlacement | Unknown | Unavailable:
    """Decide how to serve `requested` (an id or an alias), preferring the replica on node
    `prefer` under the affinity rule, for the conversation keyed `conversation`; see the module
    docstring."""
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

        def busy(pair: tuple[NodeState, ModelSlot]) -> tuple[int, int, float, str]:
            node, slot = pair
            spread = (
                -_rendezvous(conversation, node.name)
                if conversation is not None
                else -node.vram_free_mb
            )
            return (slot.load, slot.in_flight, spread, node.name)

        node, least = min(ready, key=busy)
        own = next((slot for n, slot in ready if n.name == prefer), None)
        if (
            prefer is not None
            and own is not None
            and (own.load < own.max_in_flight or own.load - least.load <= AFFINITY_SLACK)
        ):
            return Serve(prefer, model_id, "affinity")
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


def _rendezvous(key: str, node: str) -> int:
    """A stable pseudo-random weight of (conversation, node): highest wins a tie."""
    return int.from_bytes(hashlib.blake2b(f"{key}\0{node}".encode(), digest_size=8).digest())


# Placement tiers, best first.
_FITS_NOW, _AFTER_EVICT, _PARTIAL, _NO_GPU = range(4)
# An option's rank, the smallest best: (affinity, tier, the tier's three tie-breaks, −available
# MiB, node name).
_Key = tuple[int, int, float, float, int, float, str]


@dataclass(frozen=True)
class _Option:
    key: _Key
    load: ColdLoad

    @property
    def affinity(self) -> int:
        return self.key[0]

    @property
    def full(self) -> bool:
        return self.key[1] in (_FITS_NOW, _AFTER_EVICT)


@dataclass(frozen=True)
class _Rules:
    """What the entry allows, and the sizes every node is judged with."""

    offload: Offload
    min_share: float
    override: float | None
    priority: int

    def min_layers(self, plan: NodePlan) -> int:
        """Fewest GPU layers a partial (or CPU) option may have on this plan's model."""
        if plan.all_layers is None:
            return 1 if self.offload is Offload.PARTIAL else 0
        least = math.ceil(self.min_share * plan.all_layers - 1e-9)
        return max(least, 1) if self.offload is Offload.PARTIAL else least

    def need_mb(self, plan: NodePlan) -> float:
        return self.override if self.override is not None else plan.full_offload_mb

    def scale(self, plan: NodePlan) -> float:
        if self.override is None or plan.full_offload_mb <= 0:
            return 1.0
        return self.override / plan.full_offload_mb

    def required_layers(self, plan: NodePlan) -> int | None:
        """What the neuron must still manage when it loads (None: anything goes)."""
        if self.offload is Offload.FULL:
            return plan.all_layers
        least = self.min_layers(plan)
        return least or None


def _rules(entry: CatalogueEntry | None, priority: int) -> _Rules:
    if entry is None:
        return _Rules(Offload.ANY, 0.0, None, priority)
    return _Rules(entry.offload, entry.min_gpu_share, entry.vram_mb, priority)


def _is_cpu_node(node: NodeState) -> bool:
    # Known inventory without GPUs: a discovered CPU host (backend is set once discovered).
    return not node.gpus and node.backend is not None


def _capacity(node: NodeState, plan: NodePlan | None) -> float | None:
    """Usable VRAM of the node when empty; None when unknown."""
    if plan is not None and plan.capacity_mb is not None:
        return plan.capacity_mb
    return node.vram_total_mb if node.gpus else None


def _host_fits(plan: NodePlan, layers: int, host_mb: float | None) -> bool:
    need = plan.host_need_mb(layers)
    return need is None or host_mb is None or need <= host_mb


def _could_ever_take(
    node: NodeState, plan: NodePlan | None, rules: _Rules, need_any: float
) -> bool:
    """Whether the node, emptied, could hold the model under `rules` (see the module docstring).

    A node without a plan is judged from its inventory with `need_any`, the smallest size any
    plan gave."""
    cpu_allowed = rules.offload is Offload.ANY and rules.min_share <= 0
    if (plan is not None and not plan.has_gpus) or (plan is None and _is_cpu_node(node)):
        return cpu_allowed and (plan is None or _host_fits(plan, 0, plan.host_total_mb))
    capacity = _capacity(node, plan)
    if plan is None:
        # Without layer costs only a full-offload rule can rule a GPU node out.
        return rules.offload is not Offload.FULL or capacity is None or need_any <= capacity
    if capacity is None:
        return True  # unknown capacity must not turn into a 404
    need = rules.need_mb(plan)
    if need <= capacity:
        return True
    if rules.offload is Offload.FULL or plan.n_layers is None:
        return False
    layers = plan.layers_within(capacity, rules.scale(plan))
    return layers >= rules.min_layers(plan) and _host_fits(plan, layers, plan.host_total_mb)


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
) -> ColdLoad | Unknown | Unavailable | Refused:
    """Choose the node to cold-load `model_id` on from the neurons' plans (keyed by node name).

    Ranking, the entry's offload rules and the 503/400/404 rules are in the module docstring.
    Plans from nodes missing from the snapshot or no longer accepting loads are ignored.
    """
    rules = _rules(snapshot.entry(model_id), snapshot.priority_of(model_id))
    pinned = snapshot.pinned_on(model_id)
    usable = {
        name: plan
        for name, plan in plans.items()
        if name in snapshot.nodes and snapshot.nodes[name].accepts_loads
    }
    if not usable:
        return Unavailable(model_id, f"no node can take a load of {model_id!r} now", RETRY_AFTER_S)

    options: list[_Option] = []
    waits: list[int] = []  # the affinity of each node where waiting lets it fit fully
    in_way: dict[str, list[str]] = {}  # what stands in the way on nodes without a full option
    for name, plan in sorted(usable.items()):
        node = snapshot.nodes[name]
        affinity = 0 if name in pinned else 1
        option = _full_option(snapshot, node, plan, rules, strategy, now, affinity, model_id)
        if option is None:
            why = _blockers(snapshot, node, rules.priority)
            if plan.has_gpus and _reclaimable(snapshot, node, plan, rules) >= rules.need_mb(plan):
                waits.append(affinity)
            option = _partial_option(snapshot, node, plan, rules, strategy, now, affinity, model_id)
            if option is None and _host_short(plan, rules):
                why.append("host memory")
            if why:
                in_way[name] = why
        if option is not None:
            options.append(option)
    detail = "; ".join(f"{name}: {', '.join(why)}" for name, why in in_way.items())

    if options:
        best = min(options, key=lambda option: option.key)
        if best.full or not any(affinity <= best.affinity for affinity in waits):
            return best.load
        return Unavailable(
            model_id,
            f"{model_id!r} fits fully once the models in the way are done ({detail}); "
            "a slower partial copy is not loaded meanwhile",
            RETRY_AFTER_S,
        )

    need_any = min(rules.need_mb(plan) for plan in usable.values())

    def ever(under: _Rules) -> bool:
        return any(
            _could_ever_take(node, usable.get(name), under, need_any)
            for name, node in snapshot.nodes.items()
        )

    if ever(rules):
        if detail:
            why_not = f"models in the way on {detail}"
        elif any(_could_ever_take(n, None, rules, need_any) for n in _unusable(snapshot, usable)):
            why_not = "the nodes that could hold it are down, draining or cordoned"
        else:
            why_not = "not enough free memory on any node"
        return Unavailable(
            model_id, f"no node can make room for {model_id!r} now ({why_not})", RETRY_AFTER_S
        )
    sizes = _sizes(snapshot, usable, need_any)
    if ever(replace(rules, offload=Offload.ANY, min_share=0.0)):
        setting = (
            'offload = "full"'
            if rules.offload is Offload.FULL
            else f'offload = "{rules.offload.value}", min_gpu_share = {rules.min_share:g}'
        )
        return Refused(
            model_id,
            f"model {model_id!r} has {setting} in the catalogue, and no node can hold that "
            f"much of it on GPUs even when empty ({sizes})",
        )
    return Unknown(model_id, f"model {model_id!r} is larger than any node can hold ({sizes})")


def _unusable(snapshot: FleetSnapshot, usable: Mapping[str, NodePlan]) -> list[NodeState]:
    return [node for name, node in snapshot.nodes.items() if name not in usable]


def _host_short(plan: NodePlan, rules: _Rules) -> bool:
    """No partial or CPU option only for want of host RAM now (the host could hold it)."""
    if rules.offload is Offload.FULL or plan.host_available_mb is None:
        return False
    layers = plan.gpu_layers if plan.gpu_layers is not None else 0
    return not _host_fits(plan, layers, plan.host_available_mb) and _host_fits(
        plan, layers, plan.host_total_mb
    )


def _sizes(snapshot: FleetSnapshot, usable: Mapping[str, NodePlan], need: float) -> str:
    largest = max(
        (_capacity(node, usable.get(name)) or 0.0 for name, node in snapshot.nodes.items()),
        default=0.0,
    )
    text = f"needs {need:.0f} MiB of VRAM, largest: {largest:.0f} MiB"
    hosts = [p.host_mb for p in usable.values() if p.host_mb is not None]
    totals = [p.host_total_mb for p in usable.values() if p.host_total_mb is not None]
    if hosts and totals:
        text += f"; {min(hosts):.0f} MiB of RAM on a CPU, largest host: {max(totals):.0f} MiB"
    return text


def _reclaimable(snapshot: FleetSnapshot, node: NodeState, plan: NodePlan, rules: _Rules) -> float:
    """Free VRAM plus what the models that may give way hold, counting busy and loading ones
    only if one of them is in the way (else 0: nothing a wait would change)."""
    later = [
        slot
        for slot in node.models
        if slot.state in (READY, LOADING)
        and node.name not in snapshot.pinned_on(slot.model_id)
        and snapshot.priority_of(slot.model_id) <= rules.priority
    ]
    if not any(slot.busy or slot.state == LOADING for slot in later):
        return 0.0
    return plan.available_mb + sum(slot.vram_used_mb for slot in later)


def _full_option(
    snapshot: FleetSnapshot,
    node: NodeState,
    plan: NodePlan,
    rules: _Rules,
    strategy: Strategy,
    now: float,
    affinity: int,
    model_id: str,
) -> _Option | None:
    if not plan.has_gpus:
        return None
    need = rules.need_mb(plan)
    load = _load(node.name, model_id, plan, rules, plan.all_layers)
    if need <= plan.available_mb or (rules.override is None and plan.fits_fully):
        return _Option((affinity, _FITS_NOW, 0.0, 0, 0, -plan.available_mb, node.name), load)
    victims = plan_eviction(
        snapshot, node.name, need - plan.available_mb, strategy, now, max_priority=rules.priority
    )
    if victims is None:
        return None
    evicted = sum(victim.vram_mb for victim in victims)
    key = (affinity, _AFTER_EVICT, evicted, len(victims), 0, -plan.available_mb, node.name)
    return _Option(key, replace(load, evict=tuple(victims)))


def _partial_option(
    snapshot: FleetSnapshot,
    node: NodeState,
    plan: NodePlan,
    rules: _Rules,
    strategy: Strategy,
    now: float,
    affinity: int,
    model_id: str,
) -> _Option | None:
    if rules.offload is Offload.FULL:
        return None
    if not plan.has_gpus:
        if rules.min_layers(plan) > 0 or not _host_fits(plan, 0, plan.host_available_mb):
            return None
        load = ColdLoad(node.name, model_id, (), fits_fully=True, gpu_layers=None)
        key = (affinity, _NO_GPU, 0, 0.0, 0, -(plan.host_available_mb or 0.0), node.name)
        return _Option(key, load)
    if plan.n_layers is None:
        return None  # a neuron that gives no layer counts: nothing to rank a split by
    scale = rules.scale(plan)
    now_layers = (
        plan.gpu_layers
        if plan.gpu_layers is not None and rules.override is None
        else plan.layers_within(plan.available_mb, scale)
    )
    layers = min(now_layers, plan.n_layers)
    victims: tuple[Victim, ...] = ()
    freed = 0.0
    prefix: list[Victim] = []
    for slot in eviction_order(snapshot, node, strategy, max_priority=rules.priority):
        prefix.append(Victim(slot.model_id, node.name, slot.vram_used_mb, Reason(strategy.value)))
        freed += slot.vram_used_mb
        more = min(plan.layers_within(plan.available_mb + freed, scale), plan.n_layers)
        if more > layers:
            layers, victims = more, tuple(prefix)
    if layers < rules.min_layers(plan) or not _host_fits(plan, layers, plan.host_available_mb):
        return None
    evicted = sum(victim.vram_mb for victim in victims)
    load = _load(node.name, model_id, plan, rules, layers, evict=victims)
    if layers == 0:
        key = (affinity, _NO_GPU, 1, 0.0, 0, -plan.available_mb, node.name)
        return _Option(key, load)
    key = (affinity, _PARTIAL, -layers, evicted, len(victims), -plan.available_mb, node.name)
    return _Option(key, load)


def _load(
    node: str,
    model_id: str,
    plan: NodePlan,
    rules: _Rules,
    layers: int | None,
    *,
    evict: tuple[Victim, ...] = (),
) -> ColdLoad:
    all_layers = plan.all_layers
    return ColdLoad(
        node=node,
        model_id=model_id,
        evict=evict,
        fits_fully=layers is None or all_layers is None or layers >= all_layers,
        gpu_layers=layers,
        all_layers=all_layers,
        min_gpu_layers=rules.required_layers(plan),
    )
