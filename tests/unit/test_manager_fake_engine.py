"""The model manager and admission over `FakeEngine`: lifecycle and limits in milliseconds."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from neuron.config import Admission, NeuronConfig
from neuron.engine import Finished, GenerateRequest, Piece
from neuron.engine.fake import FakeEngine
from neuron.errors import Conflict, InsufficientVram, RateLimited
from neuron.gpu import FakeProbe, NoGpuProbe
from neuron.manager import ModelManager, ModelState
from synapse.contract import LoadRequest, to_json


def manager(engines: list[FakeEngine], model_dir: Path, **admission: float) -> ModelManager:
    config = NeuronConfig(model_dirs=(model_dir,), admission=Admission(**admission), parallel=2)

    def factory(spec, placement, plan, parallel) -> FakeEngine:
        engine = FakeEngine(spec.model, parallel=parallel, step_s=0.01)
        engines.append(engine)
        return engine

    return ModelManager(
        config, NoGpuProbe("no GPUs in this test"), gpu_offload=False, engine_factory=factory
    )


def gpu_manager(probe: FakeProbe, model_dir: Path) -> ModelManager:
    """A manager planning against `probe`'s VRAM (50 MiB headroom) with FakeEngines."""
    config = NeuronConfig(model_dirs=(model_dir,), parallel=1, vram_headroom_mb=50)
    return ModelManager(
        config,
        probe,
        gpu_offload=False,
        engine_factory=lambda spec, placement, plan, parallel: FakeEngine(spec.model),
    )


async def collect(engine: FakeEngine, prompt: str) -> tuple[str, Finished]:
    text = ""
    async for item in engine.generate(GenerateRequest(prompt=prompt)):
        if isinstance(item, Piece):
            text += item.text
        else:
            return text, item
    raise AssertionError("no Finished")


async def test_concurrent_loads_build_one_engine(smollm_path: Path) -> None:
    engines: list[FakeEngine] = []
    models = manager(engines, smollm_path.parent)
    spec = LoadRequest(model="smol", source=str(smollm_path))
    first, second = await asyncio.gather(models.load(spec), models.load(spec))
    assert first is second and len(engines) == 1
    assert first.state is ModelState.READY and first.gate.limits.max_in_flight == 2
    assert "tools" in first.capabilities  # every chat template can make grammar-shaped calls
    assert first.placement is not None and first.placement.parallel == 2


async def test_queue_limits_and_busy_unload(smollm_path: Path) -> None:
    engines: list[FakeEngine] = []
    models = manager(engines, smollm_path.parent, max_queue_depth=1, max_wait_s=5)
    resident = await models.load(LoadRequest(model="smol", source=str(smollm_path)))
    engine = engines[0]
    release = asyncio.Event()

    async def hold() -> None:
        async with models.serving("smol", "chat"):
            await release.wait()

    holders = [asyncio.create_task(hold()) for _ in range(3)]  # two run, one waits
    await asyncio.sleep(0.05)
    assert (resident.gate.in_flight, resident.gate.waiting) == (2, 1)
    with pytest.raises(RateLimited) as refused:
        async with models.serving("smol", "chat"):
            pass
    assert refused.value.retry_after and refused.value.retry_after >= 1
    with pytest.raises(Conflict):
        await models.unload("smol")
    release.set()
    await asyncio.gather(*holders)
    text, finished = await collect(engine, "one two three")
    assert text == "three two one" and finished.usage.completion_tokens == 3
    await models.unload("smol")
    assert "smol" not in models.models


async def test_fake_engine_runs_at_most_parallel_generations() -> None:
    engine = FakeEngine("m", parallel=2, step_s=0.02)
    await engine.start()
    peak = 0

    async def watch() -> None:
        nonlocal peak
        for _ in range(30):
            peak = max(peak, engine.busy)
            await asyncio.sleep(0.005)

    results = await asyncio.gather(*(collect(engine, "a b c d") for _ in range(4)), watch())
    assert peak == 2
    assert all(text == "d c b a" for text, _ in results[:4])


