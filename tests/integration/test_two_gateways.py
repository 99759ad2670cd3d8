"""Two gateways with one config over one fleet of real neurons: cold loads and evictions from
both at once. Each model is loaded once, no request is lost, and an eviction never takes a
model that the other gateway is streaming from.

Sizes (vram_headroom_mb = 0, one KV sequence per model): SmolLM2 at n_ctx 1024 plans 213 MiB,
so each 500 MiB neuron holds two of the five catalogue ids (all the same GGUF).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.conftest import CortexProcess

pytestmark = pytest.mark.slow  # real neurons, real models

IDS = ("smol-a", "smol-b", "smol-c", "smol-d", "smol-e")
MODELS = "".join(
    f'[[models]]\nid = "{m}"\nsource = "smollm2-135m-instruct"\nn_ctx = 1024\n\n' for m in IDS
)
NEURON_TOML = "vram_headroom_mb = 0\n[engine]\nparallel = 1\n[admission]\nmax_queue_depth = 32\n"


def resident(neurons: dict) -> dict[str, list[str]]:
    """Model id → the neurons that hold it, from the neurons themselves."""
    where: dict[str, list[str]] = {}
    for name, neuron in neurons.items():
        for model in httpx.get(neuron.url + "/models", timeout=10).json():
            if model["state"] in ("ready", "loading"):
                where.setdefault(model["id"], []).append(name)
    return where


def ask(gateway: CortexProcess, model: str, max_tokens: int = 4) -> str:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=max_tokens,
        temperature=0,
    )
    return reply.choices[0].finish_reason


def test_two_gateways_share_one_fleet(start_neuron, tmp_path) -> None:
    env = {"NEURON_FAKE_GPUS": "0:500MiB"}
    neurons = {name: start_neuron(NEURON_TOML, env=env, wait=False) for name in ("n1", "n2")}
    for neuron in neurons.values():
        neuron.wait_ready()
    gateways = [
        CortexProcess(tmp_path, neurons, MODELS, eviction_toml='strategy = "lru"\n')
        for _ in range(2)
    ]
    try:
        for gateway in gateways:
            gateway.wait_ready()

        # 20 concurrent cold requests over three models, split over both gateways.
        with ThreadPoolExecutor(20) as pool:
            finished = list(
                pool.map(lambda i: ask(gateways[i % 2], IDS[i % 3]), range(20), timeout=300)
            )
        assert all(reason in ("stop", "length") for reason in finished)
        placed = resident(neurons)
        assert sorted(placed) == list(IDS[:3])
        assert all(len(nodes) == 1 for nodes in placed.values()), placed

        # Gateway 0 streams from smol-a while gateway 1 needs room for two more models:
        # only idle models may give way, and the stream finishes whole.
        client = openai.OpenAI(base_url=gateways[0].url + "/v1", api_key="unused", max_retries=0)
        streaming, stream_done = threading.Event(), threading.Event()
        pieces: list[str] = []

        def stream() -> None:
            for chunk in client.chat.completions.create(
                model="smol-a",
                messages=[{"role": "user", "content": "Tell me a long story."}],
                max_tokens=700,
                temperature=0,
                logit_bias={"0": -100, "2": -100},  # no end-of-text: all 700 tokens
                stream=True,
            ):
                streaming.set()
                if chunk.choices and chunk.choices[0].finish_reason:
                    pieces.append(chunk.choices[0].finish_reason)
            stream_done.set()

        streamer = threading.Thread(target=stream)
        streamer.start()
        assert streaming.wait(60)
        with ThreadPoolExecutor(4) as pool:
            later = list(
                pool.map(lambda m: ask(gateways[1], m), ["smol-d", "smol-e", "smol-d", "smol-e"])
            )
        assert not stream_done.is_set()  # the evictions happened while smol-a was streaming
        streamer.join(120)
        assert stream_done.is_set() and pieces == ["length"]
        assert all(reason in ("stop", "length") for reason in later)
        placed = resident(neurons)
        assert "smol-a" in placed and "smol-d" in placed and "smol-e" in placed
        assert all(len(nodes) == 1 for nodes in placed.values()), placed
        for gateway in gateways:
            assert "Traceback" not in gateway.log()
    finally:
        for gateway in gateways:
            gateway.stop()
