"""Executes routing and eviction plans: cold loads, evictions, idle unloads, cordons, defrag.

Invariants:
* One cold load per model id at a time (single flight): every request for a cold model awaits
  the same task, which outlives any one client (a disconnect does not cancel a load others wait
  for). Each waiter bounds its own wait by `cold_load_timeout_s`.
* Evict-then-load on a node runs under that node's lock, so two loads never both spend the same
  free VRAM.
* Every eviction, load and unload is recorded as a fleet event with its reason and logged.
* Pure decisions come from `routing` and `eviction`; this module only carries them out.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cortex.config import GatewayConfig
from cortex.control.registry import FleetRegistry
from cortex.errors import (
    Conflict,
    CortexError,
    InvalidRequest,
    LoadTimeout,
    ModelNotFound,
    NoCapacity,
    NodeUnavailable,
    NotFound,
    UpstreamError,
)
from cortex.fleet.eviction import Reason, Victim, defrag_due, evictable, idle_unloads
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
from cortex.fleet.state import LOADING, READY, CatalogueEntry, EventKind, NodeState
from cortex.nodes.client import NeuronClient
from cortex.nodes.poller import Poller
from synapse.contract import PlanAnswer

log = logging.getLogger("cortex.scheduler")

BLOCKED_PATIENCE_S = 15.0  # how long a cold load waits for busy models in the way to finish
BLOCKED_RETRY_S = 0.25
# Neuron 409s that a fresh plan (or a short wait) can get past: a victim got busy, or the model
# is still loading or unloading there.
_PASSING_CONFLICTS = frozenset({"model_busy", "model_loading", "model_unloading"})
# A neuron's 507 when the VRAM or RAM a plan counted on was taken before the load began.
_SHRUNK = frozenset({"insufficient_vram", "insufficient_memory"})


class _AlreadyPlaced(Exception):
    """The model is loading or loaded on `node` already (another gateway placed it)."""

    def __init__(self, node: str) -> None:
        super().__init__(node)
        self.node = node


@dataclass(frozen=True)
class Target:
    """Where a request goes: the replica of model `model_id` (aliases already resolved) on neuron
    `node`, ready to serve, chosen `by` "affinity" or "load" (routing's `Serve.by`)."""

    node: str
    model_id: str
    by: str = "load"


class Scheduler:
    """Carries routing and eviction decisions out against the neurons: single-flight cold loads,
    evictions, admin loads and unloads, and housekeeping (idle unloads, emptying cordoned nodes,
    defragmentation).

    On the event loop: `start` runs `housekeep` every `poll_interval_s`; `stop` cancels it and
    every load in flight. Loads, failed loads, evictions and single-flight joins go to `on_event`.
    """

    def __init__(
        self,
        config: GatewayConfig,
        registry: FleetRegistry,
        clients: dict[str, NeuronClient],
        poller: Poller,
        *,
        clock: Callable[[], float] = time.time,
        on_event: Callable[[EventKind, dict[str, Any]], None] | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.clients = clients
        self.poller = poller
        self.clock = clock
        self.on_event = on_event or (lambda kind, fields: None)
        self._loads: dict[str, asyncio.Task[Target]] = {}
        self._loading_since: dict[str, tuple[str | None, float]] = {}
        self._node_locks = {name: asyncio.Lock() for name in clients}
        self._housekeeping: asyncio.Task[None] | None = None

    # -- request path ------------------------------------------------------------------------

    def route_now(
        self,
        requested: str,
        exclude: frozenset[str] = frozenset(),
        conversation: str | None = None,
    ) -> Target | None:
        """A ready replica for `requested` right now, or None when a load is needed; the one that
        served `conversation` (an affinity key) last when routing's affinity rule allows.

        Raises `ModelNotFound` / `NoCapacity` when the answer is already known.
        """
        snapshot = self.registry.snapshot()
        prefer = self.registry.served_last(snapshot.resolve(requested), conversation)
        decision = route(
            snapshot,
            requested,
            self.clock(),
            exclude=exclude,
            prefer=prefer,
            conversation=conversation,
        )
        if isinstance(decision, Serve):
            return Target(decision.node, decision.model_id, decision.by)
        _raise_refusal(decision)
        return None

    def loading(
        self, requested: str, exclude: frozenset[str] = frozenset()
    ) -> asyncio.Task[Target]:
        """The shared task that makes `requested` servable (joining one already running)."""
        model_id = self.registry.snapshot().resolve(requested)
        task = self._loads.get(model_id)
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._make_servable(model_id, exclude))
            self._loads[model_id] = task
            task.add_done_callback(functools.partial(self._forget, model_id))
        else:
            self.on_event(EventKind.SINGLE_FLIGHT_JOIN, {"model": model_id})
        return task

    def loads_in_progress(self) -> list[dict[str, Any]]:
        """Cold loads running now: model, node (once placed) and since when."""
        return [
            {"model": model_id, "node": node, "since": since}
            for model_id, (node, since) in sorted(self._loading_since.items())
        ]

    def _forget(self, model_id: str, task: asyncio.Task[Target]) -> None:
        if self._loads.get(model_id) is task:
            del self._loads[model_id]
        if not task.cancelled():
            task.exception()  # retrieved here; each waiter re-raises it from its own await

    async def wait_loaded(self, task: asyncio.Task[Target], deadline: float) -> Target:
        remaining = deadline - time.monotonic()
        try:
            return await asyncio.wait_for(asyncio.shield(task), max(0.0, remaining))
        except TimeoutError:
            raise LoadTimeout(
                f"the model did not finish loading within {self.config.cold_load_timeout_s:g}s",
                retry_after=30,
            ) from None

    async def _make_servable(self, model_id: str, exclude: frozenset[str]) -> Target:
        # Models in the way may only look busy (a poll older than their last request) or be
        # busy for a moment: placement that is blocked is retried on fresh polls for a while
        # before the request gets its 503.
        patience = time.monotonic() + min(self.config.cold_load_timeout_s, BLOCKED_PATIENCE_S)
        replans = 0
        while True:
            snapshot = self.registry.snapshot()
            decision = route(snapshot, model_id, self.clock(), exclude=exclude)
            if isinstance(decision, Serve):
                return Target(decision.node, decision.model_id)
            _raise_refusal(decision)
            if isinstance(decision, AwaitLoad):
                await self._await_remote_load(decision.node, decision.model_id)
                continue
            assert isinstance(decision, NeedsPlacement)
            try:
                return await self._cold_load(model_id, decision.candidates)
            except _AlreadyPlaced as placed:
                # Join that load: a fresh poll shows it, and routing waits for it or serves it.
                if time.monotonic() >= patience:
                    raise NoCapacity(
                        f"{model_id!r} is being placed by another gateway; try again",
                        retry_after=RETRY_AFTER_S,
                    ) from None
                self.on_event(
                    EventKind.SINGLE_FLIGHT_JOIN, {"model": model_id, "node": placed.node}
                )
                with contextlib.suppress(CortexError):
                    await self.poller.poll(placed.node)
            except NoCapacity:
                if time.monotonic() >= patience:
                    raise
                await self._look_again(decision.candidates)
            except Conflict as exc:
                if exc.code not in _PASSING_CONFLICTS:
                    raise  # e.g. model_conflict: that id holds another source there
                if exc.code == "model_unloading" and time.monotonic() < patience:
                    # The chosen node is still unloading an old replica of this model (an
                    # eviction, or an operator's unload): wait for it like for a busy model.
                    await self._look_again(decision.candidates)
                else:
                    replans = self._replan(model_id, exc, replans)
            except NodeUnavailable as exc:
                replans = self._replan(model_id, exc, replans)
            except UpstreamError as exc:
                if exc.status != 507 or exc.code not in _SHRUNK:
                    raise
                replans = self._replan(model_id, exc, replans)

    async def _look_again(self, nodes: tuple[str, ...]) -> None:
        await asyncio.sleep(BLOCKED_RETRY_S)
        await asyncio.gather(*(self.poller.poll(n) for n in nodes))

    @staticmethod
    def _replan(model_id: str, exc: CortexError, replans: int) -> int:
        # A victim got busy or a node vanished between plan and action: plan again, twice.
        if replans >= 2:
            raise NoCapacity(f"could not place {model_id!r}; try again", retry_after=10) from exc
        log.info("cold load of %s needs a new plan: %s", model_id, exc.message)
        return replans + 1

    async def _await_remote_load(self, node: str, model_id: str) -> None:
        """Someone else (an operator, a neuron's preload) is loading it: watch until done."""
        deadline = time.monotonic() + self.config.cold_load_timeout_s
        while time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            state = await self.poller.poll(node)
            slot = state.slot(model_id)
            if slot is None or slot.state != "loading":
                return

    async def _plans(
        self, entry: CatalogueEntry, candidates: tuple[str, ...]
    ) -> tuple[dict[str, NodePlan], str | None]:
        """The candidates' plans, and a node that says it already holds or is loading the
        model (another gateway's load), if any."""
        holding: list[str] = []

        async def one(name: str) -> NodePlan | None:
            try:
                answer = await self.clients[name].plan(entry.load_request().plan_request())
            except CortexError as exc:
                log.warning("plan for %s on %s failed: %s", entry.id, name, exc.message)
                if isinstance(exc, UpstreamError) and exc.status in (404, 422, 400, 403):
                    raise
                return None
            if answer.state in (READY, LOADING):
                holding.append(name)
            return node_plan(self.registry.node(name), answer)

        results = await asyncio.gather(*(one(name) for name in candidates))
        plans = {plan.node: plan for plan in results if plan is not None}
        return plans, min(holding) if holding else None

    async def _cold_load(self, model_id: str, candidates: tuple[str, ...]) -> Target:
        entry = self.registry.snapshot().entry(model_id)
        if entry is None:
            raise ModelNotFound(f"model {model_id!r} is not in the catalogue", param="model")
        plans, already = await self._plans(entry, candidates)
        if already:
            raise _AlreadyPlaced(already)
        if not plans:
            raise NoCapacity("no neuron could plan this model now", retry_after=10)
        decision = place(
            self.registry.snapshot(), model_id, plans, self.config.strategy, self.clock()
        )
        _raise_refusal(decision)
        assert isinstance(decision, ColdLoad)
        async with self._node_locks[decision.node]:
            for victim in decision.evict:
                await self.evict(victim)
            # Another gateway may have started this model elsewhere since the plans were
            # fetched (evictions take seconds): look once more, right before loading.
            await asyncio.gather(*(self.poller.poll(name) for name in candidates))
            elsewhere = [
                slot.node
                for slot in self.registry.snapshot().slots(model_id)
                if slot.state in (READY, LOADING) and slot.node in candidates
            ]
            if elsewhere:
                raise _AlreadyPlaced(elsewhere[0])
            await self._load(entry, decision.node, decision)
        return Target(decision.node, model_id)

    async def _load(self, entry: CatalogueEntry, node: str, placed: ColdLoad | None = None) -> None:
        self._loading_since[entry.id] = (node, self.clock())
        try:
            await self._load_on_node(entry, node, placed)
        finally:
            self._loading_since.pop(entry.id, None)

    async def _load_on_node(
        self, entry: CatalogueEntry, node: str, placed: ColdLoad | None
    ) -> None:
        started = time.monotonic()
        how = f" ({placed.describe()})" if placed is not None else ""
        self.registry.record(
            EventKind.LOAD_STARTED, f"loading {entry.id} on {node}{how}", node=node, model=entry.id
        )
        try:
            least = placed.min_gpu_layers if placed is not None else None
            await self.clients[node].load(
                entry.load_request(least), timeout_s=self.config.cold_load_timeout_s
            )
        except CortexError as exc:
            self.registry.record(
                EventKind.LOAD_FAILED,
                f"loading {entry.id} on {node} failed: {exc.message}",
                node=node,
                model=entry.id,
            )
            self.on_event(EventKind.LOAD_FAILED, {"model": entry.id, "node": node})
            with contextlib.suppress(CortexError):
                await self.poller.poll(node)
            raise
        duration = time.monotonic() - started
        self.registry.record(
            EventKind.LOAD,
            f"loaded {entry.id} on {node}{how} in {duration:.1f}s",
            node=node,
            model=entry.id,
        )
        self.on_event(EventKind.LOAD, {"model": entry.id, "node": node, "duration_s": duration})
        log.info("cold load: %s on %s in %.2fs", entry.id, node, duration)
        await self.poller.poll(node)

    async def evict(self, victim: Victim) -> None:
        await self.clients[victim.node].unload(victim.model_id)
        node = self.registry.node(victim.node)
        self.registry.update_node(
            victim.node, evictions_since_defrag=node.evictions_since_defrag + 1
        )
        self.registry.record(
            EventKind.EVICT,
            f"evicted {victim.model_id} from {victim.node} ({victim.reason}, "
            f"{victim.vram_mb:.0f} MiB)",
            node=victim.node,
            model=victim.model_id,
            reason=victim.reason,
        )
        self.on_event(
            EventKind.EVICT,
            {"model": victim.model_id, "node": victim.node, "reason": victim.reason},
        )
        log.info("evicted %s from %s: %s", victim.model_id, victim.node, victim.reason)
        await self.poller.poll(victim.node)

    # -- admin actions -----------------------------------------------------------------------

    async def load_on(self, requested: str, node: str | None) -> Target:
        """An operator's load: placed like a request's (`node` None) or on `node`.

        Single flight either way: a load of the same model already running is waited for
        first, and requests that arrive meanwhile join this one instead of placing their own."""
        model_id = self.registry.snapshot().resolve(requested)
        entry = self.registry.snapshot().entry(model_id)
        deadline = time.monotonic() + self.config.cold_load_timeout_s
        if node is None:
            return await self.wait_loaded(self.loading(model_id), deadline)
        if node not in self.clients:
            raise NotFound(f"no neuron named {node!r}")
        if entry is None:
            raise ModelNotFound(f"model {model_id!r} is not in the catalogue", param="model")
        while (running := self._loads.get(model_id)) is not None and not running.done():
            with contextlib.suppress(CortexError):
                await self.wait_loaded(running, deadline)
        slot = self.registry.node(node).slot(model_id)
        if slot is not None and slot.state == READY:
            return Target(node, model_id)
        task = asyncio.get_running_loop().create_task(self._load_there(entry, node))
        self._loads[model_id] = task
        task.add_done_callback(functools.partial(self._forget, model_id))
        return await self.wait_loaded(task, deadline)

    async def _load_there(self, entry: CatalogueEntry, node: str) -> Target:
        async with self._node_locks[node]:
            await self._load(entry, node)
        return Target(node, entry.id)

    async def unload(
        self, requested: str, node: str | None, reason: Reason = Reason.MANUAL
    ) -> list[str]:
        model_id = self.registry.snapshot().resolve(requested)
        slots = [s for s in self.registry.snapshot().slots(model_id) if node in (None, s.node)]
        if not slots:
            raise ModelNotFound(
                f"model {model_id!r} is not loaded" + (f" on {node}" if node else "")
            )
        for slot in slots:
            await self.clients[slot.node].unload(model_id)
            self.registry.record(
                EventKind.UNLOAD,
                f"unloaded {model_id} from {slot.node} ({reason})",
                node=slot.node,
                model=model_id,
                reason=reason,
            )
            self.on_event(EventKind.EVICT, {"model": model_id, "node": slot.node, "reason": reason})
            await self.poller.poll(slot.node)
        return [slot.node for slot in slots]

    # -- housekeeping ------------------------------------------------------------------------

    def start(self) -> None:
        self._housekeeping = asyncio.get_running_loop().create_task(self._housekeep_forever())

    async def stop(self) -> None:
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping
        for task in list(self._loads.values()):
            task.cancel()

    async def _housekeep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_interval_s)
            try:
                await self.housekeep()
            except Exception:
                # A bug must not end housekeeping for the life of the process: log it, go on.
                log.exception("housekeeping failed; trying again next interval")

    async def housekeep(self) -> None:
        """Idle unloads, moving models off cordoned nodes, and defragmentation.

        Each node's work stands alone: a neuron that fails or answers off the contract is
        taken out of routing (`Poller.mark_down`) and the other nodes are still served."""
        snapshot = self.registry.snapshot()
        now = self.clock()
        victims = idle_unloads(snapshot, now, self.config.idle_unload_after_s)
        for node in snapshot.nodes.values():
            if node.cordoned and node.up:
                victims += [
                    Victim(slot.model_id, node.name, slot.vram_used_mb, Reason.CORDON)
                    for slot in evictable(node, snapshot, max_priority=None)
                ]
        failed: set[str] = set()
        for victim in victims:
            if victim.node in failed:
                continue
            async with self._node_locks[victim.node]:
                try:
                    await self.evict(victim)
                except (Conflict, NotFound):
                    continue  # it got busy, or went away on its own: nothing to do
                except CortexError as exc:
                    failed.add(victim.node)
                    self._node_failed(victim.node, f"unloading {victim.model_id}: {exc.message}")
        for node in self.registry.snapshot().nodes.values():
            if node.name in failed or not defrag_due(node, self.config.defrag_after_cycles):
                continue
            try:
                await self._defrag(node.name)
            except CortexError as exc:
                self._node_failed(node.name, f"defragmenting: {exc.message}")

    def _node_failed(self, node: str, why: str) -> None:
        log.warning("housekeeping on %s: %s", node, why)
        self.poller.mark_down(node, why)

    async def _defrag(self, name: str) -> None:
        """Reload a node's resident set from scratch so its VRAM is one clean layout again."""
        async with self._node_locks[name]:
            node = self.registry.node(name)
            snapshot = self.registry.snapshot()
            # Only catalogue models can be loaded back; others stay where they are.
            resident = [
                s.model_id for s in node.models if s.state == READY and snapshot.entry(s.model_id)
            ]
            self.registry.record(
                EventKind.DEFRAG,
                f"defragmenting {name}: reloading {len(resident)} model(s)",
                node=name,
                reason=Reason.DEFRAG,
            )
            for model_id in resident:
                await self.evict(Victim(model_id, name, 0.0, Reason.DEFRAG))
            for model_id in resident:
                entry = self.registry.snapshot().entry(model_id)
                if entry is not None:
                    await self._load(entry, name)
            self.registry.update_node(name, evictions_since_defrag=0)


