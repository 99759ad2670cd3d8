"""Faults and auth through a real gateway: a neuron killed mid-stream and brought back, keys."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.conftest import CortexProcess

pytestmark = pytest.mark.slow  # real neurons, real models

SMOL = "smollm2-135m-instruct"
MODELS = f'[[models]]\nid = "smol"\nsource = "{SMOL}"\nn_ctx = 1024\n'


def wait_for(predicate, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def node_up(cortex: CortexProcess, name: str) -> bool:
    return next(n for n in cortex.fleet()["nodes"] if n["name"] == name)["up"]


def test_neuron_killed_mid_stream_then_back(start_neuron, tmp_path) -> None:
    one = start_neuron("vram_headroom_mb = 0\n", env={"NEURON_FAKE_GPUS": "0:1GiB"})
    two = start_neuron("vram_headroom_mb = 0\n", env={"NEURON_FAKE_GPUS": "0:500MiB"})
    cortex = CortexProcess(tmp_path, {"one": one, "two": two}, MODELS)
    try:
        cortex.wait_ready()
        client = openai.OpenAI(base_url=cortex.url + "/v1", api_key="x", max_retries=0)
        loaded = httpx.post(
            f"{cortex.url}/admin/models/smol/load", json={"node": "one"}, timeout=60
        )
        assert loaded.status_code == 200
        stream = client.completions.create(
            model="smol", prompt="1, 2, 3,", max_tokens=900, stream=True
        )
        received = 0
        with pytest.raises(openai.APIError) as broken:
            for _chunk in stream:
                received += 1
                if received == 5:
                    one.proc.kill()
        assert received >= 5
        assert "broke off" in str(broken.value.message)
        assert wait_for(lambda: not node_up(cortex, "one"), timeout=5)
        # the next request is served elsewhere (cold-loaded on "two")
        reply = client.completions.create(model="smol", prompt="Hi", max_tokens=3)
        assert reply.choices[0].text is not None
        where = [
            n["name"]
            for n in cortex.fleet()["nodes"]
            for m in n["models"]
            if m["model_id"] == "smol"
        ]
        assert where == ["two"]
        # the neuron comes back on the same port: the gateway sees it again
        one.restart()
        assert wait_for(lambda: node_up(cortex, "one"), timeout=10)
    finally:
        cortex.stop()


@pytest.fixture
def keyed_cortex(start_neuron, tmp_path):
    neuron = start_neuron('[auth]\ntoken = "neuron-secret"\n')
    cortex = CortexProcess(
        tmp_path,
        {"n": neuron},
        MODELS,
        gateway_toml='api_keys = ["client-key"]\nadmin_keys = ["admin-key"]\n',
        tokens={"n": "neuron-secret"},
    )
    cortex.wait_ready()
    yield cortex
    cortex.stop()


def test_client_and_admin_keys(keyed_cortex: CortexProcess) -> None:
    url = keyed_cortex.url
    body = {"model": "smol", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    anonymous = httpx.post(url + "/v1/chat/completions", json=body)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["type"] == "authentication_error"
    wrong = httpx.post(
        url + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer nope"}
    )
    assert wrong.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0).models.list()
    client = openai.OpenAI(base_url=url + "/v1", api_key="client-key", max_retries=0)
    # the gateway sends the neuron its token: the cold load succeeds
    assert client.chat.completions.create(**body).choices[0].message.content is not None
    by_header = httpx.get(url + "/v1/models", headers={"x-api-key": "client-key"})
    assert by_header.status_code == 200
    assert httpx.get(url + "/admin/fleet").status_code == 401
    client_key_on_admin = httpx.get(
        url + "/admin/fleet", headers={"Authorization": "Bearer client-key"}
    )
    assert client_key_on_admin.status_code == 401
    admin = httpx.get(url + "/admin/fleet", headers={"Authorization": "Bearer admin-key"})
    assert admin.status_code == 200 and admin.json()["nodes"][0]["up"] is True
    assert httpx.get(url + "/health").status_code == 200  # public
