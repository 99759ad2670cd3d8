"""Polls every neuron and turns its answers into `NodeState`s in the registry.

Per node: `/discovery` once (and again when the neuron's uptime goes backwards, i.e. it
restarted: recorded as a `node_restarted` event), `/health` and `/models` every
`poll_interval_s`; the dispatcher also polls a node at once when it answers `model_not_found`
for a model it was thought to hold. An answer that does not follow the contract is a miss. A
node is up after its first good poll and down after `down_after_misses` misses in a row (or at
once when a request finds it unreachable or hung: `mark_down`). Requests never wait on a
poll: they read the last snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from cortex.control.registry import FleetRegistry
from cortex.errors import CortexError
from cortex.fleet.state import EventKind, GpuState, ModelSlot, NodeState
from cortex.nodes.client import NeuronClient
from synapse.contract import Discovery, Health, ModelInfo

log = logging.getLogger("cortex.poller")


class Poller:
    """Keeps every node's `NodeState` in the registry current by polling its neuron.

    On the event loop: `start` runs `poll_all` every `interval_s` until `stop`; the scheduler and
    the dispatcher also call `poll` and `mark_down` directly. Polls of one node never overlap (a
    lock per node). A failed or malformed poll is a miss, never an exception.
    """

    def __init__(
        self,
        registry: FleetRegistry,
        clients: dict[str, NeuronClient],
        interval_s: float,
        down_after_misses: int,
    ) -> None:
        self.registry = registry
        self.clients = clients
        self.interval_s = interval_s
        self.down_after_misses = down_after_misses
        self._discovery: dict[str, Discovery] = {}
        self._uptime: dict[str, float] = {}
        self._locks = {name: asyncio.Lock() for name in clients}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await self.poll_all()
            except Exception:
                # A bug in reading one answer must not stop polling for the process's life.
                log.exception("polling failed; trying again next interval")
            await asyncio.sleep(self.interval_s)

    async def poll_all(self) -> None:
        await asyncio.gather(*(self.poll(name) for name in self.clients))

    async def poll(self, name: str) -> NodeState:
        """Poll one node now (callers use this right after a load or unload)."""
        async with self._locks[name]:
            client = self.clients[name]
            node = self.registry.node(name)
            try:
                health, models = await asyncio.gather(client.health(), client.models())
                # Read again: an admin cordon may have landed while the neuron answered, and
                # the fresh state carries the gateway's own fields over from this one.
                node = self.registry.node(name)
                uptime = health.uptime_s
                restarted = uptime < self._uptime.get(name, 0)
                if name not in self._discovery or restarted or not node.up:
                    self._discovery[name] = await client.discovery()
                self._uptime[name] = uptime
                fresh = _node_state(
                    node, self._discovery[name], health, models, self.registry.clock()
                )
            except CortexError as exc:  # unreachable, an error status, or off the contract
                return self._missed(node, exc.message)
            if restarted and node.up:
                self.registry.record(EventKind.NODE_RESTARTED, f"{name} restarted", node=name)
                log.warning("neuron %s restarted (its uptime went down)", name)
            if not node.up:
                self.registry.record(EventKind.NODE_UP, f"{name} is up", node=name)
                log.info("neuron %s is up (%s)", name, fresh.backend)
            self.registry.put_node(fresh)
            return fresh

    def _missed(self, node: NodeState, why: str) -> NodeState:
        misses = node.misses + 1
        if node.up and misses >= self.down_after_misses:
            return self.mark_down(node.name, why, misses=misses)
        return self.registry.update_node(node.name, misses=misses)

    def mark_down(self, name: str, why: str, *, misses: int | None = None) -> NodeState:
        node = self.registry.node(name)
        if node.up:
            self.registry.record(EventKind.NODE_DOWN, f"{name} is down: {why}", node=name)
            log.warning("neuron %s is down: %s", name, why)
        return self.registry.update_node(
            name,
            up=False,
            misses=max(misses or 0, self.down_after_misses),
            models=(),
        )


def _node_state(
    previous: NodeState,
    discovery: Discovery,
    health: Health,
    models: tuple[ModelInfo, ...],
    now: float,
) -> NodeState:
    """The gateway's picture of a node from its contract answers; the gateway's own fields
    (cordon, eviction count) carry over from `previous`."""
    names = {d.index: d.name for d in discovery.devices}
    gpus = tuple(
        GpuState(
            index=d.index,
            name=names.get(d.index, f"GPU {d.index}"),
            vram_total_mb=d.vram_total_mb or d.vram_used_mb + d.vram_free_mb,
            vram_free_mb=d.vram_free_mb,
            utilization_pct=d.utilization_pct,
            temp_c=d.temp_c,
        )
        for d in health.devices
    )
    live = {m.id: m for m in health.models}
    slots = []
    for model in models:
        stats = live.get(model.id)
        error = model.error.get("message") if model.error else None
        slots.append(
            ModelSlot(
                model_id=model.id,
                node=previous.name,
                state=model.state,
                in_flight=stats.in_flight if stats else 0,
                queue_depth=stats.queue_depth if stats else 0,
                max_in_flight=stats.max_in_flight if stats else 1,
                max_queue_depth=stats.max_queue_depth if stats else 0,
                last_used_at=stats.last_used_at if stats else None,
                loaded_at=model.loaded_at,
                vram_used_mb=model.vram_used_mb,
                ram_used_mb=model.ram_used_mb,
                estimate_mb=model.estimate.full_offload_mb if model.estimate else None,
                n_gpu_layers=model.n_gpu_layers,
                n_layers=model.n_layers,
                tok_s_decode=stats.tok_s_decode if stats else None,
                error=error if isinstance(error, str) else None,
                kv_cells_used=stats.kv_cells_used if stats else None,
                kv_cells_total=stats.kv_cells_total if stats else None,
                parked_mb=_mib(stats.parked_bytes) if stats else None,
            )
        )
    return NodeState(
        name=previous.name,
        endpoint=previous.endpoint,
        up=True,
        draining=health.draining,
        cordoned=previous.cordoned,
        hostname=discovery.hostname,
        backend=discovery.backend,
        gpus=gpus,
        models=tuple(slots),
        last_seen=now,
        misses=0,
        evictions_since_defrag=previous.evictions_since_defrag,
    )


def _mib(nbytes: int | None) -> float | None:
    return None if nbytes is None else nbytes / (1 << 20)
