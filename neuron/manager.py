"""Model lifecycle on one host: load, serve, unload, drain.

States: loading → ready → unloading → (gone); loading → failed (error kept until the next load
or unload, for at most `FAILED_TTL_S`, and for the latest `FAILED_KEPT` failures only). Invariants:
* At most one load per model id runs at a time: concurrent `load` calls for the same id await
  the same future (single flight), and get the same answer.
* VRAM planned for a model is reserved with the GPU probe before its weights load and released
  after its engine is closed, so `/health` and `/models/plan` see memory fill up even with fake
  GPUs.
* A request holds its model's admission slot for its whole duration; unload refuses (409)
  while any are held unless forced; drain refuses new work (503) and waits for held slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from neuron.admission import AdmissionGate
from neuron.config import NeuronConfig
from neuron.engine import Engine
from neuron.errors import (
    Conflict,
    Draining,
    InsufficientMemory,
    InsufficientVram,
    InvalidModelFile,
    InvalidRequest,
    ModelNotFound,
    ModelUnavailable,
    NeuronError,
)
from neuron.gguf_meta import GgufFormatError, ModelGeometry, read_geometry
from neuron.gpu import GpuProbe
from neuron.metrics import NeuronMetrics
from neuron.offload import MemoryEstimate, OffloadPlan, estimate_memory, plan_offload
from neuron.sources import ResolvedSource, resolve_source
from synapse.contract import (
    LoadRequest,
    ModelHealth,
    ModelInfo,
    ModelState,
    PlanAnswer,
    Split,
    to_json,
)
from synapse.contract import MemoryEstimate as ContractEstimate

log = logging.getLogger("neuron.manager")

FAILED_TTL_S = 600.0  # how long a failed load stays listed with its error
FAILED_KEPT = 8  # at most this many failed loads are listed at once


@dataclass(frozen=True)
class Placement:
    """Where a model's weights come from and how it would sit in memory right now."""

    source: ResolvedSource
    geometry: ModelGeometry
    n_ctx: int
    estimate: MemoryEstimate
    plan: OffloadPlan
    available_mb: float  # free VRAM minus headroom, summed over devices, when planned
    parallel: int = 1  # requests decoded together; the KV pool holds n_ctx × parallel cells
    capacity_mb: float = 0.0  # total VRAM minus headroom, summed: what an empty host offers
    host_total_mb: float | None = None  # system RAM (MemTotal), None when unknown
    host_available_mb: float | None = None  # MemAvailable when planned

    def answer(self, model: str, state: ModelState | None = None) -> PlanAnswer:
        """The contract's `/models/plan` answer for serving it as `model` (whose state on this
        neuron is `state`)."""
        return PlanAnswer(
            model=model,
            state=state,
            estimate=_estimate(self.estimate),
            plan=_split(self.plan),
            available_mb=round(self.available_mb),
            capacity_mb=round(self.capacity_mb),
            host_total_mb=_rounded(self.host_total_mb),
            host_available_mb=_rounded(self.host_available_mb),
            parallel=self.parallel,
            kv_cells=self.n_ctx * self.parallel,
            resolved=str(self.source.primary),
            file_bytes=self.geometry.file_bytes,
            n_layers=self.geometry.n_layers,
            n_ctx=self.n_ctx,
        )


@dataclass
class Resident:
    """One model id held (or being loaded) by this neuron."""

    spec: LoadRequest
    gate: AdmissionGate
    state: ModelState = ModelState.LOADING
    placement: Placement | None = None
    engine: Engine | None = None
    capabilities: tuple[str, ...] = ()
    loaded_at: float | None = None
    load_duration_s: float | None = None
    last_used_at: float | None = None
    error: dict[str, Any] | None = None
    tok_s_decode: float | None = None
    ready: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    unloaded: asyncio.Event = field(default_factory=asyncio.Event)

    def describe(self) -> ModelInfo:
        """The contract's `/models` entry for this id."""
        placement = self.placement
        plan = placement.plan if placement else None
        estimate = placement.estimate if placement else None
        return ModelInfo(
            id=self.spec.model,
            state=self.state,
            source=self.spec.source_or_id,
            path=str(placement.source.primary) if placement else None,
            n_gpu_layers=plan.n_gpu_layers if plan else None,
            n_layers=placement.geometry.n_layers if placement else None,
            n_ctx=placement.n_ctx if placement else self.spec.n_ctx,
            vram_used_mb=round(sum(plan.device_mb.values())) if plan else 0,
            ram_used_mb=round(_host_share(estimate, plan)),
            loaded_at=self.loaded_at,
            load_duration_s=self.load_duration_s,
            capabilities=self.capabilities,
            embedding=self.spec.embedding,
            estimate=_estimate(estimate) if estimate else None,
            error=self.error,
        )

    def health(self) -> ModelHealth:
        """The contract's `/health` entry for this id: admission and engine figures."""
        limits = self.gate.limits
        live = (
            self.engine.stats()
            if self.engine is not None and self.state is ModelState.READY
            else None
        )
        return ModelHealth(
            id=self.spec.model,
            state=self.state,
            in_flight=self.gate.in_flight,
            queue_depth=self.gate.waiting,
            max_in_flight=limits.max_in_flight or 1,
            max_queue_depth=limits.max_queue_depth,
            rejected=self.gate.rejected,
            last_used_at=self.last_used_at,
            tok_s_decode=self.tok_s_decode,
            slots_busy=live.slots_busy if live else None,
            slots_total=live.slots_total if live else None,
            kv_cells_used=live.kv_cells_used if live else None,
            kv_cells_total=live.kv_cells_total if live else None,
            cache_sequences=live.cache_sequences if live else None,
            parked_prefixes=live.parked_prefixes if live else None,
            parked_bytes=live.parked_bytes if live else None,
        )


