"""`NeuronClient` over each upstream transport (`[gateway] upstream_transport`) against a small
real HTTP server in the test's own loop: a JSON call, a stream read piece by piece while the
server is still sending, a refused connection, a read timeout, a malformed answer and a body cut
short all end as they do with httpx's own transport. No neuron, no subprocess.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from cortex.config import GatewayConfig, NeuronEndpoint, load_config
from cortex.control.dispatcher import Exchange
from cortex.control.scheduler import Target
from cortex.errors import NodeUnavailable, UpstreamTimeout
from cortex.nodes.client import NeuronClient
from cortex.nodes.transport import AiohttpUpstream, make_http_client, make_streams
from cortex.nodes.wire import WireStreams
from synapse.contract import Health
from synapse.tomlconf import ConfigError

TRANSPORTS = ("httptools", "aiohttp", "httpx")
Handler = Callable[["Served", asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Served:
    """One request the server read."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Server:
    """A keep-alive HTTP/1.1 server on loopback; `routes` maps a path to its handler."""

    routes: dict[str, Handler]
    seen: list[Served] = field(default_factory=list)
    connections: int = 0
    closed_by_client: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, *fields = head.decode().split("\r\n")
                method, path, _ = line.split(" ", 2)
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (f.partition(":") for f in fields if f)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                request = Served(method, path, headers, body)
                self.seen.append(request)
                await self.routes[path](request, writer)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_by_client.set()
        finally:
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server({})
    listening = await asyncio.start_server(srv.connection, "127.0.0.1", 0)
    srv.port = listening.sockets[0].getsockname()[1]
    yield srv
    listening.close()


def json_answer(body: bytes) -> Handler:
    async def handler(request: Served, writer: asyncio.StreamWriter) -> None:
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
        writer.write(head.encode() + b"\r\n\r\n" + body)
        await writer.drain()

    return handler


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def client_for(transport: str, port: int, connect_s: float = 0.5) -> NeuronClient:
    config = GatewayConfig(upstream_transport=transport, connect_timeout_s=connect_s)
    endpoint = NeuronEndpoint("n", f"http://127.0.0.1:{port}", "secret")
    http = make_http_client(config)
    return NeuronClient(http, endpoint, make_streams(config, http))


async def close(client: NeuronClient) -> None:
    await client.streams.aclose()
    await client.http.aclose()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Registry:
    def __init__(self) -> None:
        self.finished: list[tuple[str, str]] = []

    def request_finished(self, node: str, model: str) -> None:
        self.finished.append((node, model))


