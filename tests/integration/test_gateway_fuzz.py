"""Fuzzing every public gateway route, in every dialect, with generated hostile requests.

A real gateway in front of the stub neuron (`bench/stub_upstream.py`), so that a body which
passes validation is answered at once instead of running inference. Hypothesis runs
derandomized (the same requests every run): `EXAMPLES` bodies per inference route (six routes,
bodies from `fuzz_bodies`, sent with assorted content types), then fuzzed model ids on
/v1/models/<id> and wrong methods everywhere. For every answer: no 5xx, the route's error
envelope on a 4xx, no traceback text, an answer within the client timeout (no hang), a complete
stream (or JSON body) on a 200. Afterwards the gateway still serves, /metrics renders, and its
log holds no unhandled error.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import CortexProcess
from tests.integration.fuzz_bodies import (
    CONTENT_TYPES,
    MESSAGES,
    RESPONSES,
    ROUTES,
    VALID,
    bodies,
    encode,
)
from tests.integration.stub_gateway import stub_gateway

pytestmark = pytest.mark.slow  # a real gateway over a stub neuron

EXAMPLES = 220  # per inference route: 1320 bodies
CLIENT_TIMEOUT_S = 10.0
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
STATUSES: dict[str, Counter[int]] = defaultdict(Counter)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CortexProcess]:
    workdir = tmp_path_factory.mktemp("fuzz")
    with stub_gateway(workdir, gateway_toml="max_body_mb = 1\n", metrics=True) as cortex:
        yield cortex


@pytest.fixture(scope="module")
def client(gateway: CortexProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=CLIENT_TIMEOUT_S) as http:
        yield http


def check(response: httpx.Response, path: str) -> None:
    """What every answer must be, whatever was asked."""
    text = response.text
    assert response.status_code < 500, text[:500]
    assert "Traceback" not in text and 'File "' not in text, text[:500]
    anthropic = path.startswith(MESSAGES)
    if response.status_code >= 400:
        body = response.json()
        if anthropic:
            assert body["type"] == "error", body
            assert set(body["error"]) == {"type", "message", "src"}, body
            assert isinstance(body["error"]["message"], str)
        else:
            assert set(body["error"]) == {"message", "type", "code", "param", "src"}, body
            assert isinstance(body["error"]["message"], str)
        assert body["error"]["src"] in ("gateway", "neuron"), body
    elif response.headers.get("content-type", "").startswith("text/event-stream"):
        data = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
        if anthropic:
            assert json.loads(data[-1])["type"] in ("message_stop", "error"), data[-3:]
        elif path == RESPONSES:
            last = json.loads(data[-1])["type"]
            assert last in ("response.completed", "response.incomplete", "response.failed")
        else:
            assert data[-1] == "[DONE]", data[-3:]
    else:
        assert isinstance(response.json(), dict)


@pytest.mark.parametrize("path", ROUTES)
@FUZZ
@given(data=st.data())
def test_fuzzed_bodies(client: httpx.Client, path: str, data: st.DataObject) -> None:
    body = encode(data.draw(bodies(path), label="body"))
    content_type = data.draw(CONTENT_TYPES, label="content-type")
    response = client.post(path, content=body, headers={"content-type": content_type})
    STATUSES[path][response.status_code] += 1
    check(response, path)


@settings(FUZZ, max_examples=150)
@given(model_id=st.text(max_size=300))
def test_fuzzed_model_ids(client: httpx.Client, model_id: str) -> None:
    # Lone surrogates go out as the bytes a UTF-8 encoder without checks would write.
    path = "/v1/models/" + quote(model_id.encode("utf-8", "surrogatepass"), safe="")
    response = client.get(path)
    assert response.status_code in (200, 404), response.text
    check(response, path)


@pytest.mark.parametrize("path", [*ROUTES, "/v1/models", "/health", "/v1/nope", "/v1/messages/x"])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "POST"])
def test_wrong_methods_and_paths(client: httpx.Client, path: str, method: str) -> None:
    response = client.request(method, path, content=b"{}")
    check(response, path)
    if method not in ("GET", "POST") or (method == "GET" and path in ROUTES):
        assert response.status_code in (404, 405)


def test_gateway_still_serves_after_fuzzing(gateway: CortexProcess, client: httpx.Client) -> None:
    for path, counts in STATUSES.items():  # the fuzz reached both the relay and the refusals
        assert counts[200] >= EXAMPLES // 20 and counts[400] >= EXAMPLES // 5, (path, counts)
    assert gateway.proc.poll() is None
    for path in ROUTES:
        response = client.post(path, json=VALID[path])
        assert response.status_code == 200, response.text
        check(response, path)
    assert client.get("/health").json()["nodes_up"] == 1
    metrics = httpx.get(f"http://127.0.0.1:{gateway.metrics_port}/metrics", timeout=5)
    assert metrics.status_code == 200 and "cortex_requests_total" in metrics.text
    log = gateway.log_path.read_text(errors="replace")
    assert "unhandled error" not in log and "Traceback" not in log
