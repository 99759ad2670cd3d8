"""The gateway's picture of the fleet: frozen values that pure decision modules read.

The poller turns what neurons report into `NodeState`s, the registry assembles them into a
`FleetSnapshot`, and the scheduler and handlers read snapshots and never mutate them. Times are
UNIX seconds (floats) supplied by the caller, so routing and eviction stay pure and testable
with any `now`.

Name resolution (`FleetSnapshot.resolve`, `resolve_alias`): an exact alias wins; then a name
that is a model id (in the catalogue or resident) is itself; then the alias *patterns* (keys
with `*`, `?` or `[...]`, fnmatch semantics, case-sensitive), the most specific first — the
one with the most literal characters, then the fewest wildcards, then the key itself — so
`"claude-*-haiku-*"` beats `"claude-*"`; anything else passes through unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from fnmatch import fnmatchcase

from synapse.contract import LoadRequest, ModelState

# A slot's state is the neuron's own (`ModelState`); the short names read better in decisions.
READY = ModelState.READY
LOADING = ModelState.LOADING
UNLOADING = ModelState.UNLOADING
FAILED = ModelState.FAILED


class EventKind(StrEnum):
    """What a fleet event (`registry.FleetEvent`) records; the value is its `kind` on the wire."""

    LOAD_STARTED = "load_started"
    LOAD = "load"
    LOAD_FAILED = "load_failed"
    EVICT = "evict"
    UNLOAD = "unload"
    DEFRAG = "defrag"
    NODE_UP = "node_up"
    NODE_DOWN = "node_down"
    NODE_RESTARTED = "node_restarted"
    CORDON = "cordon"
    UNCORDON = "uncordon"
    PIN = "pin"
    SINGLE_FLIGHT_JOIN = "single_flight_join"  # reported to metrics, not kept as an event


@dataclass(frozen=True)
class GpuState:
    """One GPU of a node as its neuron last reported it: `index` is the neuron's device index, VRAM
    is in MiB, `utilization_pct` in percent and `temp_c` in °C (None when not reported)."""

    index: int
    name: str
    vram_total_mb: float
    vram_free_mb: float
    utilization_pct: float | None = None
    temp_c: float | None = None

    @property
    def vram_used_mb(self) -> float:
        return max(0.0, self.vram_total_mb - self.vram_free_mb)


@dataclass(frozen=True)
class ModelSlot:
    """One model id resident on one node."""

    model_id: str
    node: str
    state: ModelState
    in_flight: int = 0
    queue_depth: int = 0
    max_in_flight: int = 1
    max_queue_depth: int = 0
    last_used_at: float | None = None
    loaded_at: float | None = None
    vram_used_mb: float = 0.0
    ram_used_mb: float = 0.0
    estimate_mb: float | None = None
    n_gpu_layers: int | None = None
    n_layers: int | None = None
    tok_s_decode: float | None = None
    error: str | None = None
    # The engine's KV pool and host-RAM prefix cache, as the neuron's /health reports them
    # (None from a neuron that does not).
    kv_cells_used: int | None = None
    kv_cells_total: int | None = None
    parked_mb: float | None = None

    @property
    def busy(self) -> bool:
        return self.in_flight > 0 or self.queue_depth > 0

    @property
    def load(self) -> int:
        """How busy this replica is, for choosing the least busy one."""
        return self.in_flight + self.queue_depth

    def idle_since(self) -> float:
        return self.last_used_at or self.loaded_at or 0.0

    @property
    def offload(self) -> str | None:
        """How the replica sits in memory (`offload_text`), None before the neuron says."""
        return offload_text(self.n_gpu_layers, self.n_layers)


def offload_text(n_gpu_layers: int | None, n_layers: int | None) -> str | None:
    """`full offload`, `18/31 layers on GPU` or `CPU only` from llama.cpp's `n_gpu_layers` (of
    `n_layers + 1` in all); None when either is unknown."""
    if n_gpu_layers is None or n_layers is None:
        return None
    every = n_layers + 1
    if n_gpu_layers >= every or n_gpu_layers < 0:  # -1 is llama.cpp's "all of them"
        return "full offload"
    if n_gpu_layers == 0:
        return "CPU only"
    return f"{n_gpu_layers}/{every} layers on GPU"


@dataclass(frozen=True)
class NodeState:
    """One neuron as the gateway last saw it: reachability, cordon and drain flags, GPUs, models.

    `misses` counts missed polls in a row; a node marked down lists no models. `last_seen` is the
    UNIX time of the last good poll. A node without GPUs is CPU-only and its VRAM totals are 0.
    """

    name: str
    endpoint: str
    up: bool = False
    draining: bool = False  # the neuron itself is draining (SIGTERM)
    cordoned: bool = False  # an operator cordoned it in cortex: no new cold loads
    hostname: str | None = None
    backend: str | None = None
    gpus: tuple[GpuState, ...] = ()
    models: tuple[ModelSlot, ...] = ()
    last_seen: float | None = None
    misses: int = 0
    evictions_since_defrag: int = 0

    @property
    def accepts_loads(self) -> bool:
        return self.up and not self.draining and not self.cordoned

    @property
    def vram_total_mb(self) -> float:
        return sum(gpu.vram_total_mb for gpu in self.gpus)

    @property
    def vram_free_mb(self) -> float:
        return sum(gpu.vram_free_mb for gpu in self.gpus)

    def slot(self, model_id: str) -> ModelSlot | None:
        return next((slot for slot in self.models if slot.model_id == model_id), None)


class Offload(StrEnum):
    """How much of a model must sit on GPUs for it to be placed (models.toml `offload`).

    `full`: every layer on GPUs, or no load; `partial`: at least one layer (and at least
    `min_gpu_share` of them) on a GPU, never a CPU-only load; `any`: as many layers as fit,
    down to none (a CPU-only node, or a GPU host with no room left)."""

    FULL = "full"
    PARTIAL = "partial"
    ANY = "any"


@dataclass(frozen=True)
class CatalogueEntry:
    """A model the fleet may load (models.toml). `offload` and `min_gpu_share` (0–1, the share
    of layers that must be on GPUs) bound how it may be placed; see `Offload`."""

    id: str
    source: str | None = None
    n_ctx: int | None = None
    pinned_on: tuple[str, ...] = ()
    priority: int = 0
    aliases: tuple[str, ...] = ()
    vram_mb: float | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    embedding: bool = False
    offload: Offload = Offload.ANY
    min_gpu_share: float = 0.0

    @property
    def source_or_id(self) -> str:
        return self.source or self.id

    def load_request(self, min_gpu_layers: int | None = None) -> LoadRequest:
        """The neuron's `/models/load` body for this entry (`.plan_request()`: its plan body).
        Raises `ContractError` for an entry no neuron would accept (the config loader asks
        once, so a loaded catalogue never does)."""
        return LoadRequest(
            self.id,
            self.source_or_id,
            self.n_ctx,
            min_gpu_layers=min_gpu_layers,
            embedding=self.embedding,
        )


@dataclass(frozen=True)
class FleetSnapshot:
    """The whole fleet at one moment: nodes by name, catalogue entries by id, alias keys to ids.

    `FleetRegistry.snapshot()` builds it with read-only mappings, and a slot's `in_flight` there
    already counts cortex's own requests. `resolve` turns a requested name into a model id.
    """

    nodes: Mapping[str, NodeState] = field(default_factory=dict)
    catalogue: Mapping[str, CatalogueEntry] = field(default_factory=dict)
    aliases: Mapping[str, str] = field(default_factory=dict)

    def resolve(self, name: str) -> str:
        """The canonical model id for a requested name (see the module docstring)."""
        if name in self.aliases:
            return self.aliases[name]
        if name in self.catalogue or any(
            slot.model_id == name for node in self.nodes.values() for slot in node.models
        ):
            return name
        return resolve_alias(name, self.aliases) or name

    def slots(self, model_id: str) -> list[ModelSlot]:
        return [
            slot
            for node in self.nodes.values()
            for slot in node.models
            if slot.model_id == model_id
        ]

    def entry(self, model_id: str) -> CatalogueEntry | None:
        return self.catalogue.get(model_id)

    def priority_of(self, model_id: str) -> int:
        entry = self.catalogue.get(model_id)
        return entry.priority if entry else 0

    def pinned_on(self, model_id: str) -> tuple[str, ...]:
        entry = self.catalogue.get(model_id)
        return entry.pinned_on if entry else ()


_WILDCARD = re.compile(r"\*|\?|\[[^\]]*\]")


def is_pattern(alias: str) -> bool:
    """Whether an `[aliases]` key is a glob pattern rather than one name."""
    return _WILDCARD.search(alias) is not None


def _specificity(pattern: str) -> tuple[int, int, str]:
    wildcards = _WILDCARD.findall(pattern)
    literal = len(pattern) - sum(len(w) for w in wildcards)
    return (-literal, len(wildcards), pattern)


def resolve_alias(name: str, aliases: Mapping[str, str]) -> str | None:
    """The target of the exact alias `name`, else of the most specific pattern matching it,
    else None (pure; see the module docstring for the order)."""
    if name in aliases:
        return aliases[name]
    patterns = sorted((key for key in aliases if is_pattern(key)), key=_specificity)
    return next((aliases[key] for key in patterns if fnmatchcase(name, key)), None)