def _estimate(estimate: MemoryEstimate) -> ContractEstimate:
    return ContractEstimate(**estimate.as_dict())


def _split(plan: OffloadPlan) -> Split:
    figures = plan.as_dict()
    return Split(
        n_gpu_layers=plan.n_gpu_layers,
        fits_fully=plan.fits_fully,
        tensor_split=plan.tensor_split,
        device_mb=figures["device_mb"],  # type: ignore[arg-type]
    )


def _host_share(estimate: MemoryEstimate | None, plan: OffloadPlan | None) -> float:
    if estimate is None or plan is None:
        return 0.0
    return max(0.0, estimate.host_mb - sum(plan.device_mb.values()))


EngineFactory = Callable[[LoadRequest, "Placement", OffloadPlan, int], Engine]


class ModelManager:
    """Owns every model this neuron holds: loads (single flight), unloads, admission, drain.

    All methods run on the event loop. Engines are built by `engine_factory` (llama.cpp by
    default; tests pass a `FakeEngine` factory) and are the only thing that touches a model.
    """

    def __init__(
        self,
        config: NeuronConfig,
        probe: GpuProbe,
        gpu_offload: bool,
        metrics: NeuronMetrics | None = None,
        engine_factory: EngineFactory | None = None,
    ) -> None:
        self.config = config
        self.engine_factory = engine_factory or self._llama_engine
        self.metrics = metrics
        self.probe = probe
        # Whether this llama.cpp build can offload at all; with fake GPUs on a CPU build the
        # plan is computed and reported but weights stay in host memory.
        self.gpu_offload = gpu_offload
        self.models: dict[str, Resident] = {}
        self.draining = False
        self.started_at = time.time()

    # -- planning ----------------------------------------------------------------------------

    async def placement(
        self,
        source_spec: str,
        n_ctx: int | None,
        parallel: int | None = None,
        *,
        n_gpu_layers_cap: int | None = None,
    ) -> Placement:
        """Resolve a source and plan it against the free memory of this instant.

        The KV cache is one pool of `n_ctx × parallel` cells (each of `parallel` requests may
        use up to `n_ctx`), so the estimate is made for that many cells. The plan offloads at
        most `n_gpu_layers_cap` layers (llama.cpp numbering; None or negative: no bound)."""
        source = await asyncio.to_thread(
            resolve_source,
            source_spec,
            model_dirs=self.config.model_dirs,
            hf_cache=self.config.resolved_hf_cache(),
        )
        try:
            geometry = await asyncio.to_thread(read_geometry, source.paths)
        except GgufFormatError as exc:
            raise InvalidModelFile(str(exc)) from exc
        ctx = n_ctx or min(self.config.default_n_ctx, geometry.n_ctx_train or 10**9)
        cells = ctx * (parallel or self.config.parallel)
        devices = self.probe.status()
        free = {status.index: status.vram_free_mb for status in devices}
        estimate = estimate_memory(geometry, cells)
        headroom = self.config.vram_headroom_mb
        plan = plan_offload(geometry, cells, free, headroom, n_gpu_layers_cap=n_gpu_layers_cap)
        return Placement(
            source,
            geometry,
            ctx,
            estimate,
            plan,
            available_mb=sum(max(0.0, mb - headroom) for mb in free.values()),
            parallel=parallel or self.config.parallel,
            capacity_mb=sum(max(0.0, d.vram_total_mb - headroom) for d in devices),
            host_total_mb=_meminfo_mb("MemTotal"),
            host_available_mb=_meminfo_mb("MemAvailable"),
        )

    # -- load / unload -----------------------------------------------------------------------

    async def load(self, spec: LoadRequest) -> Resident:
        """Load `spec` once; concurrent and repeated calls for a loaded id return the same."""
        if self.draining:
            raise Draining("neuron is draining", retry_after=30)
        resident = self.models.get(spec.model)
        if resident is not None and resident.state is not ModelState.FAILED:
            if spec.source_or_id != resident.spec.source_or_id or (
                (spec.embedding, spec.chat_template)
                != (resident.spec.embedding, resident.spec.chat_template)
            ):
                raise Conflict(
                    f"model {spec.model!r} is {resident.state.value} from source "
                    f"{resident.spec.source_or_id!r}; unload it first",
                    code="model_conflict",
                )
            if resident.state is ModelState.UNLOADING:
                raise Conflict(f"model {spec.model!r} is unloading", code="model_unloading")
            await asyncio.shield(resident.ready)
            return resident
        on_wait = self.metrics.queue_wait.labels(spec.model).observe if self.metrics else None
        limits = self.config.admission
        if limits.max_in_flight is None:
            limits = replace(limits, max_in_flight=self._parallel(spec))
        resident = Resident(spec=spec, gate=AdmissionGate(limits, on_wait))
        self.models[spec.model] = resident
        try:
            await self._load(resident)
        except NeuronError as exc:
            self._failed(resident, exc)
            raise
        except Exception as exc:
            failure = InvalidModelFile(
                f"llama.cpp could not load {spec.source_or_id!r}: {exc}", code="model_load_failed"
            )
            self._failed(resident, failure)
            raise failure from exc
        resident.ready.set_result(None)
        return resident

    def _failed(self, resident: Resident, error: NeuronError) -> None:
        """Record a failed load; it is listed (with its error) for a while, then forgotten, and
        never more than `FAILED_KEPT` at once, so failed ids cannot pile up in listings and
        metric labels."""
        resident.state = ModelState.FAILED
        resident.error = error.body()["error"]
        resident.ready.set_exception(error)
        resident.ready.exception()  # retrieved: joiners re-raise it, nobody else must
        failed = [r for r in self.models.values() if r.state is ModelState.FAILED]
        for old in failed[: max(0, len(failed) - FAILED_KEPT)]:
            self.models.pop(old.spec.model, None)
        loop = asyncio.get_running_loop()
        loop.call_later(FAILED_TTL_S, self._forget, resident)

    def _forget(self, resident: Resident) -> None:
        if self.models.get(resident.spec.model) is resident and resident.state is ModelState.FAILED:
            del self.models[resident.spec.model]

    async def _load(self, resident: Resident) -> None:
        spec = resident.spec
        started = time.monotonic()
        override = spec.n_gpu_layers
        placement = await self.placement(
            spec.source_or_id, spec.n_ctx, self._parallel(spec), n_gpu_layers_cap=override
        )
        plan = placement.plan
        all_layers = placement.geometry.n_layers + 1
        if override is not None:
            wanted = all_layers if override < 0 else min(override, all_layers)
            if plan.n_gpu_layers != wanted:
                # More than fits in free VRAM now: the operator's count stands (llama.cpp may
                # fail to allocate it), planned as the most that fits.
                plan = replace(plan, n_gpu_layers=override, fits_fully=wanted == all_layers)
        if spec.min_gpu_layers is not None and plan.n_gpu_layers < spec.min_gpu_layers:
            # The gateway placed it expecting more free VRAM than there is now (another load
            # or process took it): refuse rather than run slower than the operator allows.
            raise InsufficientVram(
                f"only {plan.n_gpu_layers}/{all_layers} layers fit in free VRAM now, "
                f"{min(spec.min_gpu_layers, all_layers)} required",
                extra={"plan": to_json(placement.answer(spec.model))},
            )
        available = placement.host_available_mb
        host_need = _host_share(placement.estimate, plan)
        if available is not None and host_need > available:
            raise InsufficientMemory(
                f"model needs {host_need:.0f} MiB of host memory, {available:.0f} MiB available",
                extra={"plan": to_json(placement.answer(spec.model))},
            )
        resident.placement = replace(placement, plan=plan)
        self.probe.reserve(spec.model, plan.device_mb)
        engine = self.engine_factory(spec, placement, plan, self._parallel(spec))
        resident.engine = engine
        try:
            await engine.start()
        except BaseException:
            self.probe.release(spec.model)
            resident.engine = None
            await engine.close()
            raise
        resident.capabilities = _capabilities(spec, placement.geometry)
        resident.state = ModelState.READY
        resident.loaded_at = time.time()
        resident.load_duration_s = round(time.monotonic() - started, 3)
        log.info(
            "loaded %s from %s in %.2fs (n_gpu_layers=%s, n_ctx=%d)",
            spec.model,
            placement.source.primary.name,
            resident.load_duration_s,
            plan.n_gpu_layers,
            placement.n_ctx,
        )

    def _parallel(self, spec: LoadRequest) -> int:
        return spec.parallel or self.config.parallel

    def _llama_engine(
        self, spec: LoadRequest, placement: Placement, plan: OffloadPlan, parallel: int
    ) -> Engine:
        from neuron.engine.llama import LlamaEngine, LlamaSettings

        n_gpu_layers = plan.n_gpu_layers if self.gpu_offload else 0
        settings = LlamaSettings(
            path=str(placement.source.primary),
            n_ctx=placement.n_ctx,
            parallel=parallel,
            n_gpu_layers=n_gpu_layers,
            tensor_split=plan.tensor_split if self.gpu_offload and plan.tensor_split else None,
            n_threads=self.config.n_threads,
            flash_attn=self.config.flash_attn,
            cache_ram_mb=self.config.cache_ram_mb,
            # On the CPU the pool lives in host RAM and parking is a memcpy; on a GPU a copy
            # crosses the bus, and was not measured here: idle sequences stay until needed.
            park_idle=n_gpu_layers == 0,
            embedding=spec.embedding,
            chat_template=spec.chat_template,
        )
        return LlamaEngine(spec.model, settings)

    async def unload(self, model_id: str, *, force: bool = False) -> None:
        resident = self.models.get(model_id)
        if resident is None:
            raise ModelNotFound(f"model {model_id!r} is not resident")
        if resident.state is ModelState.LOADING:
            raise Conflict(f"model {model_id!r} is still loading", code="model_loading")
        if resident.state is ModelState.UNLOADING:
            # Another caller (an eviction, an admin, a second gateway) is already doing it:
            # what this caller asked for is happening, so it waits for it and succeeds.
            await resident.unloaded.wait()
            return
        busy = resident.gate.in_flight + resident.gate.waiting
        if busy and not force:
            raise Conflict(
                f"model {model_id!r} has {busy} request(s) in flight; pass force to unload anyway",
                code="model_busy",
            )
        resident.state = ModelState.UNLOADING
        try:
            if resident.engine is not None:
                resident.engine.cancel_all()
                await resident.engine.close()
        finally:
            self.probe.release(model_id)
            self.models.pop(model_id, None)
            resident.unloaded.set()
        log.info("unloaded %s", model_id)

    # -- serving -----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def serving(self, model_id: str, capability: str) -> AsyncIterator[Resident]:
        """Hold an admission slot of a ready model for the duration of one request."""
        if self.draining:
            raise Draining("neuron is draining; retry on another node", retry_after=30)
        resident = self.ready(model_id)
        if capability not in resident.capabilities:
            raise InvalidRequest(
                f"model {model_id!r} does not support {capability} "
                f"(it supports: {', '.join(resident.capabilities) or 'nothing'})",
                param="model",
                code="unsupported_capability",
            )
        async with resident.gate.slot():
            if resident.state is not ModelState.READY:
                raise ModelUnavailable(
                    f"model {model_id!r} is {resident.state.value}", retry_after=5
                )
            resident.last_used_at = time.time()
            try:
                yield resident
            finally:
                resident.last_used_at = time.time()

    def ready(self, model_id: str) -> Resident:
        """A resident model that is ready to serve, without taking an admission slot."""
        resident = self.models.get(model_id)
        if resident is None:
            raise ModelNotFound(f"model {model_id!r} is not loaded on this neuron", param="model")
        if resident.state is not ModelState.READY:
            raise ModelUnavailable(f"model {model_id!r} is {resident.state.value}", retry_after=5)
        return resident

    # -- drain -------------------------------------------------------------------------------

    async def drain(self, timeout_s: float) -> None:
        """Refuse new work, let held requests finish (up to `timeout_s`), unload everything."""
        self.draining = True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(
            r.gate.in_flight or r.gate.waiting for r in self.models.values()
        ):
            await asyncio.sleep(0.05)
        for model_id in list(self.models):
            resident = self.models[model_id]
            if resident.state is ModelState.LOADING:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(resident.ready), timeout=5)
            with contextlib.suppress(NeuronError):
                await self.unload(model_id, force=True)

    def health(self) -> tuple[ModelHealth, ...]:
        return tuple(resident.health() for resident in self.models.values())


def _capabilities(spec: LoadRequest, geometry: ModelGeometry) -> tuple[str, ...]:
    if spec.embedding:
        return ("embedding",)
    caps = ["completion"]
    if spec.chat_template or geometry.chat_template:
        caps.append("chat")
        # Tool calls are shaped by a grammar, so every chat template can make them.
        caps.append("tools")
    return tuple(caps)


def _meminfo_mb(key: str) -> float | None:
    """One /proc/meminfo figure in MiB (`MemTotal`, `MemAvailable`), None where there is none."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _rounded(mb: float | None) -> int | None:
    return None if mb is None else round(mb)
