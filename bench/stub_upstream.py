"""A fast OpenAI-compatible stub upstream that also speaks enough of the neuron contract.

cortex can route to it as to a neuron (GET /discovery, /health, /models report one model, ready
and idle; POST /tokenize counts 8 tokens), and any OpenAI client can call it directly (GET
/v1/models, POST /v1/chat/completions, /v1/completions, /v1/embeddings). It does no work: a
non-streaming answer is a fixed small completion (or embedding) with usage; a stream is
`--chunks` content chunks, the first at once and each next one `--chunk-delay-ms` after the
previous (scheduled on absolute times, so the delays do not drift), then a finish chunk, a usage
chunk when `stream_options.include_usage` is set, and `data: [DONE]`. With `--token` every route
answers 401 unless the request carries `Authorization: Bearer <token>`, as a neuron with an
`[auth] token` will. The gateway's own tests use it as a fast fake neuron.

It is a raw asyncio protocol on uvloop with httptools' parser (both come with Sanic), HTTP/1.1
keep-alive, one process, so that it adds as little as possible to the latency it serves as a
baseline for (see bench/gateway_overhead.py).

    python bench/stub_upstream.py --port 18001 --model stub [--chunks 20] [--chunk-delay-ms 5] \
        [--token SECRET]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httptools
import uvloop

STARTED = time.time()
COMPLETION_TEXT = "Hello from the stub."
_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    404: b"Not Found",
    405: b"Method Not Allowed",
}


class Stub:
    """What the stub answers; everything that does not change per request is encoded once."""

    def __init__(
        self,
        model: str,
        chunks: int,
        chunk_delay_s: float,
        token: str | None = None,
        extra_residents: tuple[str, ...] = (),
    ) -> None:
        self.model = model
        self.chunks = chunks
        self.chunk_delay_s = chunk_delay_s
        self.authorization = f"Bearer {token}".encode() if token else None
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
        self.text_completion = _dumps(
            {
                "id": "cmpl-stub",
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [
                    {"index": 0, "text": COMPLETION_TEXT, "finish_reason": "stop", "logprobs": None}
                ],
                "usage": {"prompt_tokens": 8, "completion_tokens": 5, "total_tokens": 13},
            }
        )
        self.embedding = _dumps(
            {
                "object": "list",
                "model": model,
                "data": [{"object": "embedding", "index": 0, "embedding": [0.0, 0.5, 1.0]}],
                "usage": {"prompt_tokens": 8, "total_tokens": 8},
            }
        )
        self.tokenized = _dumps({"model": model, "count": 8})
        usage = {"prompt_tokens": 8, "completion_tokens": chunks, "total_tokens": 8 + chunks}
        self.streams = {
            b"/v1/chat/completions": _stream_events(
                {
                    "id": "chatcmpl-stub",
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                },
                lambda i: {
                    "delta": {"role": "assistant", "content": "t0"}
                    if i == 0
                    else {"content": f" t{i}"}
                },
                {"delta": {}},
                chunks,
                usage,
            ),
            b"/v1/completions": _stream_events(
                {
                    "id": "cmpl-stub",
                    "object": "text_completion",
                    "created": created,
                    "model": model,
                },
                lambda i: {"text": f" t{i}", "logprobs": None},
                {"text": "", "logprobs": None},
                chunks,
                usage,
            ),
        }
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
                    "id": resident,
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
                for resident in (model, *extra_residents)
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


@dataclass(frozen=True)
class StreamEvents:
    """One route's SSE stream, encoded once: first chunk, the rest, the tail pieces."""

    first: bytes
    content: list[bytes]
    finish: bytes
    usage: bytes
    done: bytes = b"data: [DONE]\n\n"


def _stream_events(
    base: dict[str, Any],
    part: Callable[[int], dict[str, Any]],
    finish: dict[str, Any],
    chunks: int,
    usage: dict[str, int],
) -> StreamEvents:
    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return b"data: " + _dumps({**base, "choices": choices, **extra}) + b"\n\n"

    content = [event([{"index": 0, **part(i), "finish_reason": None}]) for i in range(chunks)]
    return StreamEvents(
        first=content[0],
        content=content[1:],
        finish=event([{"index": 0, **finish, "finish_reason": "stop"}]),
        usage=event([], usage=usage),
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


# POST routes answered with a fixed body: path → the Stub attribute holding it.
_ANSWERS = {
    b"/v1/chat/completions": "completion",
    b"/v1/completions": "text_completion",
    b"/v1/embeddings": "embedding",
    b"/tokenize": "tokenized",
}
_UNAUTHORIZED = _dumps(
    {"error": {"message": "a bearer token is required", "type": "authentication_error"}}
)


class StubProtocol(asyncio.Protocol):
    def __init__(self, stub: Stub) -> None:
        self.stub = stub
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []
        self.authorization = b""
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
        self.authorization = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"authorization":
            self.authorization = value

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        request = (
            self.parser.get_method(),
            self.url.split(b"?", 1)[0],
            b"".join(self.body),
            self.parser.should_keep_alive(),
            self.authorization,
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
    def _handle(
        self, method: bytes, path: bytes, body: bytes, keep_alive: bool, authorization: bytes
    ) -> None:
        stub = self.stub
        if stub.authorization is not None and authorization != stub.authorization:
            self._send(401, b"application/json", _UNAUTHORIZED, keep_alive)
            return
        if method == b"POST" and path in _ANSWERS:
            try:
                request = json.loads(body)
            except ValueError:
                request = None
            if not isinstance(request, dict):
                self._send(400, b"application/json", b'{"error":"bad json"}', keep_alive)
                return
            if request.get("stream") is True and path in stub.streams:
                options = request.get("stream_options") or {}
                usage = isinstance(options, dict) and options.get("include_usage") is True
                self.stream_task = asyncio.get_running_loop().create_task(
                    self._stream(stub.streams[path], usage, keep_alive)
                )
                return
            self._send(200, b"application/json", getattr(stub, _ANSWERS[path]), keep_alive)
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

    async def _stream(self, events: StreamEvents, usage: bool, keep_alive: bool) -> None:
        stub = self.stub
        loop = asyncio.get_running_loop()
        transport = self.transport
        if transport is None:
            return
        head = _head(200, b"text/event-stream", None, keep_alive)
        transport.write(head + _chunk(events.first))
        start = loop.time()
        for i, data in enumerate(events.content, start=1):
            await asyncio.sleep(max(0.0, start + i * stub.chunk_delay_s - loop.time()))
            if self.transport is None:
                return
            transport.write(_chunk(data))
        tail = events.finish + (events.usage if usage else b"") + events.done
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
    parser.add_argument("--token", help="require Authorization: Bearer TOKEN on every route")
    parser.add_argument(
        "--extra-resident",
        action="append",
        default=[],
        type=json.loads,
        metavar="JSON_STRING",
        help="also list this id in /models (a JSON string literal, e.g. '\"odd\\ud800\"')",
    )
    args = parser.parse_args(argv)
    stub = Stub(
        args.model,
        max(1, args.chunks),
        args.chunk_delay_ms / 1000,
        args.token,
        tuple(args.extra_resident),
    )
    uvloop.run(serve(args.host, args.port, stub))


if __name__ == "__main__":
    main()