def _raise_refusal(decision: object) -> None:
    """The client's error for a routing or placement decision that serves nothing (the one
    mapping of decisions to errors); any other decision passes."""
    if isinstance(decision, Unknown):
        raise ModelNotFound(decision.message, param="model")
    if isinstance(decision, Refused):
        raise InvalidRequest(decision.message, param="model", code="model_unplaceable")
    if isinstance(decision, Unavailable):
        raise NoCapacity(decision.message, retry_after=decision.retry_after_s)


def node_plan(node: NodeState, answer: PlanAnswer) -> NodePlan:
    """A neuron's `/models/plan` answer condensed for `routing.place`."""
    estimate, split = answer.estimate, answer.plan
    return NodePlan(
        node=node.name,
        full_offload_mb=estimate.full_offload_mb,
        available_mb=answer.available_mb,
        fits_fully=split.fits_fully,
        has_gpus=bool(node.gpus),
        capacity_mb=answer.capacity_mb,
        n_layers=answer.n_layers,
        gpu_layers=split.n_gpu_layers,
        fixed_gpu_mb=estimate.output_mb + estimate.compute_mb,
        per_layer_mb=estimate.per_layer_mb,
        host_mb=estimate.host_mb,
        host_total_mb=answer.host_total_mb,
        host_available_mb=answer.host_available_mb,
    )
