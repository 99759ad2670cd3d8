"""cortex.fleet.routing: replica choice (`route`) and cold-load placement (`place`).

Tables over small fleets built with the helpers below. VRAM figures are MiB; node names say what
a node is for in a row (`big`, `small`, `cpu`, ...); ties are broken by name, so rows that test a
tie use names whose order differs from what the other criteria would pick.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest

from cortex.fleet.eviction import Strategy, Victim
from cortex.fleet.routing import (
    RETRY_AFTER_S,
    AwaitLoad,
    ColdLoad,
    NeedsPlacement,
    NodePlan,
    Refused,
    Serve,
    Unavailable,
    Unknown,
    place,
    route,
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
    Offload,
)

NOW = 10_000.0
M = "m"  # the requested model in most rows


def slot(
    model: str = M,
    *,
    state: str = READY,
    mb: float = 4_000.0,
    used: float = 1_000.0,
    in_flight: int = 0,
    queue: int = 0,
    cap: int = 1,
) -> ModelSlot:
    return ModelSlot(
        max_in_flight=cap,
        model_id=model,
        node="?",
        state=state,
        vram_used_mb=mb,
        last_used_at=used,
        loaded_at=used,
        in_flight=in_flight,
        queue_depth=queue,
    )


def node(
    name: str,
    *slots: ModelSlot,
    total: float = 24_000.0,
    free: float = 8_000.0,
    cpu: bool = False,
    up: bool = True,
    draining: bool = False,
    cordoned: bool = False,
) -> NodeState:
    gpus = () if cpu else (GpuState(0, "gpu0", total, min(free, total)),)
    return NodeState(
        name=name,
        endpoint=f"http://{name}:13131",
        up=up,
        draining=draining,
        cordoned=cordoned,
        backend="cpu" if cpu else "cuda",
        gpus=gpus,
        models=tuple(replace(s, node=name) for s in slots),
    )


def entry(
    model: str = M,
    *,
    priority: int = 0,
    pinned: tuple[str, ...] = (),
    vram: float | None = None,
    offload: Offload = Offload.ANY,
    share: float = 0.0,
) -> CatalogueEntry:
    return CatalogueEntry(
        id=model,
        priority=priority,
        pinned_on=pinned,
        vram_mb=vram,
        offload=offload,
        min_gpu_share=share,
    )


def fleet(
    *nodes: NodeState,
    entries: tuple[CatalogueEntry, ...] = (entry(),),
    aliases: dict[str, str] | None = None,
) -> FleetSnapshot:
    return FleetSnapshot(
        nodes={n.name: n for n in nodes},
        catalogue={e.id: e for e in entries},
        aliases=aliases or {},
    )


FIXED_MB = 600.0  # output layer + compute buffer in the layered plans below


def plan(
    name: str,
    available: float,
    *,
    full: float = 6_000.0,
    gpus: bool = True,
    fits: bool | None = None,
    layers: int | None = None,
    gpu: int | None = None,
    capacity: float | None = None,
    host: tuple[float, float, float] | None = None,
) -> NodePlan:
    """A neuron's plan; with `layers` (repeating layers) it carries layer costs: the first layer
    costs FIXED_MB and each further one an equal share of the rest. `gpu` is the neuron's own
    split now (default: whole layers within `available`); `host` is (need of a CPU-only load,
    host total, host available)."""
    per_layer = (full - FIXED_MB) / layers if layers else 0.0
    if layers is not None and gpu is None:
        gpu = (
            layers + 1
            if available >= full
            else (0 if available < FIXED_MB else 1 + int((available - FIXED_MB) // per_layer))
        )
    need, total, free = host if host is not None else (None, None, None)
    return NodePlan(
        node=name,
        full_offload_mb=full,
        available_mb=available,
        fits_fully=(full <= available) if fits is None else fits,
        has_gpus=gpus,
        capacity_mb=capacity,
        n_layers=layers,
        gpu_layers=gpu if gpus else None,
        fixed_gpu_mb=FIXED_MB if layers else 0.0,
        per_layer_mb=per_layer,
        host_mb=need,
        host_total_mb=total,
        host_available_mb=free,
    )


# --- route: serving ready replicas -----------------------------------------------------------

ROUTE_ROWS = [
    # id, nodes, exclude, expected
    ("single-replica", [node("a", slot())], frozenset(), Serve("a", M)),
    (
        "least-busy",
        [node("a", slot(in_flight=2)), node("b", slot(in_flight=1))],
        frozenset(),
        Serve("b", M),
    ),
    (
        "queue-counts-as-busy",
        [node("a", slot(in_flight=1, queue=3)), node("b", slot(in_flight=2))],
        frozenset(),
        Serve("b", M),
    ),
    (
        "tie-load-fewest-in-flight",
        [node("a", slot(in_flight=2, queue=0)), node("b", slot(in_flight=1, queue=1))],
        frozenset(),
        Serve("b", M),
    ),
    (
        "tie-then-most-free-vram",
        [node("a", slot(), free=1_000.0), node("b", slot(), free=9_000.0)],
        frozenset(),
        Serve("b", M),
    ),
    (
        "full-tie-node-name",
        [node("b", slot()), node("a", slot())],
        frozenset(),
        Serve("a", M),
    ),
    (
        "excluded-replica-skipped",
        [node("a", slot()), node("b", slot(in_flight=5))],
        frozenset({"a"}),
        Serve("b", M),
    ),
    (
        "draining-neuron-not-served",
        [node("a", slot(), draining=True), node("b", slot(in_flight=5))],
        frozenset(),
        Serve("b", M),
    ),
    (
        "down-node-not-served",
        [node("a", slot(), up=False), node("b", slot(in_flight=5))],
        frozenset(),
        Serve("b", M),
    ),
    (
        "cordoned-still-serves",
        [node("a", slot(), cordoned=True), node("b", slot(in_flight=5))],
        frozenset(),
        Serve("a", M),
    ),
    (
        "ready-beats-loading",
        [node("a", slot(state=LOADING)), node("b", slot(in_flight=9))],
        frozenset(),
        Serve("b", M),
    ),
    ("await-load", [node("a", slot(state=LOADING))], frozenset(), AwaitLoad("a", M)),
    (
        "await-load-on-up-node-only",
        [node("a", slot(state=LOADING), up=False), node("b", slot(state=LOADING))],
        frozenset(),
        AwaitLoad("b", M),
    ),
    (
        "excluded-load-not-awaited",
        [node("a", slot(state=LOADING)), node("b")],
        frozenset({"a"}),
        NeedsPlacement(M, ("b",)),
    ),
    (
        "cold-candidates-accept-loads",
        [
            node("d"),
            node("a", draining=True),
            node("b", cordoned=True),
            node("c", up=False),
            node("e"),
        ],
        frozenset(),
        NeedsPlacement(M, ("d", "e")),
    ),
    (
        "cold-candidates-minus-excluded",
        [node("a"), node("b"), node("c")],
        frozenset({"b"}),
        NeedsPlacement(M, ("a", "c")),
    ),
    (
        "unservable-replicas-mean-cold-load",
        [
            node("a", slot(state=UNLOADING)),
            node("b", slot(state=FAILED)),
            node("c", slot(), draining=True),
        ],
        frozenset(),
        NeedsPlacement(M, ("a", "b")),
    ),
]


@pytest.mark.parametrize(
    ("nodes", "exclude", "expected"),
    [row[1:] for row in ROUTE_ROWS],
    ids=[row[0] for row in ROUTE_ROWS],
)
def test_route(nodes: list[NodeState], exclude: frozenset[str], expected: object) -> None:
    snapshot = fleet(*nodes)
    before = copy.deepcopy(snapshot)
    assert route(snapshot, M, NOW, exclude=exclude) == expected
    assert snapshot == before


AFFINITY_ROWS = [
    # id, nodes, prefer, expected
    (
        "own-replica-idle",
        [node("a", slot()), node("b", slot())],
        "b",
        Serve("b", M, "affinity"),
    ),
    (
        "own-replica-has-a-free-slot-though-busier",
        [node("a", slot(cap=4)), node("b", slot(in_flight=3, cap=4))],
        "b",
        Serve("b", M, "affinity"),
    ),
    (
        "own-replica-full-but-within-slack",
        [node("a", slot(in_flight=2, cap=4)), node("b", slot(in_flight=4, cap=4))],
        "b",
        Serve("b", M, "affinity"),
    ),
    (
        "hot-replica-sheds-to-the-least-busy",
        [node("a", slot(cap=4)), node("b", slot(in_flight=4, queue=2, cap=4))],
        "b",
        Serve("a", M),
    ),
    (
        "just-past-the-slack",
        [node("a", slot(in_flight=1, cap=1)), node("b", slot(in_flight=4, cap=1))],
        "b",
        Serve("a", M),
    ),
    (
        "own-node-excluded-or-gone-is-by-load",
        [node("a", slot()), node("b", slot(in_flight=1))],
        "c",
        Serve("a", M),
    ),
    (
        "own-node-draining",
        [node("a", slot(in_flight=1)), node("b", slot(), draining=True)],
        "b",
        Serve("a", M),
    ),
    (
        "own-replica-still-loading",
        [node("a", slot(in_flight=2)), node("b", slot(state=LOADING))],
        "b",
        Serve("a", M),
    ),
    ("no-preference", [node("a", slot(in_flight=1)), node("b", slot())], None, Serve("b", M)),
]


@pytest.mark.parametrize(
    ("nodes", "prefer", "expected"),
    [row[1:] for row in AFFINITY_ROWS],
    ids=[row[0] for row in AFFINITY_ROWS],
)
def test_route_prefers_the_conversations_replica_within_bounds(
    nodes: list[NodeState], prefer: str | None, expected: Serve
) -> None:
    assert route(fleet(*nodes), M, NOW, prefer=prefer) == expected


def test_route_resolves_alias_before_routing() -> None:
    snapshot = fleet(
        node("a", slot("org/model-7b")),
        entries=(entry("org/model-7b"),),
        aliases={"fast": "org/model-7b"},
    )
    assert route(snapshot, "fast", NOW) == Serve("a", "org/model-7b")
    cold = fleet(node("a"), entries=(entry("org/model-7b"),), aliases={"fast": "org/model-7b"})
    assert route(cold, "fast", NOW) == NeedsPlacement("org/model-7b", ("a",))


def test_route_unknown_model_is_404() -> None:
    result = route(fleet(node("a", slot("other")), aliases={"x": "gone"}), "x", NOW)
    assert isinstance(result, Unknown)
    assert result.model_id == "gone"
    assert "'x'" in result.message and "catalogue" in result.message


def test_route_uncatalogued_but_served_where_loaded() -> None:
    snapshot = fleet(node("a", slot("adhoc")), entries=())
    assert route(snapshot, "adhoc", NOW) == Serve("a", "adhoc")


@pytest.mark.parametrize(
    ("the_slot", "node_kw", "kind"),
    [
        (slot("adhoc"), {"up": False}, Unavailable),  # its node may come back
        (slot("adhoc", state=UNLOADING), {}, Unavailable),
        (slot("adhoc"), {"draining": True}, Unavailable),
        (slot("adhoc", state=FAILED), {}, Unknown),  # a failed load holds nothing
    ],
    ids=["down", "unloading", "draining", "failed"],
)
def test_route_uncatalogued_resident_but_unservable(
    the_slot: ModelSlot, node_kw: dict[str, bool], kind: type
) -> None:
    result = route(fleet(node("a", the_slot, **node_kw), entries=()), "adhoc", NOW)
    assert isinstance(result, kind)
    if isinstance(result, Unavailable):
        assert result.retry_after_s == RETRY_AFTER_S


@pytest.mark.parametrize(
    ("nodes", "exclude"),
    [
        ([node("a", cordoned=True), node("b", draining=True), node("c", up=False)], frozenset()),
        ([node("a"), node("b")], frozenset({"a", "b"})),
        ([], frozenset()),
    ],
    ids=["none-accept-loads", "all-excluded", "empty-fleet"],
)
def test_route_cold_with_no_candidate_is_503(
    nodes: list[NodeState], exclude: frozenset[str]
) -> None:
    result = route(fleet(*nodes), M, NOW, exclude=exclude)
    assert isinstance(result, Unavailable)
    assert result.retry_after_s == RETRY_AFTER_S == 10.0
    assert "no node can take a load now" in result.message


# --- place: ranking --------------------------------------------------------------------------

# Resident models used to force evictions. Each holds 4 000 MiB on its node.
LOW = entry("low", priority=0)
HIGH = entry("high", priority=9)
PIN_X = entry("pinned-x", pinned=("x",))


def cold(
    name: str, evict: tuple[str, ...] = (), fits: bool = True, reason: str = "lru"
) -> ColdLoad:
    return ColdLoad(name, M, tuple(Victim(v, name, 4_000.0, reason) for v in evict), fits)


PLACE_ROWS = [
    # id, nodes, entries, plans, strategy, expected
    (
        "fits-now-most-available",
        [node("a"), node("b")],
        (entry(),),
        [plan("a", 7_000.0), plan("b", 9_000.0)],
        Strategy.LRU,
        cold("b"),
    ),
    (
        "fits-now-tie-by-name",
        [node("b"), node("a")],
        (entry(),),
        [plan("b", 9_000.0), plan("a", 9_000.0)],
        Strategy.LRU,
        cold("a"),
    ),
    (
        "fits-now-beats-eviction-with-more-room",
        [node("a", slot("low")), node("b")],
        (entry(), LOW),
        [plan("a", 5_000.0), plan("b", 6_000.0)],
        Strategy.LRU,
        cold("b"),
    ),
    (
        "neuron-fits-fully-trusted-without-override",
        [node("a"), node("b")],
        (entry(),),
        [plan("a", 5_900.0, fits=True), plan("b", 5_000.0)],
        Strategy.LRU,
        cold("a"),
    ),
    (
        "after-eviction-fewest-mb",
        [
            node("a", slot("low", used=1.0), slot("low2", used=2.0)),
            node("b", slot("low", used=1.0)),
        ],
        (entry(), LOW, entry("low2")),
        [plan("a", 1_000.0), plan("b", 3_000.0)],
        Strategy.LRU,
        cold("b", ("low",)),
    ),
    (
        "after-eviction-fewest-mb-beats-fewest-victims",
        [
            node("a", slot("huge", mb=8_000.0)),
            node("b", slot("s1", mb=2_000.0, used=1.0), slot("s2", mb=2_000.0, used=2.0)),
        ],
        (entry(), entry("huge"), entry("s1"), entry("s2")),
        [plan("a", 3_000.0), plan("b", 3_000.0)],
        Strategy.LRU,
        ColdLoad(
            "b", M, (Victim("s1", "b", 2_000.0, "lru"), Victim("s2", "b", 2_000.0, "lru")), True
        ),
    ),
    (
        "after-eviction-same-mb-fewest-victims",
        [
            node("a", slot("s1", mb=2_000.0, used=1.0), slot("s2", mb=2_000.0, used=2.0)),
            node("b", slot("one", mb=4_000.0)),
        ],
        (entry(), entry("one"), entry("s1"), entry("s2")),
        [plan("a", 3_000.0), plan("b", 2_500.0)],
        Strategy.LRU,
        ColdLoad("b", M, (Victim("one", "b", 4_000.0, "lru"),), True),
    ),
    (
        "after-eviction-tie-most-available",
        [node("a", slot("low")), node("b", slot("low"))],
        (entry(), LOW),
        [plan("a", 2_500.0), plan("b", 3_000.0)],
        Strategy.LRU,
        cold("b", ("low",)),
    ),
    (
        "lru-evicts-oldest",
        [node("a", slot("new", used=900.0), slot("old", used=100.0))],
        (entry(), entry("new"), entry("old")),
        [plan("a", 3_000.0)],
        Strategy.LRU,
        cold("a", ("old",)),
    ),
    (
        "priority-evicts-lowest",
        [node("a", slot("old-p2", used=100.0), slot("new-p1", used=900.0))],
        (entry(priority=5), entry("old-p2", priority=2), entry("new-p1", priority=1)),
        [plan("a", 3_000.0)],
        Strategy.PRIORITY,
        cold("a", ("new-p1",), reason="priority"),
    ),
    (
        "equal-priority-may-be-evicted",
        [node("a", slot("peer"))],
        (entry(priority=3), entry("peer", priority=3)),
        [plan("a", 3_000.0)],
        Strategy.PRIORITY,
        cold("a", ("peer",), reason="priority"),
    ),
    (
        "higher-priority-resident-sends-load-elsewhere",
        [node("a", slot("high")), node("b", slot("low"))],
        (entry(priority=1), HIGH, LOW),
        [plan("a", 3_000.0), plan("b", 2_000.0)],
        Strategy.PRIORITY,
        cold("b", ("low",), reason="priority"),
    ),
    (
        "busy-resident-sends-load-elsewhere",
        [node("a", slot("low", in_flight=1, used=1.0)), node("b", slot("low2", used=999.0))],
        (entry(), LOW, entry("low2")),
        [plan("a", 3_000.0), plan("b", 2_000.0)],
        Strategy.LRU,
        cold("b", ("low2",)),
    ),
    (
        "pinned-resident-sends-load-elsewhere",
        [node("x", slot("pinned-x", used=1.0)), node("y", slot("low", used=999.0))],
        (entry(), PIN_X, LOW),
        [plan("x", 3_000.0), plan("y", 2_000.0)],
        Strategy.LRU,
        cold("y", ("low",)),
    ),
    (
        "pinned-node-preferred-even-with-eviction",
        [node("z", slot("low")), node("a")],
        (entry(pinned=("z",)), LOW),
        [plan("z", 3_000.0), plan("a", 20_000.0)],
        Strategy.LRU,
        cold("z", ("low",)),
    ),
    (
        "pinned-node-blocked-falls-back",
        [node("z", slot("high")), node("a")],
        (entry(pinned=("z",)), HIGH),
        [plan("z", 3_000.0), plan("a", 7_000.0)],
        Strategy.LRU,
        cold("a"),
    ),
    (
        "pinned-node-without-plan-falls-back",
        [node("z", cordoned=True), node("a")],
        (entry(pinned=("z",)),),
        [plan("z", 20_000.0), plan("a", 7_000.0)],  # stale plan from a now cordoned node
        Strategy.LRU,
        cold("a"),
    ),
    (
        "pinned-cpu-node-beats-unpinned-gpu",
        [node("cpu", cpu=True), node("a")],
        (entry(pinned=("cpu",)),),
        [plan("cpu", 0.0, gpus=False), plan("a", 20_000.0)],
        Strategy.LRU,
        cold("cpu"),
    ),
    (
        "cpu-after-gpu-fits-now",
        [node("a-cpu", cpu=True), node("b")],
        (entry(),),
        [plan("a-cpu", 0.0, gpus=False), plan("b", 7_000.0)],
        Strategy.LRU,
        cold("b"),
    ),
    (
        "cpu-after-gpu-fits-after-eviction",
        [node("a-cpu", cpu=True), node("b", slot("low"))],
        (entry(), LOW),
        [plan("a-cpu", 0.0, gpus=False), plan("b", 3_000.0)],
        Strategy.LRU,
        cold("b", ("low",)),
    ),
    (
        "cpu-when-gpus-blocked",
        [node("cpu", cpu=True), node("b", slot("high"))],
        (entry(), HIGH),
        [plan("cpu", 0.0, gpus=False), plan("b", 3_000.0)],
        Strategy.LRU,
        cold("cpu"),
    ),
    (
        "cpu-when-the-gpu-node-gives-no-layer-counts",
        [node("cpu", cpu=True), node("small", total=4_000.0, free=4_000.0)],
        (entry(),),
        [plan("cpu", 0.0, gpus=False), plan("small", 3_500.0)],
        Strategy.LRU,
        cold("cpu"),
    ),
    (
        "cpu-never-evicts",
        [node("cpu", slot("low"), cpu=True)],
        (entry(), LOW),
        [plan("cpu", 0.0, gpus=False)],
        Strategy.LRU,
        cold("cpu"),
    ),
    (
        "override-needs-eviction-despite-neuron-fit",
        [node("a", slot("low"))],
        (entry(vram=8_000.0), LOW),
        [plan("a", 6_500.0, full=6_000.0, fits=True)],
        Strategy.LRU,
        cold("a", ("low",)),
    ),
    (
        "override-smaller-than-estimate-fits-now",
        [node("a", slot("low"))],
        (entry(vram=5_000.0), LOW),
        [plan("a", 5_500.0, full=9_000.0, fits=False)],
        Strategy.LRU,
        cold("a"),
    ),
]


@pytest.mark.parametrize(
    ("nodes", "entries", "plans", "strategy", "expected"),
    [row[1:] for row in PLACE_ROWS],
    ids=[row[0] for row in PLACE_ROWS],
)
def test_place(
    nodes: list[NodeState],
    entries: tuple[CatalogueEntry, ...],
    plans: list[NodePlan],
    strategy: Strategy,
    expected: ColdLoad,
) -> None:
    snapshot = fleet(*nodes, entries=entries)
    plan_map = {p.node: p for p in plans}
    before = (copy.deepcopy(snapshot), dict(plan_map))
    assert place(snapshot, M, plan_map, strategy, NOW) == expected
    assert (snapshot, plan_map) == before


# --- place: not now (503) vs never (404) -----------------------------------------------------

BLOCKED_ROWS = [
    # id, nodes, entries, plans, words in the message
    (
        "busy-blocks",
        [node("a", slot("low", in_flight=1))],
        (entry(), LOW),
        [plan("a", 3_000.0)],
        ["a: busy"],
    ),
    (
        "queued-blocks",
        [node("a", slot("low", queue=1))],
        (entry(), LOW),
        [plan("a", 3_000.0)],
        ["a: busy"],
    ),
    (
        "pinned-blocks",
        [node("x", slot("pinned-x"))],
        (entry(), PIN_X),
        [plan("x", 3_000.0)],
        ["x: pinned"],
    ),
    (
        "higher-priority-blocks-lower-request",
        [node("a", slot("high"))],
        (entry(priority=1), HIGH),
        [plan("a", 3_000.0)],
        ["a: higher priority"],
    ),
    (
        "loading-blocks",
        [node("a", slot("low", state=LOADING))],
        (entry(), LOW),
        [plan("a", 3_000.0)],
        ["a: loading"],
    ),
    (
        "every-node-blocked-its-own-way",
        [node("a", slot("high")), node("b", slot("low", in_flight=2))],
        (entry(priority=1), HIGH, LOW),
        [plan("a", 3_000.0), plan("b", 3_000.0)],
        ["a: higher priority", "b: busy"],
    ),
    (
        "higher-priority-in-the-way-and-no-layer-counts",
        [node("big", slot("high")), node("small", total=4_000.0, free=4_000.0)],
        (entry(), HIGH),
        [plan("big", 3_000.0), plan("small", 3_500.0)],
        ["big: higher priority"],
    ),
    (
        "big-enough-node-is-down",
        [node("big", total=80_000.0, up=False), node("small", total=4_000.0, free=4_000.0)],
        (entry(),),
        [plan("small", 3_500.0)],
        ["down, draining or cordoned"],
    ),
    (
        "big-enough-node-is-cordoned",
        [node("big", total=80_000.0, cordoned=True), node("small", total=4_000.0)],
        (entry(),),
        [plan("small", 3_500.0)],
        ["down, draining or cordoned"],
    ),
    (
        "cpu-node-is-down",
        [node("cpu", cpu=True, up=False), node("small", total=4_000.0)],
        (entry(),),
        [plan("small", 3_500.0)],
        ["down, draining or cordoned"],
    ),
    ("no-plans", [node("a")], (entry(),), [], ["no node can take a load"]),
]


@pytest.mark.parametrize(
    ("nodes", "entries", "plans", "words"),
    [row[1:] for row in BLOCKED_ROWS],
    ids=[row[0] for row in BLOCKED_ROWS],
)
@pytest.mark.parametrize("strategy", list(Strategy))
def test_place_feasible_but_not_now_is_503(
    nodes: list[NodeState],
    entries: tuple[CatalogueEntry, ...],
    plans: list[NodePlan],
    words: list[str],
    strategy: Strategy,
) -> None:
    snapshot = fleet(*nodes, entries=entries)
    plan_map = {p.node: p for p in plans}
    result = place(snapshot, M, plan_map, strategy, NOW)
    assert isinstance(result, Unavailable), result
    assert result.model_id == M
    assert result.retry_after_s == RETRY_AFTER_S
    for word in words:
        assert word in result.message


def split(
    name: str,
    layers: int,
    evict: tuple[str, ...] = (),
    *,
    mb: float = 4_000.0,
    least: int | None = None,
) -> ColdLoad:
    """A partial (or CPU-only) load of M on a GPU host, 31 layers in all."""
    victims = tuple(Victim(v, name, mb, "lru") for v in evict)
    return ColdLoad(name, M, victims, False, gpu_layers=layers, all_layers=31, min_gpu_layers=least)


def layered(name: str, available: float, **kw: object) -> NodePlan:
    """A plan of a 30-layer model (31 in llama.cpp's count): 600 MiB, then 180 MiB a layer."""
    return plan(name, available, layers=30, **kw)  # type: ignore[arg-type]


# A 4 000 MiB-total GPU can never hold the 6 000 MiB model fully.
SMALL = {"total": 4_000.0, "free": 4_000.0}

PARTIAL_ROWS = [
    # id, nodes, entries, plans, strategy, expected
    (
        "partial-when-no-gpu-can-hold-it",
        [node("a", total=4_000.0), node("b", total=5_000.0)],
        (entry(),),
        [layered("a", 3_000.0), layered("b", 2_000.0)],
        Strategy.LRU,
        split("a", 14),
    ),
    (
        "partial-most-layers-beats-more-available",
        [node("a", **SMALL), node("b", **SMALL)],
        (entry(),),
        [layered("a", 3_000.0, gpu=10), layered("b", 2_800.0, gpu=12)],
        Strategy.LRU,
        split("b", 12),
    ),
    (
        "full-after-eviction-beats-partial-now",
        [node("big", slot("low")), node("small", **SMALL)],
        (entry(), LOW),
        [layered("big", 3_000.0), layered("small", 3_500.0)],
        Strategy.LRU,
        ColdLoad("big", M, (Victim("low", "big", 4_000.0, "lru"),), True, 31, 31),
    ),
    (
        "partial-beats-cpu-node",
        [node("cpu", cpu=True), node("small", **SMALL)],
        (entry(),),
        [plan("cpu", 0.0, gpus=False), layered("small", 3_500.0)],
        Strategy.LRU,
        split("small", 17),
    ),
    (
        "partial-evicts-idle-models-for-more-layers",
        [node("a", slot("low", mb=2_000.0), total=5_000.0)],
        (entry(), LOW),
        [layered("a", 1_000.0)],
        Strategy.LRU,
        split("a", 14, ("low",), mb=2_000.0),
    ),
    (
        "partial-evicts-only-the-prefix-that-buys-layers",
        [
            node(
                "a",
                slot("old", mb=1_800.0, used=1.0),
                slot("new", mb=50.0, used=2.0),
                total=5_000.0,
            )
        ],
        (entry(), entry("old"), entry("new")),
        [layered("a", 1_000.0)],
        Strategy.LRU,
        ColdLoad("a", M, (Victim("old", "a", 1_800.0, "lru"),), False, 13, 31),
    ),
    (
        "partial-does-not-evict-for-nothing",
        [node("a", slot("tiny", mb=50.0), total=5_000.0)],
        (entry(), entry("tiny")),
        [layered("a", 1_000.0)],
        Strategy.LRU,
        split("a", 3),
    ),
    (
        "partial-never-evicts-higher-priority",
        [node("a", slot("high"), total=5_000.0)],
        (entry(), HIGH),
        [layered("a", 1_000.0)],
        Strategy.LRU,
        split("a", 3),
    ),
    (
        "higher-priority-in-the-way-is-no-reason-to-wait",
        [node("big", slot("high")), node("small", **SMALL)],
        (entry(), HIGH),
        [layered("big", 3_000.0), layered("small", 3_500.0)],
        Strategy.LRU,
        split("small", 17),
    ),
    (
        "a-down-node-is-no-reason-to-wait",
        [node("big", total=80_000.0, up=False), node("small", **SMALL)],
        (entry(),),
        [layered("small", 3_500.0)],
        Strategy.LRU,
        split("small", 17),
    ),
    (
        "pinned-partial-beats-waiting-elsewhere",
        [node("big", slot("low", in_flight=1)), node("z", **SMALL)],
        (entry(pinned=("z",)), LOW),
        [layered("big", 3_000.0), layered("z", 3_500.0)],
        Strategy.LRU,
        split("z", 17),
    ),
    (
        "gpu-host-without-room-runs-it-on-cpu",
        [node("a", **SMALL)],
        (entry(),),
        [layered("a", 100.0)],
        Strategy.LRU,
        split("a", 0),
    ),
    (
        "cpu-node-before-a-gpu-host-without-room",
        [node("a", **SMALL), node("cpu", cpu=True)],
        (entry(),),
        [layered("a", 100.0), plan("cpu", 0.0, gpus=False)],
        Strategy.LRU,
        cold("cpu"),
    ),
    (
        "min-share-skips-a-thin-split",
        [node("a", **SMALL), node("b", **SMALL)],
        (entry(share=0.5),),
        [layered("a", 3_500.0, gpu=20), layered("b", 3_500.0, gpu=10)],
        Strategy.LRU,
        split("a", 20, least=16),
    ),
    (
        "offload-partial-skips-the-cpu-node",
        [node("cpu", cpu=True), node("a", **SMALL)],
        (entry(offload=Offload.PARTIAL, pinned=("cpu",)),),
        [plan("cpu", 0.0, gpus=False), layered("a", 700.0)],
        Strategy.LRU,
        split("a", 1, least=1),
    ),
    (
        "offload-full-load-carries-its-minimum",
        [node("a")],
        (entry(offload=Offload.FULL),),
        [layered("a", 7_000.0)],
        Strategy.LRU,
        ColdLoad("a", M, (), True, 31, 31, 31),
    ),
    (
        "override-scales-the-split",
        [node("a", total=24_000.0)],
        (entry(vram=12_000.0),),
        [layered("a", 8_000.0, capacity=20_000.0)],
        Strategy.LRU,
        split("a", 19),  # twice the estimate: 1 200 MiB, then 360 MiB a layer
    ),
]


@pytest.mark.parametrize(
    ("nodes", "entries", "plans", "strategy", "expected"),
    [row[1:] for row in PARTIAL_ROWS],
    ids=[row[0] for row in PARTIAL_ROWS],
)
def test_place_partial(
    nodes: list[NodeState],
    entries: tuple[CatalogueEntry, ...],
    plans: list[NodePlan],
    strategy: Strategy,
    expected: ColdLoad,
) -> None:
    snapshot = fleet(*nodes, entries=entries)
    plan_map = {p.node: p for p in plans}
    before = (copy.deepcopy(snapshot), dict(plan_map))
    assert place(snapshot, M, plan_map, strategy, NOW) == expected
    assert (snapshot, plan_map) == before


WAIT_ROWS = [
    # id, nodes, entries, plans, words in the message
    (
        "busy-model-in-the-way-beats-a-slower-copy",
        [node("big", slot("low", in_flight=1)), node("small", **SMALL)],
        (entry(), LOW),
        [layered("big", 3_000.0), layered("small", 3_500.0)],
        ["fits fully once", "big: busy"],
    ),
    (
        "loading-model-in-the-way-beats-a-slower-copy",
        [node("big", slot("low", state=LOADING)), node("small", **SMALL)],
        (entry(), LOW),
        [layered("big", 3_000.0), layered("small", 3_500.0)],
        ["fits fully once", "big: loading"],
    ),
    (
        "offload-full-waits-for-busy-models",
        [node("a", slot("low", in_flight=1))],
        (entry(offload=Offload.FULL), LOW),
        [layered("a", 3_000.0)],
        ["a: busy"],
    ),
    (
        "host-memory-short-now",
        [node("cpu", cpu=True)],
        (entry(),),
        [plan("cpu", 0.0, gpus=False, host=(8_000.0, 16_000.0, 1_000.0))],
        ["cpu: host memory"],
    ),
    (
        "offload-partial-gpu-used-by-others",
        [node("a", **SMALL)],
        (entry(offload=Offload.PARTIAL),),
        [layered("a", 100.0)],
        ["no node can make room"],
    ),
]


@pytest.mark.parametrize(
    ("nodes", "entries", "plans", "words"),
    [row[1:] for row in WAIT_ROWS],
    ids=[row[0] for row in WAIT_ROWS],
)
def test_place_waits_when_waiting_helps(
    nodes: list[NodeState],
    entries: tuple[CatalogueEntry, ...],
    plans: list[NodePlan],
    words: list[str],
) -> None:
    result = place(fleet(*nodes, entries=entries), M, {p.node: p for p in plans}, Strategy.LRU, NOW)
    assert isinstance(result, Unavailable), result
    assert result.retry_after_s == RETRY_AFTER_S
    for word in words:
        assert word in result.message


NEVER_ROWS = [
    # id, nodes, entries, plans, expected type, words in the message
    (
        "no-layer-counts-and-bigger-than-every-gpu",
        [node("a", total=4_000.0), node("b", total=5_000.0)],
        (entry(),),
        [plan("a", 3_000.0), plan("b", 2_000.0)],
        Unknown,
        ["needs 6000 MiB of VRAM", "largest: 5000 MiB"],
    ),
    (
        "override-bigger-than-every-gpu-no-layer-counts",
        [node("a", total=24_000.0), node("b", total=24_000.0)],
        (entry(vram=30_000.0),),
        [plan("a", 20_000.0, full=6_000.0), plan("b", 22_000.0, full=6_000.0)],
        Unknown,
        ["needs 30000 MiB"],
    ),
    (
        "offload-full-bigger-than-every-gpu",
        [node("a", **SMALL), node("gone", total=5_000.0, up=False)],
        (entry(offload=Offload.FULL),),
        [layered("a", 3_000.0)],
        Refused,
        ['offload = "full"', "needs 6000 MiB of VRAM", "largest: 5000 MiB"],
    ),
    (
        "min-share-more-than-any-gpu-holds",
        [node("a", **SMALL)],
        (entry(share=0.9),),
        [layered("a", 3_500.0, capacity=4_000.0)],
        Refused,
        ["min_gpu_share = 0.9"],
    ),
    (
        "too-big-for-vram-and-ram",
        [node("a", total=2_000.0, free=2_000.0)],
        (entry(),),
        [layered("a", 2_000.0, host=(8_000.0, 1_000.0, 1_000.0))],
        Unknown,
        ["larger than any node", "8000 MiB of RAM", "largest host: 1000 MiB"],
    ),
    (
        "too-big-for-a-cpu-node",
        [node("cpu", cpu=True)],
        (entry(),),
        [plan("cpu", 0.0, gpus=False, host=(8_000.0, 4_000.0, 4_000.0))],
        Unknown,
        ["8000 MiB of RAM"],
    ),
]


@pytest.mark.parametrize(
    ("nodes", "entries", "plans", "kind", "words"),
    [row[1:] for row in NEVER_ROWS],
    ids=[row[0] for row in NEVER_ROWS],
)
def test_place_never_feasible_is_404_or_400(
    nodes: list[NodeState],
    entries: tuple[CatalogueEntry, ...],
    plans: list[NodePlan],
    kind: type,
    words: list[str],
) -> None:
    result = place(fleet(*nodes, entries=entries), M, {p.node: p for p in plans}, Strategy.LRU, NOW)
    assert isinstance(result, kind), result
    for word in words:
        assert word in result.message


@pytest.mark.parametrize(
    ("load", "text"),
    [
        (split("a", 18), "18/31 layers on GPU"),
        (split("a", 0), "CPU only"),
        (ColdLoad("a", M, (), True, 31, 31), "full offload"),
        (cold("cpu"), "full offload"),
    ],
)
def test_cold_load_describes_its_split(load: ColdLoad, text: str) -> None:
    assert load.describe() == text


def test_place_gpu_node_without_known_inventory_is_not_a_404() -> None:
    # The plan says the node has GPUs but the snapshot has not merged its discovery yet.
    bare = replace(node("a"), gpus=())
    result = place(fleet(bare), M, {"a": plan("a", 1_000.0)}, Strategy.LRU, NOW)
    assert isinstance(result, Unavailable)


def test_route_then_place_round_trip() -> None:
    # Two nodes; the request is cold; the scheduler asks both, then places with eviction.
    snapshot = fleet(
        node("a", slot("high")),
        node("b", slot("low", used=5.0), slot("low2", used=1.0)),
        entries=(entry(priority=2), HIGH, LOW, entry("low2", priority=1)),
        aliases={"chat": M},
    )
    first = route(snapshot, "chat", NOW)
    assert first == NeedsPlacement(M, ("a", "b"))
    plans = {name: plan(name, 2_500.0) for name in first.candidates}
    assert place(snapshot, M, plans, Strategy.PRIORITY, NOW) == cold(
        "b", ("low",), reason="priority"
    )
    assert place(snapshot, M, plans, Strategy.LRU, NOW) == cold("b", ("low2",))


def test_new_conversations_spread_over_equally_idle_replicas_and_keep_their_pick() -> None:
    snapshot = fleet(node("a", slot()), node("b", slot()), node("c", slot()))
    picks = {
        f"conversation-{i}": route(snapshot, M, NOW, conversation=f"conversation-{i}")
        for i in range(60)
    }
    counts = {name: sum(1 for p in picks.values() if p.node == name) for name in "abc"}
    assert all(10 <= count <= 30 for count in counts.values()), counts
    assert all(route(snapshot, M, NOW, conversation=k) == p for k, p in picks.items())
    # Load still comes first: a busier replica is not picked for a new conversation.
    busy_a = fleet(node("a", slot(in_flight=1)), node("b", slot()), node("c", slot()))
    assert all(route(busy_a, M, NOW, conversation=k).node != "a" for k in picks)
