"""The gateway's one SSE encoder and its one stream relay, for every dialect.

OpenAI streams are `data:` lines ending with `data: [DONE]`; Anthropic and Responses streams are
named events (``event: <type>`` / ``data: <json>``). A comment line (`: keep-alive`) is valid SSE
that every client ignores: it keeps connections and client timeouts alive while nothing else
can be sent.

`relay` serves every streaming request, in each dialect (OpenAI, Anthropic, Responses): the
neuron's stream is read line by line, each `data:` chunk is parsed once, and a `Framer` turns
it into that dialect's bytes; the relay does the I/O. Rules:
* A framer that `opens_at_once` (Anthropic, Responses) gets `200 text/event-stream` and its
  opening events sent at once, before the neuron answers — during a cold load, while the
  request queues on the neuron and while it reads the prompt. One that does not (OpenAI) is
  opened by the first keep-alive, one interval after the request, so that an error the neuron
  answers at once (429 when its queue is full, 400) stays an HTTP status that clients can act
  on. Either way the framer's keep-alive goes every `interval` seconds until the first chunk.
  Callers raise errors that are known beforehand (bad body, unknown model) first, so those
  stay HTTP errors.
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
from sanic.response import HTTPResponse

from cortex.control.dispatcher import Dispatcher
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
    """One dialect's view of one stream; every method returns the bytes to send (possibly
    none). `start` comes first and once, when the response opens (see `opens_at_once`); after
    `finish` or `fail` nothing is sent. `feed` gets each chunk parsed and as the neuron wrote it
    (`raw`, the JSON text of its `data:` line), for a dialect that passes it on unchanged."""

    opens_at_once: bool

    def start(self) -> bytes: ...

    def keepalive(self) -> bytes: ...

    def feed(self, chunk: dict[str, Any], raw: str) -> bytes: ...

    def finish(self) -> bytes: ...

    def fail(self, exc: CortexError) -> bytes: ...


async def with_keepalives(
    work: Awaitable[T], beat: Callable[[], Awaitable[None]], interval: float
) -> T:
    """The result of `work`, calling `beat()` every `interval` seconds until it is there.

    `work` runs in the caller's own task, so the usual request, answered within the first
    interval, costs no task and no extra turn of the event loop; the beats run in a task
    started after one interval. If the caller is cancelled (the client went away) or `beat` fails
    (its connection broke: that error is raised), `work` is cancelled where it waits and cleans up
    itself. A beat under way when `work` ends is let finish, never cut off mid-write; no beat
    starts after it."""
    loop = asyncio.get_running_loop()
    caller = asyncio.current_task()
    assert caller is not None
    beats: asyncio.Task[None] | None = None
    failure: BaseException | None = None
    done = in_beat = False

    async def keep_beating() -> None:
        nonlocal failure, in_beat
        while not done:
            in_beat = True
            try:
                await beat()
            except BaseException as exc:
                this = asyncio.current_task()
                if isinstance(exc, asyncio.CancelledError) and this and this.cancelling():
                    raise  # this task itself is being cancelled (the loop is shutting down)
                # Sanic's RequestCancelled (the client is gone) is a CancelledError too: it is
                # the beat's failure like any other.
                if not done:
                    failure = exc
                    caller.cancel()
                return
            finally:
                in_beat = False
            await asyncio.sleep(interval)

    def start() -> None:
        nonlocal beats
        beats = loop.create_task(keep_beating())

    timer = loop.call_later(interval, start)
    try:
        return await work
    except asyncio.CancelledError:
        if failure is not None:
            caller.uncancel()
            raise failure from None
        raise
    finally:
        done = True
        timer.cancel()
        if beats is not None and not in_beat:
            beats.cancel()


async def relay(
    request: Request,
    dispatcher: Dispatcher,
    observer: RequestObserver,
    model: str,
    body: dict[str, Any],
    framer: Framer,
    *,
    path: str = CHAT_PATH,
    raw_body: bytes | None = None,
    conversation: str | None = None,
) -> tuple[int, str | None]:
    """Serve one stream of `body` to the neuron's `path` (see the module docstring); returns
    the status and error code to record for it. `raw_body` is `body` as the client sent it,
    when it goes on unchanged; `conversation` is the request's affinity key."""
    response: HTTPResponse | None = None

    async def send(payload: bytes) -> None:
        if payload:  # an empty write would end a chunked body
            assert response is not None
            await response.send(payload)

    async def open_response() -> None:
        nonlocal response
        if response is None:
            response = await request.respond(content_type="text/event-stream", headers=SSE_HEADERS)
            await send(framer.start())

    async def beat() -> None:
        await open_response()
        await send(framer.keepalive())

    if framer.opens_at_once:
        await open_response()
    raw = raw_body if raw_body is not None else json.dumps(body).encode()
    opening = dispatcher.open(model, path, body, raw, conversation)
    try:
        exchange = await with_keepalives(opening, beat, dispatcher.config.keepalive_interval_s)
    except CortexError as exc:
        if response is None:
            raise  # nothing sent yet: the client gets the HTTP status
        await send(framer.fail(exc))
        await response.eof()
        return exc.status, exc.code
    target = exchange.target
    observer.placed(target.node, target.model_id, exchange.cold_load_s, target.by)
    outcome: tuple[int, str | None] = (200, None)
    try:
        await open_response()
        async for line in exchange.lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            observer.chunk()
            text = line[6:]
            try:
                chunk = json.loads(text)
            except ValueError:
                continue  # not a chunk: nothing a client could use
            if not isinstance(chunk, dict):
                continue
            if chunk.get("usage"):
                observer.usage(chunk["usage"])
            await send(framer.feed(chunk, text))
        await send(framer.finish())
    except CortexError as exc:  # the neuron broke off or went silent: end the stream cleanly
        await send(framer.fail(exc))
        outcome = (exc.status, exc.code)
    finally:
        await exchange.close()
    assert response is not None
    await response.eof()
    return outcome