def exchange_for(response: httpx.Response, idle_s: float = 5.0) -> tuple[Exchange, list[str]]:
    """The relay's reader over `response`, as `Dispatcher.open` builds it."""
    broken: list[str] = []
    loop = asyncio.get_running_loop()
    exchange = Exchange(
        Target("n", "m"),
        response,
        _Registry(),  # type: ignore[arg-type]
        loop.time() + 5,
        idle_s,
        lambda node, why: broken.append(why),
    )
    return exchange, broken


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_json_call_carries_the_token(server: Server, transport: str) -> None:
    server.routes["/health"] = json_answer(b'{"status": "ok", "uptime_s": 5, "models": []}')
    client = client_for(transport, server.port)
    try:
        assert await client.health() == Health(uptime_s=5.0)
        assert await client.health() == Health(uptime_s=5.0)  # kept alive
    finally:
        await close(client)
    assert [r.headers["authorization"] for r in server.seen] == ["Bearer secret"] * 2


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_stream_arrives_piece_by_piece_while_the_server_sends(
    server: Server, transport: str
) -> None:
    go_on = asyncio.Event()
    finished = asyncio.Event()

    async def stream(request: Served, writer: asyncio.StreamWriter) -> None:
        writer.write(STREAM_HEAD + chunk(b"data: 1\n\n"))
        await writer.drain()
        await go_on.wait()  # the test has read the first piece by now
        writer.write(chunk(b"data: 2\n\n"))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        await writer.drain()
        finished.set()

    server.routes["/v1/chat/completions"] = stream
    client = client_for(transport, server.port)
    try:
        deadline = asyncio.get_running_loop().time() + 5
        response = await client.open_stream("/v1/chat/completions", b"{}", {}, deadline)
        assert response.status_code == 200
        exchange, broken = exchange_for(response)
        lines = exchange.lines()
        assert await asyncio.wait_for(anext(lines), 2) == "data: 1"
        assert not finished.is_set()
        go_on.set()
        rest = [line async for line in lines]
        await exchange.close()
        assert [line for line in rest if line] == ["data: 2", "data: [DONE]"]
        assert finished.is_set() and not broken
        assert server.seen[0].body == b"{}"
    finally:
        await close(client)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_closing_a_stream_early_closes_its_connection(server: Server, transport: str) -> None:
    async def endless(request: Served, writer: asyncio.StreamWriter) -> None:
        writer.write(STREAM_HEAD)
        while True:
            writer.write(chunk(b"data: x\n\n"))
            await writer.drain()
            await asyncio.sleep(0.01)

    server.routes["/v1/completions"] = endless
    client = client_for(transport, server.port)
    try:
        deadline = asyncio.get_running_loop().time() + 5
        response = await client.open_stream("/v1/completions", b"{}", {}, deadline)
        exchange, _ = exchange_for(response)
        assert await anext(exchange.chunks())
        await exchange.close()
        await asyncio.wait_for(server.closed_by_client.wait(), 2)  # the neuron sees it go
    finally:
        await close(client)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_refused_connection_is_node_unavailable_at_once(transport: str) -> None:
    client = client_for(transport, closed_port())
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        with pytest.raises(NodeUnavailable) as raised:
            await client.health()
        assert isinstance(raised.value.__cause__, httpx.ConnectError)
        assert "ConnectError" in raised.value.message
        with pytest.raises(NodeUnavailable):
            await client.open_stream("/v1/completions", b"{}", {}, loop.time() + 5)
        assert loop.time() - started < 1
    finally:
        await close(client)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_stalled_read_times_out_as_today(server: Server, transport: str) -> None:
    async def silent(request: Served, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    async def silent_mid_answer(request: Served, writer: asyncio.StreamWriter) -> None:
        writer.write(STREAM_HEAD + chunk(b"data: 1\n\n"))
        await writer.drain()
        await asyncio.sleep(30)

    server.routes["/tokenize"] = silent
    server.routes["/v1/completions"] = silent
    server.routes["/v1/chat/completions"] = silent_mid_answer
    client = client_for(transport, server.port)
    loop = asyncio.get_running_loop()
    try:
        # A lifecycle call's own read timeout: the transport's ReadTimeout, NodeUnavailable.
        started = loop.time()
        with pytest.raises(NodeUnavailable) as raised:
            await client.tokenize({"model": "m", "prompt": "hi"}, read_s=0.3)
        assert isinstance(raised.value.__cause__, httpx.ReadTimeout)
        assert 0.25 < loop.time() - started < 2
        # Inference has no read timeout: the first-byte deadline ends the wait.
        started = loop.time()
        with pytest.raises(UpstreamTimeout):
            await client.open_stream("/v1/completions", b"{}", {}, started + 0.3)
        assert loop.time() - started < 2
        # ... and the relay's idle timeout a silence mid-answer.
        response = await client.open_stream("/v1/chat/completions", b"{}", {}, loop.time() + 5)
        exchange, broken = exchange_for(response, idle_s=0.3)
        chunks = exchange.chunks()
        assert await anext(chunks) == b"data: 1\n\n"
        with pytest.raises(UpstreamTimeout, match="went silent"):
            await anext(chunks)
        await exchange.close()
        assert broken == ["timed out"]
    finally:
        await close(client)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_malformed_answer_is_node_unavailable(server: Server, transport: str) -> None:
    async def garbage(request: Served, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HELLO WORLD\r\n\r\n")
        await writer.drain()
        writer.close()

    server.routes["/health"] = garbage
    client = client_for(transport, server.port)
    try:
        with pytest.raises(NodeUnavailable) as raised:
            await client.health()
        assert isinstance(raised.value.__cause__, httpx.TransportError)
    finally:
        await close(client)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_body_cut_short_is_a_broken_relay(server: Server, transport: str) -> None:
    async def cut(request: Served, writer: asyncio.StreamWriter) -> None:
        writer.write(STREAM_HEAD + chunk(b"data: 1\n\n"))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()

    server.routes["/v1/chat/completions"] = cut
    client = client_for(transport, server.port)
    try:
        loop = asyncio.get_running_loop()
        response = await client.open_stream("/v1/chat/completions", b"{}", {}, loop.time() + 5)
        exchange, broken = exchange_for(response)
        chunks = exchange.chunks()
        assert await anext(chunks) == b"data: 1\n\n"
        with pytest.raises(NodeUnavailable, match="broke off mid-answer") as raised:
            await anext(chunks)
        await exchange.close()
        assert isinstance(raised.value.__cause__, httpx.TransportError)
        assert len(broken) == 1
    finally:
        await close(client)


async def test_an_explicit_transport_wins_over_the_config() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, json={})

    config = GatewayConfig(upstream_transport="aiohttp", connect_timeout_s=0.25)
    http = make_http_client(config, httpx.MockTransport(handler))
    try:
        assert (await http.get("http://neuron/health")).json() == {}
        assert http.timeout.connect == 0.25
    finally:
        await http.aclose()
    assert seen == ["/health"]


def test_the_config_picks_the_transport(tmp_path: Path) -> None:
    default = GatewayConfig()
    assert default.upstream_transport == "httptools"
    http = make_http_client(default)
    assert isinstance(http._transport, AiohttpUpstream)  # lifecycle calls
    assert isinstance(make_streams(default, http), WireStreams)  # inference streams
    path = tmp_path / "cortex.toml"
    (tmp_path / "models.toml").write_text("")
    path.write_text('[gateway]\nupstream_transport = "httpx"\n')
    config = load_config(path)
    assert config.upstream_transport == "httpx"
    assert isinstance(make_http_client(config)._transport, httpx.AsyncHTTPTransport)
    path.write_text('[gateway]\nupstream_transport = "requests"\n')
    with pytest.raises(ConfigError, match="upstream_transport"):
        load_config(path)


# -- the httptools transport's own connection handling ----------------------------------------


async def test_streams_reuse_one_connection_and_replace_one_closed_as_it_was_taken(
    server: Server,
) -> None:
    answered = 0

    async def flaky(request: Served, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        if len(server.seen) == 3:  # the neuron closes the kept-alive connection instead
            writer.close()
            return
        answered += 1
        body = b"data: %d\n\n" % answered
        writer.write(STREAM_HEAD + chunk(body) + b"0\r\n\r\n")
        await writer.drain()

    server.routes["/v1/completions"] = flaky
    client = client_for("httptools", server.port)
    loop = asyncio.get_running_loop()
    try:
        for expected in (b"data: 1\n\n", b"data: 2\n\n", b"data: 3\n\n"):
            response = await client.open_stream("/v1/completions", b"{}", {}, loop.time() + 5)
            exchange, broken = exchange_for(response)
            assert await exchange.read() == expected
            await exchange.close()
            assert not broken
    finally:
        await close(client)
    # Two answers on the first connection; the third request met a close there and was sent
    # again on a second one.
    assert server.connections == 2
    assert len(server.seen) == 4


async def test_a_new_connection_closed_without_an_answer_is_node_unavailable(
    server: Server,
) -> None:
    async def hang_up(request: Served, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server.routes["/v1/completions"] = hang_up
    client = client_for("httptools", server.port)
    loop = asyncio.get_running_loop()
    try:
        with pytest.raises(NodeUnavailable) as raised:
            await client.open_stream("/v1/completions", b"{}", {}, loop.time() + 5)
        assert isinstance(raised.value.__cause__, httpx.RemoteProtocolError)
    finally:
        await close(client)
    assert len(server.seen) == 1  # not sent twice: a fresh connection's failure is the caller's


async def test_a_body_that_ends_with_the_connection_and_a_large_one_arrive_whole(
    server: Server,
) -> None:
    large = bytes(range(256)) * 16384  # 4 MiB: reading pauses and resumes on the way

    async def until_close(request: Served, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
        writer.write(b"all of it")
        await writer.drain()
        writer.close()

    async def big(request: Served, writer: asyncio.StreamWriter) -> None:
        head = f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len(large)}"
        writer.write(head.encode() + b"\r\n\r\n" + large)
        await writer.drain()

    server.routes["/v1/completions"] = until_close
    server.routes["/v1/embeddings"] = big
    client = client_for("httptools", server.port)
    loop = asyncio.get_running_loop()
    try:
        response = await client.open_stream("/v1/completions", b"{}", {}, loop.time() + 5)
        assert response.headers["CONTENT-TYPE"] == "text/plain"
        exchange, _ = exchange_for(response)
        assert await exchange.read() == b"all of it"
        await exchange.close()
        response = await client.open_stream("/v1/embeddings", b"{}", {}, loop.time() + 5)
        exchange, _ = exchange_for(response)
        received = b""
        async for piece in exchange.chunks():
            received += piece
            await asyncio.sleep(0.001)  # a slow reader
        await exchange.close()
        assert received == large
    finally:
        await close(client)


async def test_a_header_with_a_line_break_is_refused_before_sending(server: Server) -> None:
    server.routes["/v1/completions"] = json_answer(b"{}")
    streams = WireStreams(0.5)
    try:
        with pytest.raises(httpx.LocalProtocolError):
            await streams.send(
                f"http://127.0.0.1:{server.port}/v1/completions", b"{}", {"X": "a\r\nB: c"}
            )
    finally:
        await streams.aclose()
    assert server.seen == []
