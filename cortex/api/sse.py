"""The gateway's one SSE encoder and its one relay of translated streams.

OpenAI streams are `data:` lines ending with `data: [DONE]`; Anthropic and Responses streams are
named events (``event: <type>`` / ``data: <json>``). A comment line (`: keep-alive`) is valid SSE
that every client ignores: it keeps connections and client timeouts alive while nothing else
can be sent.

`relay` serves a streaming request of a translated dialect (Anthropic, Responses): a `Framer`
turns chat chunks into that dialect's bytes, the relay does the I/O. Rules:
* The client gets `200 text/event-stream` and the framer's opening events at once, before the
  neuron answers — during a cold load, while the request queues on the neuron and while it
  reads the prompt — and the framer's keep-alive every `interval` seconds until the first
  chunk. Callers raise errors that are known beforehand (bad body, unknown model) first, so
  those stay HTTP errors.
* A failure after that (no capacity, load timeout, a neuron error status, a neuron breaking off
  or going silent) becomes the framer's failure events and a clean end of the stream.
* A client that goes away cancels the handler; the pending upstream request is then cancelled
  or closed, which makes the neuron stop generating.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from sanic import Request

from cortex.api.proxy import Dispatcher, Exchange
from cortex.errors import CortexError
from cortex.metrics import RequestObserver

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"
CHAT_PATH = "/v1/chat/completions"
T = TypeVar("T")


def data(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def event(name: str, payload: dict[str, Any]) -> bytes:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return b"event: " + name.encode() + b"\ndata: " + body + b"\n\n"


def events(pairs: list[tuple[str, dict[str, Any]]]) -> bytes:
    return b"".join(event(name, payload) for name, payload in pairs)


class Framer(Protocol):
    """One dialect's view of one translated stream; every method returns the bytes to send
    (possibly none). `start` comes first and once; after `finish` or `fail` nothing is sent."""

    def start(self) -> bytes: ...

    def keepalive(self) -> bytes: ...

    def feed(self, chunk: dict[str, Any]) -> bytes: ...

    def finish(self) -> bytes: ...

    def fail(self, exc: CortexError) -> bytes: ...


async def with_keepalives(
    work: Awaitable[T], beat: Callable[[], Awaitable[None]], interval: float
) -> T:
    """The result of `work`, calling `beat()` every `interval` seconds until it is there.

    If the caller is cancelled (the client went away) or `beat` fails (its connection broke),
    `work` is cancelled too; an `Exchange` it already opened is closed, so the neuron stops."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=interval)
            if done:
                return task.result()
            await beat()
    except BaseException:
        if not task.done():
            task.cancel()
        elif not task.cancelled() and task.exception() is None:
            opened = task.result()
            if isinstance(opened, Exchange):
                await opened.close()
        raise


async def relay(
    request: Request,
    dispatcher: Dispatcher,
    observer: RequestObserver,
    model: str,
    chat_body: dict[str, Any],
    framer: Framer,
) -> tuple[int, str | None]:
    """Serve one translated stream (see the module docstring); returns the status and error
    code to record for it."""
    response = await request.respond(content_type="text/event-stream", headers=SSE_HEADERS)
    await response.send(framer.start())
    raw = json.dumps(chat_body).encode()

    async def beat() -> None:
        await response.send(framer.keepalive())

    opening = dispatcher.open(model, CHAT_PATH, chat_body, raw)
    try:
        exchange = await with_keepalives(opening, beat, dispatcher.config.keepalive_interval_s)
    except CortexError as exc:
        await response.send(framer.fail(exc))
        await response.eof()
        return exc.status, exc.code
    observer.placed(exchange.target.node, exchange.target.model_id, exchange.cold_load_s)
    outcome: tuple[int, str | None] = (200, None)
    try:
        async for line in exchange.lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            observer.chunk()
            try:
                chunk = json.loads(line[6:])
            except ValueError:
                continue  # not a chunk: nothing a client could use
            if isinstance(chunk, dict) and chunk.get("usage"):
                observer.usage(chunk["usage"])
            if sent := framer.feed(chunk):
                await response.send(sent)
        await response.send(framer.finish())
    except CortexError as exc:  # the neuron broke off or went silent: end the stream cleanly
        await response.send(framer.fail(exc))
        outcome = (exc.status, exc.code)
    finally:
        await exchange.close()
    await response.eof()
    return outcome
