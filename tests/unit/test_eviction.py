"""cortex.fleet.eviction: victim choice (lru, priority), protection rules, idle unloads, defrag.

Every table builds a small fleet with the helpers below; model ids say what a row is about.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest

from cortex.fleet.eviction import (
    Strategy,
    Victim,
    defrag_due,
    evictable,
    idle_unloads,
    plan_eviction,
)
from cortex.fleet.state import (
    FAILED,
    LOADING,
    READY,
    UNLOADING,
    CatalogueEntry,
    FleetSnapshot,
    GpuState,
    ModelSlot,
    NodeState,
)

NOW = 10_000.0


def slot(
    model: str,
    *,
    state: str = READY,
    mb: float = 1000.0,
    used: float | None = None,
    loaded: float | None = 100.0,
    in_flight: int = 0,
    queue: int = 0,
) -> ModelSlot:
    return ModelSlot(
        model_id=model,
        node="?",
        state=state,
        vram_used_mb=mb,
        last_used_at=used,
        loaded_at=loaded,
        in_flight=in_flight,
        queue_depth=queue,
    )


def node(name: str, *slots: ModelSlot, up: bool = True, **kw: object) -> NodeState:
    gpus = (GpuState(0, "gpu0", 24_000.0, 8_000.0),)
    models = tuple(replace(s, node=name) for s in slots)
    return NodeState(name=name, endpoint=f"http://{name}", up=up, gpus=gpus, models=models, **kw)


def fleet(*nodes: NodeState, entries: tuple[CatalogueEntry, ...] = ()) -> FleetSnapshot:
    return FleetSnapshot(
        nodes={n.name: n for n in nodes}, catalogue={e.id: e for e in entries}, aliases={}
    )


def entry(model: str, priority: int = 0, pinned: tuple[str, ...] = ()) -> CatalogueEntry:
    return CatalogueEntry(id=model, priority=priority, pinned_on=pinned)


# --- evictable -------------------------------------------------------------------------------

EVICTABLE_ROWS = [
    # (slot, entries, max_priority, evictable?)
    (slot("idle"), (), None, True),
    (slot("loading", state=LOADING), (), None, False),
    (slot("unloading", state=UNLOADING), (), None, False),
    (slot("failed", state=FAILED), (), None, False),
    (slot("in-flight", in_flight=1), (), None, False),
    (slot("queued", queue=1), (), None, False),
    (slot("pinned-here"), (entry("pinned-here", pinned=("n1",)),), None, False),
    (slot("pinned-elsewhere"), (entry("pinned-elsewhere", pinned=("n2",)),), None, True),
    (slot("higher"), (entry("higher", priority=5),), 4, False),
    (slot("equal"), (entry("equal", priority=4),), 4, True),
    (slot("lower"), (entry("lower", priority=1),), 4, True),
    (slot("uncatalogued"), (), 0, True),  # priority 0 when not in the catalogue
    (slot("any-priority"), (entry("any-priority", priority=99),), None, True),
]


@pytest.mark.parametrize(
    ("the_slot", "entries", "max_priority", "expected"),
    EVICTABLE_ROWS,
    ids=[row[0].model_id for row in EVICTABLE_ROWS],
)
def test_evictable(
    the_slot: ModelSlot,
    entries: tuple[CatalogueEntry, ...],
    max_priority: int | None,
    expected: bool,
) -> None:
    n1 = node("n1", the_slot, slot("filler", mb=1.0))
    snapshot = fleet(n1, entries=entries)
    ids = [s.model_id for s in evictable(n1, snapshot, max_priority=max_priority)]
    assert (the_slot.model_id in ids) is expected
    assert "filler" in ids


# --- plan_eviction ---------------------------------------------------------------------------

OLD, MID, NEW = 1_000.0, 2_000.0, 3_000.0

PLAN_ROWS = [
    # id, slots, entries, need, strategy, max_priority, expected victim ids (None = impossible)
    ("nothing-needed", [slot("a", used=OLD)], (), 0.0, Strategy.LRU, None, []),
    ("negative-need", [slot("a", used=OLD)], (), -5.0, Strategy.LRU, None, []),
    (
        "lru-oldest-first",
        [slot("new", used=NEW), slot("old", used=OLD), slot("mid", used=MID)],
        (),
        900.0,
        Strategy.LRU,
        None,
        ["old"],
    ),
    (
        "lru-smallest-prefix",
        [slot("new", used=NEW), slot("old", used=OLD), slot("mid", used=MID)],
        (),
        1500.0,
        Strategy.LRU,
        None,
        ["old", "mid"],
    ),
    (
        "lru-exact-sum-suffices",
        [slot("old", used=OLD), slot("mid", used=MID), slot("new", used=NEW)],
        (),
        2000.0,
        Strategy.LRU,
        None,
        ["old", "mid"],
    ),
    (
        "lru-loaded-at-when-never-used",
        [slot("used-late", used=NEW), slot("never-used", used=None, loaded=MID)],
        (),
        500.0,
        Strategy.LRU,
        None,
        ["never-used"],
    ),
    (
        "lru-tie-by-model-id",
        [slot("b", used=OLD), slot("a", used=OLD)],
        (),
        500.0,
        Strategy.LRU,
        None,
        ["a"],
    ),
    (
        "lru-ignores-priority",
        [slot("old-important", used=OLD), slot("new-cheap", used=NEW)],
        (entry("old-important", priority=9), entry("new-cheap", priority=0)),
        500.0,
        Strategy.LRU,
        None,
        ["old-important"],
    ),
    (
        "priority-lowest-first",
        [slot("old-important", used=OLD), slot("new-cheap", used=NEW)],
        (entry("old-important", priority=9), entry("new-cheap", priority=0)),
        500.0,
        Strategy.PRIORITY,
        None,
        ["new-cheap"],
    ),
    (
        "priority-tie-oldest-first",
        [slot("p1-new", used=NEW), slot("p1-old", used=OLD), slot("p2", used=OLD - 1)],
        (entry("p1-new", 1), entry("p1-old", 1), entry("p2", 2)),
        1500.0,
        Strategy.PRIORITY,
        None,
        ["p1-old", "p1-new"],
    ),
    (
        "priority-full-tie-by-id",
        [slot("z", used=OLD), slot("y", used=OLD)],
        (entry("z", 1), entry("y", 1)),
        1.0,
        Strategy.PRIORITY,
        None,
        ["y"],
    ),
    (
        "busy-oldest-skipped",
        [
            slot("busy-old", used=OLD, in_flight=1),
            slot("queued", used=OLD, queue=2),
            slot("idle-new", used=NEW),
        ],
        (),
        500.0,
        Strategy.LRU,
        None,
        ["idle-new"],
    ),
    (
        "busy-only-impossible",
        [slot("busy", used=OLD, in_flight=3)],
        (),
        500.0,
        Strategy.LRU,
        None,
        None,
    ),
    (
        "pinned-oldest-skipped",
        [slot("pinned", used=OLD), slot("free", used=NEW)],
        (entry("pinned", pinned=("n1",)),),
        500.0,
        Strategy.LRU,
        None,
        ["free"],
    ),
    (
        "pinned-only-impossible",
        [slot("pinned", used=OLD)],
        (entry("pinned", pinned=("n1",)),),
        500.0,
        Strategy.PRIORITY,
        None,
        None,
    ),
    (
        "max-priority-protects-higher",
        [slot("p5", used=OLD), slot("p2", used=NEW)],
        (entry("p5", 5), entry("p2", 2)),
        500.0,
        Strategy.LRU,
        3,
        ["p2"],
    ),
    (
        "max-priority-blocks-all",
        [slot("p5", used=OLD)],
        (entry("p5", 5),),
        500.0,
        Strategy.PRIORITY,
        3,
        None,
    ),
    (
        "not-enough-in-total",
        [slot("a", used=OLD), slot("b", used=NEW)],
        (),
        2500.0,
        Strategy.LRU,
        None,
        None,
    ),
    (
        "transitional-never",
        [
            slot("loading", state=LOADING, used=OLD),
            slot("unloading", state=UNLOADING),
            slot("failed", state=FAILED, used=OLD),
            slot("ready", used=NEW),
        ],
        (),
        500.0,
        Strategy.LRU,
        None,
        ["ready"],
    ),
    (
        "zero-vram-skipped",
        [slot("cpu-only", used=OLD, mb=0.0), slot("gpu", used=NEW)],
        (),
        500.0,
        Strategy.LRU,
        None,
        ["gpu"],
    ),
]


@pytest.mark.parametrize(
    ("slots", "entries", "need", "strategy", "max_priority", "expected"),
    [row[1:] for row in PLAN_ROWS],
    ids=[row[0] for row in PLAN_ROWS],
)
def test_plan_eviction(
    slots: list[ModelSlot],
    entries: tuple[CatalogueEntry, ...],
    need: float,
    strategy: Strategy,
    max_priority: int | None,
    expected: list[str] | None,
) -> None:
    snapshot = fleet(node("n1", *slots), node("n2", slot("elsewhere", used=0.0)), entries=entries)
    before = copy.deepcopy(snapshot)
    victims = plan_eviction(snapshot, "n1", need, strategy, NOW, max_priority=max_priority)
    assert snapshot == before
    if expected is None:
        assert victims is None
        return
    assert victims is not None
    assert [v.model_id for v in victims] == expected
    assert all(v.node == "n1" and v.reason == strategy.value for v in victims)
    if need > 0:
        assert sum(v.vram_mb for v in victims) >= need
        # minimal: dropping the last victim would not be enough
        assert sum(v.vram_mb for v in victims[:-1]) < need


def test_plan_eviction_victim_carries_slot_vram() -> None:
    snapshot = fleet(node("n1", slot("big", mb=7_500.0, used=OLD)))
    assert plan_eviction(snapshot, "n1", 100.0, Strategy.LRU, NOW) == [
        Victim("big", "n1", 7_500.0, "lru")
    ]


def test_plan_eviction_unknown_node() -> None:
    snapshot = fleet(node("n1", slot("a")))
    assert plan_eviction(snapshot, "nope", 10.0, Strategy.LRU, NOW) is None
    assert plan_eviction(snapshot, "nope", 0.0, Strategy.LRU, NOW) == []


# --- idle_unloads ----------------------------------------------------------------------------

IDLE_AFTER = 600.0
STALE = NOW - IDLE_AFTER - 1  # idle just longer than the limit
FRESH = NOW - IDLE_AFTER + 1

IDLE_ROWS = [
    # id, nodes, entries, idle_after_s, expected (node, model) in order
    ("disabled-zero", [node("n1", slot("a", used=1.0))], (), 0.0, []),
    ("disabled-negative", [node("n1", slot("a", used=1.0))], (), -1.0, []),
    ("stale-unloaded", [node("n1", slot("a", used=STALE))], (), IDLE_AFTER, [("n1", "a")]),
    ("fresh-kept", [node("n1", slot("a", used=FRESH))], (), IDLE_AFTER, []),
    ("exactly-limit-kept", [node("n1", slot("a", used=NOW - IDLE_AFTER))], (), IDLE_AFTER, []),
    (
        "last-used-beats-loaded-at",
        [node("n1", slot("a", used=FRESH, loaded=1.0))],
        (),
        IDLE_AFTER,
        [],
    ),
    (
        "loaded-at-when-never-used",
        [node("n1", slot("a", used=None, loaded=STALE))],
        (),
        IDLE_AFTER,
        [("n1", "a")],
    ),
    ("no-timestamp-kept", [node("n1", slot("a", used=None, loaded=None))], (), IDLE_AFTER, []),
    (
        "pinned-kept",
        [node("n1", slot("pinned", used=1.0))],
        (entry("pinned", pinned=("n1",)),),
        IDLE_AFTER,
        [],
    ),
    (
        "replica-of-pinned-elsewhere-unloaded",
        [node("n2", slot("pinned", used=1.0))],
        (entry("pinned", pinned=("n1",)),),
        IDLE_AFTER,
        [("n2", "pinned")],
    ),
    ("busy-kept", [node("n1", slot("a", used=1.0, in_flight=1))], (), IDLE_AFTER, []),
    ("queued-kept", [node("n1", slot("a", used=1.0, queue=1))], (), IDLE_AFTER, []),
    ("loading-kept", [node("n1", slot("a", state=LOADING, used=1.0))], (), IDLE_AFTER, []),
    ("down-node-skipped", [node("n1", slot("a", used=1.0), up=False)], (), IDLE_AFTER, []),
    (
        "oldest-first-across-nodes",
        [
            node("n1", slot("mid", used=STALE - 50), slot("fresh", used=FRESH)),
            node("n2", slot("old", used=STALE - 100), slot("tie", used=STALE - 50)),
        ],
        (),
        IDLE_AFTER,
        [("n2", "old"), ("n1", "mid"), ("n2", "tie")],
    ),
]


@pytest.mark.parametrize(
    ("nodes", "entries", "idle_after", "expected"),
    [row[1:] for row in IDLE_ROWS],
    ids=[row[0] for row in IDLE_ROWS],
)
def test_idle_unloads(
    nodes: list[NodeState],
    entries: tuple[CatalogueEntry, ...],
    idle_after: float,
    expected: list[tuple[str, str]],
) -> None:
    victims = idle_unloads(fleet(*nodes, entries=entries), NOW, idle_after)
    assert [(v.node, v.model_id) for v in victims] == expected
    assert all(v.reason == "idle" and v.vram_mb == 1000.0 for v in victims)


# --- defrag_due ------------------------------------------------------------------------------

DEFRAG_ROWS = [
    # id, node, after_cycles, expected
    ("disabled", node("n1", slot("a"), evictions_since_defrag=9), 0, False),
    ("too-few", node("n1", slot("a"), evictions_since_defrag=2), 3, False),
    ("exactly-due", node("n1", slot("a"), evictions_since_defrag=3), 3, True),
    ("overdue-empty-node", node("n1", evictions_since_defrag=5), 3, True),
    ("busy", node("n1", slot("a", in_flight=1), evictions_since_defrag=3), 3, False),
    ("queued", node("n1", slot("a", queue=1), evictions_since_defrag=3), 3, False),
    ("loading", node("n1", slot("a", state=LOADING), evictions_since_defrag=3), 3, False),
    ("unloading", node("n1", slot("a", state=UNLOADING), evictions_since_defrag=3), 3, False),
    ("down", node("n1", slot("a"), up=False, evictions_since_defrag=3), 3, False),
    ("draining", node("n1", slot("a"), draining=True, evictions_since_defrag=3), 3, False),
    ("cordoned", node("n1", slot("a"), cordoned=True, evictions_since_defrag=3), 3, False),
]


@pytest.mark.parametrize(
    ("the_node", "after_cycles", "expected"),
    [row[1:] for row in DEFRAG_ROWS],
    ids=[row[0] for row in DEFRAG_ROWS],
)
def test_defrag_due(the_node: NodeState, after_cycles: int, expected: bool) -> None:
    assert defrag_due(the_node, after_cycles) is expected


def test_strategy_parses_config_values() -> None:
    assert Strategy("lru") is Strategy.LRU
    assert Strategy("priority") is Strategy.PRIORITY
    with pytest.raises(ValueError):
        Strategy("fifo")
