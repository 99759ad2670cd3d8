"""Fuzzing every public neuron route with generated hostile requests, on the real engine.

A real neuron serves SmolLM2 under the id the shared strategies use (`stub`) with a small
context, so a body that passes validation runs real inference — hostile JSON schemas reach the
real grammar sampler — but briefly: bodies without `max_tokens` get `max_tokens = 2`.
Hypothesis runs derandomized. For every answer: no 5xx, the OpenAI error envelope on a 4xx, no
traceback text, an answer within the client timeout, a complete stream on a 200. Afterwards the
neuron still serves, /metrics renders, and its log holds no unhandled error.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.fuzz_bodies import (
    CHAT,
    COMPLETIONS,
    CONTENT_TYPES,
    EMBEDDINGS,
    HOSTILE,
    TEXT,
    VALID,
    bodies,
    encode,
)

pytestmark = pytest.mark.slow

ROUTES = (CHAT, COMPLETIONS, EMBEDDINGS)
EXAMPLES = 220  # per inference route; plus 100 per lifecycle and tokenize route below
CLIENT_TIMEOUT_S = 20.0
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
STATUSES: dict[str, Counter[int]] = defaultdict(Counter)


@pytest.fixture(scope="module")
def neuron(start_module_neuron) -> Any:
    node = start_module_neuron("max_body_mb = 1\n[engine]\nparallel = 2\n")
    body = {"model": "stub", "source": "smollm2-135m-instruct", "n_ctx": 256}
    assert httpx.post(node.url + "/models/load", json=body, timeout=120).status_code == 200
    return node


@pytest.fixture(scope="module")
def client(neuron: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=neuron.url, timeout=CLIENT_TIMEOUT_S) as http:
        yield http


def brief(body: Any) -> Any:
    if isinstance(body, dict) and "max_tokens" not in body:
        return {**body, "max_tokens": 2}
    return body


def check(response: httpx.Response) -> None:
    text = response.text
    assert response.status_code < 500, text[:500]
    assert "Traceback" not in text and 'File "' not in text, text[:500]
    if response.status_code >= 400:
        error = response.json()["error"]
        assert {"message", "type", "code", "param"} <= set(error), error
        assert isinstance(error["message"], str)
    elif response.headers.get("content-type", "").startswith("text/event-stream"):
        data = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
        assert data[-1] == "[DONE]", data[-3:]
    else:
        assert isinstance(response.json(), dict | list)


@pytest.mark.parametrize("path", ROUTES)
@FUZZ
@given(data=st.data())
def test_fuzzed_inference_bodies(client: httpx.Client, path: str, data: st.DataObject) -> None:
    body = encode(brief(data.draw(bodies(path), label="body")))
    content_type = data.draw(CONTENT_TYPES, label="content-type")
    response = client.post(path, content=body, headers={"content-type": content_type})
    STATUSES[path][response.status_code] += 1
    check(response)


LIFECYCLE = st.fixed_dictionaries(
    {},
    optional={
        "model": st.one_of(TEXT, HOSTILE),
        "source": st.one_of(st.sampled_from(["notes", "../../etc/passwd", "a/b:Q4"]), HOSTILE),
        "n_ctx": HOSTILE,
        "n_gpu_layers": HOSTILE,
        "embedding": HOSTILE,
        "parallel": HOSTILE,
        "chat_template": st.one_of(st.sampled_from(["{% for", "{{ x.y.z }}"]), HOSTILE),
        "force": HOSTILE,
        "prompt": st.one_of(TEXT, HOSTILE),
        "messages": HOSTILE,
    },
)


@pytest.mark.parametrize("path", ["/models/plan", "/models/load", "/models/unload", "/tokenize"])
@settings(FUZZ, max_examples=100)
@given(data=st.data())
def test_fuzzed_lifecycle_and_tokenize_bodies(
    client: httpx.Client, path: str, data: st.DataObject
) -> None:
    body = data.draw(st.one_of(LIFECYCLE, HOSTILE), label="body")
    if isinstance(body, dict) and body.get("model") == "stub" and path == "/models/unload":
        body = {**body, "model": "not-stub"}  # keep the model the other examples need
    response = client.post(path, content=encode(body), headers={"content-type": "application/json"})
    STATUSES[path][response.status_code] += 1
    check(response)


def test_neuron_still_serves_after_fuzzing(neuron: Any, client: httpx.Client) -> None:
    total = sum(sum(counts.values()) for counts in STATUSES.values())
    assert total >= 1000, STATUSES
    for path in ROUTES:  # both refusals and real answers were reached
        assert STATUSES[path][400] >= EXAMPLES // 5, (path, STATUSES[path])
    assert STATUSES[CHAT][200] + STATUSES[COMPLETIONS][200] >= EXAMPLES // 10
    assert neuron.proc.poll() is None
    for path in (CHAT, COMPLETIONS):
        response = client.post(path, json={**VALID[path], "max_tokens": 2})
        assert response.status_code == 200, response.text
    assert client.get("/metrics").status_code == 200
    log = neuron.log()
    assert "unhandled error" not in log and "Traceback" not in log, log[-2000:]
    assert json.loads(client.get("/health").text)["status"] == "ok"
