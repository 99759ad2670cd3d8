"""What `NeuronClient` puts on the wire: the neuron's token on every call, the configured connect
timeout, and no read timeout on inference (the relay times those itself)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from cortex.config import NeuronEndpoint
from cortex.errors import UpstreamTimeout
from cortex.nodes.client import QUICK_READ_S, NeuronClient


def client_for(handler, token: str | None = "secret") -> NeuronClient:
    http = httpx.AsyncClient(
        transport=httpx.MockTransport(handler), timeout=httpx.Timeout(30, connect=0.25)
    )
    return NeuronClient(http, NeuronEndpoint("n", "http://neuron", token))


async def test_every_call_carries_the_token_and_the_connect_timeout() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = {"model": "m", "count": 3} if request.url.path == "/tokenize" else {"uptime_s": 1}
        return httpx.Response(200, json=answer)

    client = client_for(handler)
    await client.health()
    await client.tokenize({"model": "m", "prompt": "hi"})
    deadline = asyncio.get_running_loop().time() + 5
    response = await client.open_stream("/v1/chat/completions", b"{}", {}, deadline)
    await response.aclose()
    assert [r.headers.get("authorization") for r in seen] == ["Bearer secret"] * 3
    timeouts = [r.extensions["timeout"] for r in seen]
    assert all(t["connect"] == 0.25 for t in timeouts)
    assert [t["read"] for t in timeouts] == [QUICK_READ_S, QUICK_READ_S, None]


async def test_no_token_no_header() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={})

    client = client_for(handler, token=None)
    deadline = asyncio.get_running_loop().time() + 5
    await (await client.open_stream("/v1/completions", b"{}", {}, deadline)).aclose()
    assert "authorization" not in seen[0].headers


async def test_an_answer_that_does_not_begin_by_the_deadline_is_an_upstream_timeout() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(10)
        return httpx.Response(200)

    client = client_for(handler)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UpstreamTimeout):
        await client.open_stream("/v1/completions", b"{}", {}, started + 0.2)
    assert loop.time() - started < 1
