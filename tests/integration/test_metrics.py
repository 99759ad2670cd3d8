"""Prometheus metrics after real traffic through a real gateway and neuron, parsed with
prometheus-client's own parser."""

from __future__ import annotations

import time

import anthropic
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import CortexProcess

pytestmark = pytest.mark.slow  # real neurons, real models

SMOL = "smollm2-135m-instruct"
MODELS = f"""
[[models]]
id = "smol-a"
source = "{SMOL}"
n_ctx = 1024

[[models]]
id = "smol-b"
source = "{SMOL}"
n_ctx = 1024
"""


def samples(text: str) -> list:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(text: str, name: str, **labels: str) -> float:
    return sum(
        s.value
        for s in samples(text)
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


@pytest.fixture(scope="module")
def fleet(start_module_neuron, tmp_path_factory: pytest.TempPathFactory):
    # room for exactly one SmolLM2 (213 MiB planned): loading the other evicts the first
    neuron = start_module_neuron("vram_headroom_mb = 0\n", env={"NEURON_FAKE_GPUS": "0:300MiB"})
    cortex = CortexProcess(tmp_path_factory.mktemp("cortex"), {"n1": neuron}, MODELS, metrics=True)
    cortex.wait_ready()
    yield cortex, neuron
    cortex.stop()


def scrape(cortex: CortexProcess) -> str:
    return httpx.get(f"http://127.0.0.1:{cortex.metrics_port}/metrics").text


def test_token_counts_match_usage_and_eviction_reason(fleet) -> None:
    cortex, neuron = fleet
    client = openai.OpenAI(base_url=cortex.url + "/v1", api_key="x", max_retries=0)
    usage = []
    reply = client.chat.completions.create(
        model="smol-a", messages=[{"role": "user", "content": "Hi"}], max_tokens=6
    )
    usage.append((reply.usage.prompt_tokens, reply.usage.completion_tokens))
    stream = client.chat.completions.create(
        model="smol-a",
        messages=[{"role": "user", "content": "Hello there"}],
        max_tokens=7,
        stream=True,
        stream_options={"include_usage": True},
    )
    final = [c for c in stream if c.usage][-1].usage
    usage.append((final.prompt_tokens, final.completion_tokens))
    # a stream whose client did not ask for usage is still counted, and gets no usage chunk
    chunks = list(
        client.completions.create(model="smol-a", prompt="One, two,", max_tokens=5, stream=True)
    )
    assert all(c.usage is None for c in chunks)
    text = scrape(cortex)
    prompt = value(text, "cortex_prompt_tokens_total", model="smol-a")
    completion = value(text, "cortex_completion_tokens_total", model="smol-a")
    completion_stream = value(
        text, "cortex_completion_tokens_total", model="smol-a", endpoint="completions"
    )
    assert completion_stream == 5
    assert completion - completion_stream == sum(c for _, c in usage)
    assert prompt > sum(p for p, _ in usage)  # plus the completion's prompt
    assert value(text, "cortex_requests_total", model="smol-a", status_class="2xx") == 3
    assert value(text, "cortex_time_to_first_token_seconds_count", model="smol-a") == 3
    assert value(text, "cortex_cold_loads_total", model="smol-a", outcome="ok") == 1
    assert value(text, "cortex_cold_load_wait_seconds_count", model="smol-a") == 1
    assert value(text, "cortex_model_resident", model="smol-a", state="ready") == 1
    assert value(text, "cortex_node_up", node="n1") == 1
    assert value(text, "cortex_model_vram_estimate_bytes", model="smol-a") > 200 * 2**20
    # the engine's KV pool, from the neuron's /health at the next poll
    deadline = time.monotonic() + 15
    while not value(scrape(cortex), "cortex_model_kv_cells_used", model="smol-a"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    text = scrape(cortex)
    assert 0 < value(text, "cortex_model_kv_cells_used", model="smol-a") < 1024
    assert value(text, "cortex_model_kv_cells", model="smol-a") >= 1024
    assert value(text, "cortex_model_parked_bytes", model="smol-a") == 0
    # the neuron counts the same tokens at the source
    neuron_text = httpx.get(neuron.url + "/metrics").text
    assert value(neuron_text, "neuron_completion_tokens_total", model="smol-a") == completion
    assert value(neuron_text, "neuron_requests_total", model="smol-a", status_class="2xx") == 3
    assert value(neuron_text, "neuron_gpu_vram_total_bytes", gpu="0") == 300 * 2**20
    # smol-b needs smol-a's room: one LRU eviction
    client.chat.completions.create(
        model="smol-b", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    text = scrape(cortex)
    assert value(text, "cortex_evictions_total", node="n1", reason="lru") == 1
    assert value(text, "cortex_model_resident", model="smol-a") == 0


def test_errors_are_counted_by_code_and_dialect(fleet) -> None:
    cortex, _ = fleet
    with pytest.raises(openai.NotFoundError):
        openai.OpenAI(
            base_url=cortex.url + "/v1", api_key="x", max_retries=0
        ).chat.completions.create(model="nope", messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(anthropic.NotFoundError):
        anthropic.Anthropic(base_url=cortex.url, api_key="x", max_retries=0).messages.create(
            model="nope", max_tokens=3, messages=[{"role": "user", "content": "Hi"}]
        )
    text = scrape(cortex)
    assert value(text, "cortex_request_errors_total", dialect="openai", code="model_not_found") == 1
    assert (
        value(text, "cortex_request_errors_total", dialect="anthropic", code="model_not_found") == 1
    )
    assert all("nope" not in s.labels.values() for s in samples(text))  # unknown names not labels


def test_grafana_dashboard_uses_exported_metrics(fleet) -> None:
    """Every metric the dashboard queries exists in a real scrape (gateway or neuron)."""
    import json
    import re
    from pathlib import Path

    cortex, neuron = fleet
    exported = {
        family.name
        for text in (scrape(cortex), httpx.get(neuron.url + "/metrics").text)
        for family in text_string_to_metric_families(text)
    }
    dashboard = json.loads((Path(__file__).parents[2] / "conf/grafana-dashboard.json").read_text())
    queried = {
        re.sub(r"_(total|bucket|count|sum)$", "", name)
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\b((?:cortex|neuron)_[a-z_]+)", target["expr"])
    }
    assert queried and queried <= exported, queried - exported
