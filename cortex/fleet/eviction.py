"""Which resident models to unload, and when: pure decisions over a `FleetSnapshot`.

Job: given a node and how many MiB of VRAM a cold load needs, pick the models to evict
(`plan_eviction`); list models idle for too long (`idle_unloads`); say when a node has seen
enough evictions that reloading its resident set from scratch is worth it (`defrag_due`). The
scheduler executes these plans, logs each eviction with its `Victim.reason`, and counts it.

Invariants (every function here):
* Only `ready` slots are ever victims. A slot that is loading, unloading or failed is in a
  transition the neuron owns; unloading it from here would race that transition.
* A busy slot (requests in flight or queued) is never a victim: evicting it would cut off a
  client mid-request.
* A model pinned on a node (its catalogue entry's `pinned_on` names that node) is never a victim
  on that node, not even for idleness. A replica of it on another node is an ordinary model.
* Pure: no I/O, no logging, no clock. `now` comes from the caller; inputs are never mutated.

Ordering (`Strategy`), oldest first meaning the smallest `ModelSlot.idle_since()`:
* `lru`: oldest first, ties by model id.
* `priority`: lowest catalogue priority first (a larger number is more important), then oldest,
  then model id. Models absent from the catalogue have priority 0.

Defragmentation (`defrag_after_cycles` = N): VRAM freed by unloading models is not always
reusable as one block, so after N evictions on a node cortex unloads and reloads that node's
whole resident set, once, when the node is quiet: up, accepting loads, and with no slot busy or
in a transition. `defrag_due` only answers "is it time"; the scheduler does the reload and resets
`NodeState.evictions_since_defrag`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from cortex.fleet.state import LOADING, READY, UNLOADING, FleetSnapshot, ModelSlot, NodeState

__all__ = [
    "Reason",
    "Strategy",
    "Victim",
    "defrag_due",
    "evictable",
    "eviction_order",
    "idle_unloads",
    "plan_eviction",
]


class Strategy(StrEnum):
    """The order eviction takes its candidates in (see the module docstring): `lru` or `priority`.
    The value is `[eviction] strategy` in cortex.toml and becomes each `Victim.reason`."""

    LRU = "lru"
    PRIORITY = "priority"


class Reason(StrEnum):
    """Why a model is unloaded: to make room (`lru`, `priority`: the strategy that chose it),
    idleness, a cordon, a defragmentation, or an operator's `manual` unload."""

    LRU = "lru"
    PRIORITY = "priority"
    IDLE = "idle"
    CORDON = "cordon"
    DEFRAG = "defrag"
    MANUAL = "manual"


@dataclass(frozen=True)
class Victim:
    """One model to unload from one node, and why (`Reason`)."""

    model_id: str
    node: str
    vram_mb: float
    reason: Reason


def evictable(
    node: NodeState, snapshot: FleetSnapshot, *, max_priority: int | None
) -> list[ModelSlot]:
    """The slots on `node` that may be unloaded now, in the node's own order.

    Ready, not busy, not pinned on this node, and (when `max_priority` is given) of catalogue
    priority at most `max_priority`, so that a load never pushes out a more important model.
    """
    return [
        slot
        for slot in node.models
        if slot.state == READY
        and not slot.busy
        and node.name not in snapshot.pinned_on(slot.model_id)
        and (max_priority is None or snapshot.priority_of(slot.model_id) <= max_priority)
    ]


def _order_key(
    strategy: Strategy, snapshot: FleetSnapshot, slot: ModelSlot
) -> tuple[int, float, str] | tuple[float, str]:
    if strategy is Strategy.PRIORITY:
        return (snapshot.priority_of(slot.model_id), slot.idle_since(), slot.model_id)
    return (slot.idle_since(), slot.model_id)


def eviction_order(
    snapshot: FleetSnapshot, node: NodeState, strategy: Strategy, *, max_priority: int | None
) -> list[ModelSlot]:
    """The evictable slots on `node` that hold VRAM, in the order `strategy` gives them up.

    Slots holding no VRAM are left out: unloading them would cost a reload later and free
    nothing now."""
    return sorted(
        (
            slot
            for slot in evictable(node, snapshot, max_priority=max_priority)
            if slot.vram_used_mb > 0
        ),
        key=lambda slot: _order_key(strategy, snapshot, slot),
    )


def plan_eviction(
    snapshot: FleetSnapshot,
    node_name: str,
    need_mb: float,
    strategy: Strategy,
    now: float,
    *,
    max_priority: int | None = None,
) -> list[Victim] | None:
    """The victims that free at least `need_mb` MiB of VRAM on `node_name`, or None if impossible.

    The result is the shortest prefix of `eviction_order` whose `vram_used_mb` adds up to
    `need_mb`. `need_mb <= 0` needs nothing: `[]`. An unknown node
    has nothing to evict: None. `now` is accepted for symmetry with the other planners; the
    order depends only on the slots' own timestamps, so it is the same whenever it is asked.
    """
    del now  # ordering uses absolute idle_since(); kept in the signature for a stable API
    if need_mb <= 0:
        return []
    node = snapshot.nodes.get(node_name)
    if node is None:
        return None
    candidates = eviction_order(snapshot, node, strategy, max_priority=max_priority)
    victims: list[Victim] = []
    freed = 0.0
    for slot in candidates:
        victims.append(Victim(slot.model_id, node.name, slot.vram_used_mb, Reason(strategy.value)))
        freed += slot.vram_used_mb
        if freed >= need_mb:
            return victims
    return None


def idle_unloads(snapshot: FleetSnapshot, now: float, idle_after_s: float) -> list[Victim]:
    """Every evictable slot on an up node idle for more than `idle_after_s` seconds.

    `idle_after_s <= 0` disables idle unloading. Slots with no timestamp at all (neither
    `last_used_at` nor `loaded_at`) are kept: their age is unknown, and unloading on missing data
    would throw away a model the neuron may have just loaded. Down nodes are skipped because
    their slots are stale and an unload cannot reach them. Oldest first, then node, then model.
    """
    if idle_after_s <= 0:
        return []
    found: list[tuple[float, str, str, Victim]] = []
    for node in snapshot.nodes.values():
        if not node.up:
            continue
        for slot in evictable(node, snapshot, max_priority=None):
            since = slot.idle_since()
            if since <= 0 or now - since <= idle_after_s:
                continue
            victim = Victim(slot.model_id, node.name, slot.vram_used_mb, Reason.IDLE)
            found.append((since, node.name, slot.model_id, victim))
    return [item[-1] for item in sorted(found, key=lambda item: item[:3])]


def defrag_due(node: NodeState, after_cycles: int) -> bool:
    """True when `node` has had `after_cycles` evictions and is quiet enough to be reloaded.

    Quiet: the node is up and accepts loads (a draining neuron refuses them with 503, and a
    cordoned node is meant to lose its models, not get them back), and no slot on it is busy,
    loading or unloading (a reload in the middle of a transition would fight the neuron).
    `after_cycles <= 0` disables defragmentation.
    """
    if after_cycles <= 0 or node.evictions_since_defrag < after_cycles:
        return False
    if not node.accepts_loads:
        return False
    return not any(slot.busy or slot.state in (LOADING, UNLOADING) for slot in node.models)