async def test_forced_unload_cancels_generations(smollm_path: Path) -> None:
    engines: list[FakeEngine] = []
    models = manager(engines, smollm_path.parent)
    await models.load(LoadRequest(model="smol", source=str(smollm_path)))
    engine = engines[0]
    engine._reply = lambda prompt: " ".join(["word"] * 500)  # a long answer

    async def generate() -> Finished:
        async with models.serving("smol", "chat"):
            return (await collect(engine, "go"))[1]

    task = asyncio.create_task(generate())
    await asyncio.sleep(0.05)
    await models.unload("smol", force=True)
    finished = await asyncio.wait_for(task, 2)
    assert finished.reason.value == "cancelled" and finished.usage.completion_tokens < 500


async def test_concurrent_unloads_of_one_model_both_succeed(smollm_path: Path) -> None:
    """An eviction racing an admin unload (or two gateways) used to get 409 model_unloading,
    which reached clients; unloading is idempotent while it is in progress."""
    engines: list[FakeEngine] = []
    models = manager(engines, smollm_path.parent)
    await models.load(LoadRequest(model="smol", source=str(smollm_path)))
    await asyncio.gather(models.unload("smol"), models.unload("smol"))
    assert "smol" not in models.models


async def test_plan_reports_capacity_and_host_and_min_gpu_layers_is_kept(
    smollm_path: Path,
) -> None:
    """The plan tells the gateway what an empty host offers; a load that asks for more layers
    than fit in free VRAM now is refused (507 insufficient_vram) and reserves nothing."""
    probe = FakeProbe({0: 200})
    models = gpu_manager(probe, smollm_path.parent)
    placement = await models.placement(str(smollm_path), 1024)
    answer = to_json(placement.answer("smol"))
    assert answer["capacity_mb"] == 150 and answer["available_mb"] == 150
    assert answer["host_total_mb"] > answer["host_available_mb"] > 0
    split = answer["plan"]
    everything = answer["n_layers"] + 1
    assert not split["fits_fully"] and 0 < split["n_gpu_layers"] < everything

    with pytest.raises(InsufficientVram) as refused:
        await models.load(
            LoadRequest(
                model="smol", source=str(smollm_path), n_ctx=1024, min_gpu_layers=everything
            )
        )
    assert refused.value.status == 507 and refused.value.code == "insufficient_vram"
    assert f"{split['n_gpu_layers']}/{everything} layers" in refused.value.message
    assert probe.status()[0].vram_free_mb == 200  # nothing reserved for the refused load

    resident = await models.load(
        LoadRequest(
            model="smol2", source=str(smollm_path), n_ctx=1024, min_gpu_layers=split["n_gpu_layers"]
        )
    )
    assert resident.describe().n_gpu_layers == split["n_gpu_layers"]


async def test_an_n_gpu_layers_override_is_planned_and_reserved_as_such(smollm_path: Path) -> None:
    """An operator's layer count replaces the planner's: the plan, `fits_fully` and the VRAM
    reserved for the load are those of that many layers, not of what would have fitted."""
    probe = FakeProbe({0: 200})
    models = gpu_manager(probe, smollm_path.parent)
    fitting = (await models.placement(str(smollm_path), 1024)).plan
    assert fitting.n_gpu_layers > 2
    resident = await models.load(
        LoadRequest(model="smol", source=str(smollm_path), n_ctx=1024, n_gpu_layers=2)
    )
    described = resident.describe()
    assert described.n_gpu_layers == 2 and resident.placement is not None
    assert not resident.placement.plan.fits_fully
    reserved = 200 - probe.status()[0].vram_free_mb
    assert 0 < reserved < sum(fitting.device_mb.values()) - 1
    assert abs(reserved - described.vram_used_mb) <= 1  # whole MiB in the description
    cpu_only = await models.load(
        LoadRequest(model="cpu", source=str(smollm_path), n_ctx=1024, n_gpu_layers=0)
    )
    assert cpu_only.describe().n_gpu_layers == 0 and cpu_only.describe().vram_used_mb == 0
    assert 200 - probe.status()[0].vram_free_mb == reserved  # nothing more reserved
