"""Prefix affinity end to end: two real neurons each hold a replica of SmolLM2 behind a real
gateway, and four conversations take turns. Each comes back to the replica that holds its
prompt so far: the gateway counts those turns as routed by affinity, and the neuron reports
most of each later prompt as read from its cache."""

from __future__ import annotations

import re

import httpx
import openai
import pytest

from tests.conftest import CortexProcess

pytestmark = pytest.mark.slow  # real neurons, real models

MODELS = """
[[models]]
id = "smol"
source = "smollm2-135m-instruct"
n_ctx = 1024
"""
# Four sequences per replica, so that its prefix cache can hold every conversation it serves.
NEURON_TOML = "[engine]\nparallel = 4\n"
CONVERSATIONS = 4
TURNS = 4


def routed(cortex: CortexProcess, by: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{cortex.metrics_port}/metrics").text
    found = re.search(rf'cortex_requests_routed_total\{{by="{by}",model="smol"\}} (\S+)', text)
    if found is None:
        found = re.search(rf'cortex_requests_routed_total\{{model="smol",by="{by}"\}} (\S+)', text)
    return float(found.group(1)) if found else 0.0


def test_interleaved_conversations_come_back_to_their_replica(start_neuron, tmp_path) -> None:
    neurons = {name: start_neuron(NEURON_TOML, wait=False) for name in ("n1", "n2")}
    for neuron in neurons.values():
        neuron.wait_ready()
    cortex = CortexProcess(tmp_path, neurons, MODELS, metrics=True)
    try:
        cortex.wait_ready()
        for name in neurons:
            loaded = httpx.post(
                f"{cortex.url}/admin/models/smol/load", json={"node": name}, timeout=120
            )
            assert loaded.is_success, loaded.text
        client = openai.OpenAI(base_url=cortex.url + "/v1", api_key="unused", max_retries=0)
        histories = [
            [{"role": "system", "content": "You are a helpful assistant. Answer in one line."}]
            for _ in range(CONVERSATIONS)
        ]
        later_turns, cached_turns = 0, 0
        for turn in range(TURNS):
            for c, history in enumerate(histories):
                history.append({"role": "user", "content": f"Conversation {c}, question {turn}."})
                reply = client.chat.completions.create(
                    model="smol", messages=history, max_tokens=8, temperature=0
                )
                history.append({"role": "assistant", "content": reply.choices[0].message.content})
                if turn == 0:
                    continue
                later_turns += 1
                details = reply.usage.prompt_tokens_details
                cached = details.cached_tokens if details else 0
                if cached and cached >= reply.usage.prompt_tokens // 2:
                    cached_turns += 1
        client.close()
        by_affinity, by_load = routed(cortex, "affinity"), routed(cortex, "load")
        assert by_affinity + by_load == CONVERSATIONS * TURNS
        assert by_affinity >= 0.9 * later_turns, (by_affinity, by_load)
        assert cached_turns >= 0.9 * later_turns, (cached_turns, later_turns)
    finally:
        cortex.stop()
