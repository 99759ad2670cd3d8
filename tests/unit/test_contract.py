"""synapse.contract: what a neuron renders, a gateway parses back to the same value; anything
off the contract is one `ContractError` that names the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cortex.fleet.state import CatalogueEntry
from neuron.config import NeuronConfig
from neuron.engine.fake import FakeEngine
from neuron.gpu import FakeProbe
from neuron.manager import ModelManager
from synapse.access import access_line
from synapse.contract import (
    ContractError,
    DeviceInfo,
    DeviceStatus,
    Discovery,
    Health,
    LoadRequest,
    MemoryEstimate,
    ModelHealth,
    ModelInfo,
    PlanAnswer,
    PlanRequest,
    Split,
    TokenCount,
    Unloaded,
    UnloadRequest,
    parse,
    to_json,
)

ESTIMATE = MemoryEstimate(full_offload_mb=213, per_layer_mb=3, compute_mb=99, output_mb=29)
VALUES = [
    Discovery("h", "cuda", (DeviceInfo(0, "GPU 0", 24_576, "8.9"),), version="1.0"),
    Health(
        12.5,
        devices=(DeviceStatus(0, 24_576, 1_000, 23_576, 3.0, None),),
        models=(ModelHealth("m", "ready", in_flight=2, max_in_flight=4, last_used_at=1e9),),
    ),
    ModelInfo("m", "ready", n_gpu_layers=8, n_layers=30, capabilities=("chat",), estimate=ESTIMATE),
    ModelInfo("bad", "failed", error={"message": "no such file", "code": "source_not_found"}),
    PlanAnswer("m", ESTIMATE, Split(8, False, (1.0, 2.0), {"0": 150.0}), 150.0, n_layers=30),
    Unloaded("m"),
    TokenCount("m", 42),
    LoadRequest("m", "org/repo:Q4_K_M", 2048, n_gpu_layers=-1, embedding=True, parallel=2),
    PlanRequest("m", n_ctx=16),
    UnloadRequest("m", force=True),
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_a_rendered_value_parses_back_to_itself(value: Any) -> None:
    assert parse(type(value), to_json(value)) == value


async def test_what_the_neuron_renders_is_what_the_gateway_parses(smollm_path: Path) -> None:
    models = ModelManager(
        NeuronConfig(model_dirs=(smollm_path.parent,), parallel=2),
        FakeProbe({0: 200}),
        gpu_offload=False,
        engine_factory=lambda spec, placement, plan, parallel: FakeEngine(spec.model),
    )
    placement = await models.placement(str(smollm_path), 1024)
    plan = placement.answer("smol", None)
    assert parse(PlanAnswer, to_json(plan)) == plan
    resident = await models.load(LoadRequest(model="smol", source=str(smollm_path), n_ctx=1024))
    for value in (resident.describe(), resident.health()):
        assert parse(type(value), to_json(value)) == value


OFF_CONTRACT = [
    # type, data, where the error points
    (Health, [], "answer"),
    (Health, {}, "uptime_s"),
    (Health, {"uptime_s": "12"}, "uptime_s"),
    (Health, {"uptime_s": True}, "uptime_s"),
    (Health, {"uptime_s": 1, "models": {"m": {}}}, "models"),
    (Health, {"uptime_s": 1, "models": [{"id": "m"}]}, "models[0].state"),
    (
        Health,
        {"uptime_s": 1, "models": [{"id": "m", "state": "ready", "in_flight": 1.5}]},
        "models[0].in_flight",
    ),
    (Health, {"uptime_s": 1, "devices": [{"index": {}}]}, "devices[0].index"),
    (
        PlanAnswer,
        {"model": "m", "estimate": {}, "plan": {}, "available_mb": 1},
        "estimate.full_offload_mb",
    ),
    (
        PlanAnswer,
        {
            "model": "m",
            "estimate": {"full_offload_mb": 1},
            "plan": {"n_gpu_layers": 1, "fits_fully": "yes"},
            "available_mb": 1,
        },
        "plan.fits_fully",
    ),
    (
        PlanAnswer,
        {
            "model": "m",
            "estimate": {"full_offload_mb": 1},
            "plan": {"n_gpu_layers": 1, "fits_fully": True, "device_mb": {"0": "x"}},
            "available_mb": 1,
        },
        "plan.device_mb.0",
    ),
    (TokenCount, {"model": "m", "count": None}, "count"),
    (ModelInfo, {"id": None, "state": "ready"}, "id"),
    (ModelInfo, {"id": "m", "state": "ready", "capabilities": "chat"}, "capabilities"),
]


@pytest.mark.parametrize(("kind", "data", "where"), OFF_CONTRACT)
def test_an_answer_off_the_contract_names_its_field(kind: type, data: Any, where: str) -> None:
    with pytest.raises(ContractError) as error:
        parse(kind, data)
    assert (error.value.path or "answer") == where
    assert str(error.value).startswith(where)


def test_unknown_keys_are_ignored_and_missing_optional_ones_default() -> None:
    answer = parse(Health, {"uptime_s": 3, "a_newer_field": {"x": 1}})
    assert answer == Health(3.0) and answer.models == () and answer.draining is False
    listed = parse(tuple[ModelInfo, ...], [{"id": "m", "state": "loading"}])
    assert listed == (ModelInfo("m", "loading"),)


def test_both_programs_write_access_lines_the_same_way() -> None:
    line = access_line("POST", "/v1/chat/completions", model="m", status=200, client_gone=False)
    assert line == "POST /v1/chat/completions model=m status=200 client_gone=no"


BAD_BODIES = [
    # type, body, the field the 400 names
    (LoadRequest, {}, "model"),
    (LoadRequest, {"model": ""}, "model"),
    (LoadRequest, {"model": "x" * 257}, "model"),
    (
        LoadRequest,
        {"model": "a\ud800b"},
        "model",
    ),  # a lone surrogate: no metric label could hold it
    (LoadRequest, {"model": "a\nb"}, "model"),
    (LoadRequest, {"model": "m", "source": ""}, "source"),
    (LoadRequest, {"model": "m", "n_ctx": 15}, "n_ctx"),
    (LoadRequest, {"model": "m", "n_ctx": "4096"}, "n_ctx"),
    (LoadRequest, {"model": "m", "n_gpu_layers": -2}, "n_gpu_layers"),
    (LoadRequest, {"model": "m", "min_gpu_layers": 100_001}, "min_gpu_layers"),
    (LoadRequest, {"model": "m", "embedding": 1}, "embedding"),
    (LoadRequest, {"model": "m", "parallel": 0}, "parallel"),
    (LoadRequest, {"model": "m", "parallel": 65}, "parallel"),
    (LoadRequest, {"model": "m", "chat_template": ""}, "chat_template"),
    (PlanRequest, {"model": "m", "parallel": True}, "parallel"),
    (UnloadRequest, {"model": "m", "force": "yes"}, "force"),
    (UnloadRequest, {"model": None}, "model"),
]


@pytest.mark.parametrize(("kind", "body", "where"), BAD_BODIES)
def test_a_request_body_off_the_contract_names_its_field(kind: type, body: Any, where: str) -> None:
    with pytest.raises(ContractError) as error:
        parse(kind, body)
    assert error.value.path == where


def test_the_load_body_cortex_sends_is_the_one_the_neuron_reads() -> None:
    entry = CatalogueEntry("coder", source="org/repo:Q4_K_M", n_ctx=8192, embedding=True)
    sent = entry.load_request(min_gpu_layers=12)
    assert parse(LoadRequest, to_json(sent)) == sent
    assert (sent.model, sent.source, sent.n_ctx, sent.min_gpu_layers) == (
        "coder",
        "org/repo:Q4_K_M",
        8192,
        12,
    )
    assert sent.plan_request() == PlanRequest("coder", "org/repo:Q4_K_M", 8192)
    # An entry without a source is loaded from its id.
    assert CatalogueEntry("smol").load_request().source == "smol"
