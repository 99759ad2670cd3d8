"""The neuron's whole HTTP API in process: the real Sanic app over `FakeEngine`s and a
`FakeProbe`, driven through ASGI with httpx (no socket, no model), in milliseconds.

What it pins down: the lifecycle contract answers, chat and completion bodies and streams,
admission (the queue, 429 with Retry-After), a busy unload's 409, and errors in the OpenAI
envelope.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sanic import Sanic

from neuron.app import create_app
from neuron.config import Admission, NeuronConfig
from neuron.engine.fake import FakeEngine
from neuron.gpu import FakeProbe
from synapse.contract import Health, ModelInfo, PlanAnswer, parse

ENGINES: list[FakeEngine] = []


def fake_engine(spec: Any, placement: Any, plan: Any, parallel: int) -> FakeEngine:
    engine = FakeEngine(spec.model, parallel=parallel, step_s=0.02)
    ENGINES.append(engine)
    return engine


@pytest.fixture
async def neuron(smollm_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A started neuron app (one parallel slot, one queued request at most)."""
    config = NeuronConfig(
        model_dirs=(smollm_path.parent,),
        parallel=1,
        vram_headroom_mb=0,
        admission=Admission(max_queue_depth=1, max_wait_s=5),
    )
    app = create_app(config, probe=FakeProbe({0: 1000}), engine_factory=fake_engine)
    app.config.TOUCHUP = False  # Sanic rewrites its request handler once per process, not per app
    try:
        async with lifespan(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://neuron") as client:
                yield client
    finally:
        Sanic.unregister_app(app)  # the next test builds an app of the same name


class lifespan:
    """Runs an ASGI app's startup and shutdown listeners around a block."""

    def __init__(self, app: Sanic) -> None:
        self.app = app
        self.inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        self.outbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()

    async def __aenter__(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
        self.task = asyncio.create_task(self.app(scope, self.inbox.get, self.outbox.put))
        await self.inbox.put({"type": "lifespan.startup"})
        started = await self.outbox.get()
        assert started["type"] == "lifespan.startup.complete", started

    async def __aexit__(self, *exc: object) -> None:
        await self.inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(self.task, 10)


async def load(client: httpx.AsyncClient, model: str, source: Path) -> dict[str, Any]:
    answer = await client.post("/models/load", json={"model": model, "source": str(source)})
    assert answer.status_code == 200, answer.text
    return answer.json()


async def test_lifecycle_answers_follow_the_contract(
    neuron: httpx.AsyncClient, smollm_path: Path
) -> None:
    asked = {"model": "smol", "source": str(smollm_path)}
    plan = parse(PlanAnswer, (await neuron.post("/models/plan", json=asked)).json())
    assert plan.state is None and plan.n_layers == 30 and plan.capacity_mb == 1000
    loaded = parse(ModelInfo, await load(neuron, "smol", smollm_path))
    assert loaded.state == "ready" and "chat" in loaded.capabilities
    health = parse(Health, (await neuron.get("/health")).json())
    assert [(m.id, m.state, m.max_in_flight) for m in health.models] == [("smol", "ready", 1)]
    again = parse(PlanAnswer, (await neuron.post("/models/plan", json=asked)).json())
    assert again.state == "ready"
    gone = await neuron.post("/models/unload", json={"model": "smol"})
    assert gone.json() == {"model": "smol", "state": "unloaded"}
    assert (await neuron.get("/models")).json() == []


async def test_chat_and_completion_whole_and_streamed(
    neuron: httpx.AsyncClient, smollm_path: Path
) -> None:
    await load(neuron, "smol", smollm_path)
    chat = await neuron.post(
        "/v1/chat/completions",
        json={"model": "smol", "messages": [{"role": "user", "content": "one two three"}]},
    )
    assert chat.status_code == 200, chat.text
    message = chat.json()["choices"][0]["message"]
    assert message["role"] == "assistant" and message["content"]
    assert chat.json()["usage"]["completion_tokens"] >= 1
    stream = await neuron.post(
        "/v1/completions",
        json={"model": "smol", "prompt": "a b c", "stream": True, "max_tokens": 2},
    )
    lines = [line for line in stream.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    text = "".join(c["choices"][0]["text"] for c in chunks if c.get("choices"))
    assert text.split() == ["c", "b"]  # reversed, stopped at max_tokens
    assert any(c["choices"][0].get("finish_reason") == "length" for c in chunks if c.get("choices"))


async def test_admission_queues_one_then_refuses_with_retry_after(
    neuron: httpx.AsyncClient, smollm_path: Path
) -> None:
    await load(neuron, "smol", smollm_path)
    body = {"model": "smol", "prompt": " ".join(["w"] * 20), "max_tokens": 20}
    first = asyncio.create_task(neuron.post("/v1/completions", json=body))  # runs
    await asyncio.sleep(0.05)
    second = asyncio.create_task(neuron.post("/v1/completions", json=body))  # waits
    await asyncio.sleep(0.05)
    third = await neuron.post("/v1/completions", json=body)  # refused
    assert third.status_code == 429 and int(third.headers["retry-after"]) >= 1
    assert third.json()["error"]["type"]
    busy = await neuron.post("/models/unload", json={"model": "smol"})
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "model_busy"
    assert [(await task).status_code for task in (first, second)] == [200, 200]


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/v1/chat/completions", {"model": "nope", "messages": []}, 400, None),
        (
            "/v1/chat/completions",
            {"model": "nope", "messages": [{"role": "user", "content": "x"}]},
            404,
            "model_not_found",
        ),
        ("/v1/completions", {"model": "smol", "prompt": 5}, 400, None),
        ("/models/load", {"model": "x", "source": "no-such-model"}, 404, "source_not_found"),
        ("/models/unload", {"model": "never-loaded"}, 404, "model_not_found"),
    ],
)
async def test_errors_are_the_openai_envelope(
    neuron: httpx.AsyncClient, path: str, body: dict[str, Any], status: int, code: str | None
) -> None:
    answer = await neuron.post(path, json=body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["message"] and error["type"]
    if code is not None:
        assert error["code"] == code
