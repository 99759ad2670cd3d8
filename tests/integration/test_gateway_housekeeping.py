"""Housekeeping through a real gateway: idle unloads and defragmentation after evictions."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.conftest import CortexProcess

pytestmark = pytest.mark.slow  # real neurons, real models

SMOL = "smollm2-135m-instruct"
MODELS = "".join(
    f'[[models]]\nid = "{name}"\nsource = "{SMOL}"\nn_ctx = 1024\n{extra}\n'
    for name, extra in (("keep", 'pinned_on = ["n1"]'), ("idle", ""), ("other", ""))
)


# Sizes below are for one KV sequence per model (SmolLM2 at n_ctx 1024: 213 MiB).
ONE_SEQUENCE = "vram_headroom_mb = 0\n[engine]\nparallel = 1\n"


def wait_for(predicate, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def resident(cortex: CortexProcess, state: str | None = None) -> set[str]:
    return {
        m["model_id"]
        for n in cortex.fleet()["nodes"]
        for m in n["models"]
        if state in (None, m["state"])
    }


def test_idle_models_unload_but_pinned_ones_stay(start_neuron, tmp_path) -> None:
    neuron = start_neuron(ONE_SEQUENCE, env={"NEURON_FAKE_GPUS": "0:1GiB"})
    cortex = CortexProcess(
        tmp_path, {"n1": neuron}, MODELS, eviction_toml="idle_unload_after_s = 1.5\n"
    )
    try:
        cortex.wait_ready()
        client = openai.OpenAI(base_url=cortex.url + "/v1", api_key="x", max_retries=0)
        for model in ("keep", "idle"):
            client.completions.create(model=model, prompt="Hi", max_tokens=1)
        assert resident(cortex) == {"keep", "idle"}
        assert wait_for(lambda: resident(cortex) == {"keep"}, timeout=10)
        idle_events = [e for e in cortex.fleet()["events"] if e.get("reason") == "idle"]
        assert [e["model"] for e in idle_events] == ["idle"]
    finally:
        cortex.stop()


def test_defrag_reloads_the_resident_set_after_evictions(start_neuron, tmp_path) -> None:
    # room for two SmolLM2s (213 MiB each): the third evicts one, which counts a cycle
    neuron = start_neuron(ONE_SEQUENCE, env={"NEURON_FAKE_GPUS": "0:450MiB"})
    cortex = CortexProcess(
        tmp_path, {"n1": neuron}, MODELS, eviction_toml="defrag_after_cycles = 1\n"
    )
    try:
        cortex.wait_ready()
        client = openai.OpenAI(base_url=cortex.url + "/v1", api_key="x", max_retries=0)
        for model in ("keep", "idle", "other"):
            client.completions.create(model=model, prompt="Hi", max_tokens=1)
        assert wait_for(
            lambda: any(e["kind"] == "defrag" for e in cortex.fleet()["events"]), timeout=10
        )
        assert wait_for(
            lambda: resident(cortex) == resident(cortex, "ready") == {"keep", "other"}, timeout=10
        )
        loaded_at = {
            m["model_id"]: m["loaded_at"] for n in cortex.fleet()["nodes"] for m in n["models"]
        }
        defrag = next(e for e in cortex.fleet()["events"] if e["kind"] == "defrag")
        assert all(at >= defrag["at"] - 1 for at in loaded_at.values())  # reloaded after it
        node = cortex.fleet()["nodes"][0]
        assert node["evictions_since_defrag"] == 0
        evictions = [e for e in cortex.fleet()["events"] if e["kind"] == "evict"]
        assert {e["reason"] for e in evictions} == {"lru", "defrag"}
        assert httpx.get(cortex.url + "/health").json()["nodes_up"] == 1
    finally:
        cortex.stop()
