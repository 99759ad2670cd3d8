"""A fast OpenAI-compatible stub upstream that also speaks enough of the neuron contract.

cortex can route to it as to a neuron (GET /discovery, /health, /models report one model, ready
and idle), and any OpenAI client can call it directly (GET /v1/models, POST
/v1/chat/completions). It does no work: a non-streaming chat answer is a fixed small completion
with usage; a stream is `--chunks` content chunks, the first at once and each next one
`--chunk-delay-ms` after the previous (scheduled on absolute times, so the delays do not drift),
then a finish chunk, a usage chunk when `stream_options.include_usage` is set, and `data: [DONE]`.

It is a raw asyncio protocol on uvloop with httptools' parser (both come with Sanic), HTTP/1.1
keep-alive, one process, so that it adds as little as possible to the latency it serves as a
baseline for (see bench/gateway_overhead.py).

    python bench/stub_upstream.py --port 18001 --model stub [--chunks 20] [--chunk-delay-ms 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import time
from typing import Any

import httptools
import uvloop

STARTED = time.time()
COMPLETION_TEXT = "Hello from the stub."
_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed"}


class Stub:
    """What the stub answers; everything that does not change per request is encoded once."""

    def __init__(self, model: str, chunks: int, chunk_delay_s: float) -> None:
        self.model = model
        self.chunks = chunks
        self.chunk_delay_s = chunk_delay_s
        created = int(STARTED)
        self.completion = _dumps(
            {
                "id": "chatcmpl-stub",
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": COMPLETION_TEXT},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 8, "completion_tokens": 5, "total_tokens": 13},
            }
        )
        base = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": created}
        base["model"] = model

        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            return b"data: " + _dumps({**base, "choices": choices, **extra}) + b"\n\n"

        self.first_chunk = event(
            [{"index": 0, "delta": {"role": "assistant", "content": "t0"}, "finish_reason": None}]
        )
        self.content_chunks = [
            event([{"index": 0, "delta": {"content": f" t{i}"}, "finish_reason": None}])
            for i in range(1, chunks)
        ]
        self.finish_chunk = event([{"index": 0, "delta": {}, "finish_reason": "stop"}])
        self.usage_chunk = event(
            [],
            usage={"prompt_tokens": 8, "completion_tokens": chunks, "total_tokens": 8 + chunks},
        )
        self.done = b"data: [DONE]\n\n"
        self.models_v1 = _dumps(
            {
                "object": "list",
                "data": [{"id": model, "object": "model", "created": created, "owned_by": "stub"}],
            }
        )
        self.discovery = _dumps(
            {"hostname": socket.gethostname(), "version": "stub", "devices": [], "backend": "cpu"}
        )
        self.neuron_models = _dumps(
            [
                {
                    "id": model,
                    "state": "ready",
                    "source": "stub",
                    "path": "/dev/null",
                    "n_gpu_layers": 0,
                    "n_layers": 1,
                    "n_ctx": 2048,
                    "vram_used_mb": 0,
                    "ram_used_mb": 0,
                    "loaded_at": STARTED,
                    "load_duration_s": 0,
                    "capabilities": ["chat", "completion"],
                }
            ]
        )

    def health(self) -> bytes:
        return _dumps(
            {
                "status": "ok",
                "uptime_s": time.time() - STARTED,
                "draining": False,
                "devices": [],
                "models": [
                    {
                        "id": self.model,
                        "state": "ready",
                        "in_flight": 0,
                        "queue_depth": 0,
                        "max_in_flight": 64,
                        "max_queue_depth": 64,
                        "last_used_at": None,
                        "tok_s_decode": None,
                    }
                ],
            }
        )


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _head(status: int, content_type: bytes, length: int | None, keep_alive: bool) -> bytes:
    lines = [
        b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, b"Status")),
        b"content-type: " + content_type,
        b"transfer-encoding: chunked" if length is None else b"content-length: %d" % length,
    ]
    if not keep_alive:
        lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class StubProtocol(asyncio.Protocol):
    def __init__(self, stub: Stub) -> None:
        self.stub = stub
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []
        self.stream_task: asyncio.Task[None] | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._send(400, b"application/json", b'{"error":"bad request"}', keep_alive=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.stream_task is not None:
            self.stream_task.cancel()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        request = (
            self.parser.get_method(),
            self.url.split(b"?", 1)[0],
            b"".join(self.body),
            self.parser.should_keep_alive(),
        )
        previous = self.stream_task
        if previous is not None and not previous.done():
            # pipelined behind a stream (no benchmark client does this): answer in order
            self.stream_task = asyncio.get_running_loop().create_task(
                self._after(previous, request)
            )
        else:
            self._handle(*request)

    async def _after(self, previous: asyncio.Task[None], request: tuple) -> None:
        await asyncio.wait([previous])
        if self.transport is not None:
            self._handle(*request)
            if self.stream_task is not None and self.stream_task is not asyncio.current_task():
                await self.stream_task

    # answering
    def _handle(self, method: bytes, path: bytes, body: bytes, keep_alive: bool) -> None:
        stub = self.stub
        if method == b"POST" and path == b"/v1/chat/completions":
            try:
                request = json.loads(body)
            except ValueError:
                request = None
            if not isinstance(request, dict):
                self._send(400, b"application/json", b'{"error":"bad json"}', keep_alive)
                return
            if request.get("stream") is True:
                options = request.get("stream_options") or {}
                usage = isinstance(options, dict) and options.get("include_usage") is True
                self.stream_task = asyncio.get_running_loop().create_task(
                    self._stream(usage, keep_alive)
                )
                return
            self._send(200, b"application/json", stub.completion, keep_alive)
        elif method == b"GET" and path == b"/health":
            self._send(200, b"application/json", stub.health(), keep_alive)
        elif method == b"GET" and path == b"/discovery":
            self._send(200, b"application/json", stub.discovery, keep_alive)
        elif method == b"GET" and path == b"/models":
            self._send(200, b"application/json", stub.neuron_models, keep_alive)
        elif method == b"GET" and path == b"/v1/models":
            self._send(200, b"application/json", stub.models_v1, keep_alive)
        else:
            self._send(404, b"application/json", b'{"error":"not found"}', keep_alive)

    def _send(self, status: int, content_type: bytes, body: bytes, keep_alive: bool) -> None:
        if self.transport is None:
            return
        self.transport.write(_head(status, content_type, len(body), keep_alive) + body)
        if not keep_alive:
            self.transport.close()

    async def _stream(self, usage: bool, keep_alive: bool) -> None:
        stub = self.stub
        loop = asyncio.get_running_loop()
        transport = self.transport
        if transport is None:
            return
        head = _head(200, b"text/event-stream", None, keep_alive)
        transport.write(head + _chunk(stub.first_chunk))
        start = loop.time()
        for i, data in enumerate(stub.content_chunks, start=1):
            await asyncio.sleep(max(0.0, start + i * stub.chunk_delay_s - loop.time()))
            if self.transport is None:
                return
            transport.write(_chunk(data))
        tail = stub.finish_chunk + (stub.usage_chunk if usage else b"") + stub.done
        transport.write(_chunk(tail) + b"0\r\n\r\n")
        if not keep_alive:
            transport.close()


async def serve(host: str, port: int, stub: Stub) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: StubProtocol(stub), host, port, reuse_address=True, backlog=1024
    )
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"stub upstream: model {stub.model!r} on http://{host}:{port}", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="stub")
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per stream")
    parser.add_argument("--chunk-delay-ms", type=float, default=5.0)
    args = parser.parse_args(argv)
    stub = Stub(args.model, max(1, args.chunks), args.chunk_delay_ms / 1000)
    uvloop.run(serve(args.host, args.port, stub))


if __name__ == "__main__":
    main()
