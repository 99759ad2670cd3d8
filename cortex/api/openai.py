"""OpenAI routes of the gateway: the catalogue, and the three inference routes proxied to neurons.

Non-streaming answers are relayed as the neuron sent them. Streams are relayed chunk by chunk
as they arrive (no buffering); when the neuron has not answered within one keep-alive interval
(a cold load, its queue, a long prompt read) the client gets headers and SSE keep-alive
comments until it does.
A client that disconnects cancels this handler, which closes the upstream stream, which makes
the neuron stop generating.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any
from urllib.parse import unquote

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, raw
from sanic.response import json as json_response

from cortex.api import sse, validation
from cortex.api.proxy import Dispatcher, Exchange
from cortex.errors import CortexError, ModelNotFound
from cortex.fleet.catalogue import catalogue_view, model_ids, model_view
from cortex.metrics import RequestObserver

bp = Blueprint("openai", url_prefix="/v1")


@bp.get("/models")
async def list_models(request: Request) -> HTTPResponse:
    return json_response(catalogue_view(request.app.ctx.registry.snapshot()))


@bp.get("/models/<model_id:path>")
async def get_model(request: Request, model_id: str) -> HTTPResponse:
    model_id = unquote(model_id)  # ids may contain "/": clients send them URL-encoded
    snapshot = request.app.ctx.registry.snapshot()
    target = snapshot.resolve(model_id)
    if target != model_id:  # an alias, or a name an alias pattern matches
        return json_response(model_view(snapshot, target, alias_of=model_id))
    if model_id not in model_ids(snapshot):
        raise ModelNotFound(f"model {model_id!r} does not exist", param="model")
    return json_response(model_view(snapshot, model_id))


@bp.post("/chat/completions")
async def chat_completions(request: Request) -> HTTPResponse | None:
    return await relay(request, "/v1/chat/completions", "chat")


@bp.post("/completions")
async def completions(request: Request) -> HTTPResponse | None:
    return await relay(request, "/v1/completions", "completions")


@bp.post("/embeddings")
async def embeddings(request: Request) -> HTTPResponse | None:
    return await relay(request, "/v1/embeddings", "embeddings")


def observe(request: Request, dialect: str, endpoint: str) -> RequestObserver:
    snapshot = request.app.ctx.registry.snapshot()

    def known(name: str) -> str:
        model_id = snapshot.resolve(name)
        return model_id if model_id in snapshot.catalogue or snapshot.slots(model_id) else "unknown"

    observer = RequestObserver(
        request.app.ctx.metrics,
        dialect=dialect,
        endpoint=endpoint,
        known_model=known,
        method=request.method,
        route=request.path,  # these routes have fixed paths: no client text in them
    )
    request.ctx.observer = observer  # the app's own access-log hook then stays silent
    return observer


async def relay(request: Request, path: str, endpoint: str) -> HTTPResponse | None:
    observer = observe(request, "openai", endpoint)
    with observer.observing() as outcome:
        body = validation.openai_request(request, endpoint)
        model = body["model"]
        observer.requested(model)
        dispatcher: Dispatcher = request.app.ctx.dispatcher
        if body.get("stream") is not True:
            response = await _relay_whole(dispatcher, observer, model, path, body, request.body)
            outcome.status = response.status
            return response
        outcome.status, outcome.code = await _relay_stream(
            request, dispatcher, observer, model, path, body
        )
        return None


async def _relay_whole(
    dispatcher: Dispatcher,
    observer: RequestObserver,
    model: str,
    path: str,
    body: dict[str, Any],
    raw_body: bytes,
) -> HTTPResponse:
    exchange, content = await dispatcher.fetch(model, path, body, raw_body)
    observer.placed(exchange.target.node, exchange.target.model_id, exchange.cold_load_s)
    observer.chunk()
    with contextlib.suppress(ValueError, AttributeError):
        observer.usage(json.loads(content).get("usage"))
    return raw(
        content,
        status=exchange.response.status_code,
        content_type=exchange.response.headers.get("content-type", "application/json"),
    )


async def _relay_stream(
    request: Request,
    dispatcher: Dispatcher,
    observer: RequestObserver,
    model: str,
    path: str,
    body: dict[str, Any],
) -> tuple[int, str | None]:
    """Relay an SSE stream; returns the status and error code to record for it."""
    response = None
    options = body.get("stream_options")
    client_wants_usage = isinstance(options, dict) and options.get("include_usage") is True
    raw_body = request.body
    if not client_wants_usage:
        # Ask the neuron for usage anyway (metrics count tokens); the client doesn't see it.
        body = {**body, "stream_options": {**(options or {}), "include_usage": True}}
        raw_body = json.dumps(body).encode()

    async def keep_alive() -> None:
        nonlocal response
        if response is None:
            response = await request.respond(
                content_type="text/event-stream", headers=sse.SSE_HEADERS
            )
        await response.send(sse.KEEPALIVE)

    # Headers and keep-alives start after one keep-alive interval without an answer (a cold
    # load, a queue, a long prompt read): an error the neuron answers at once (429 when its
    # queue is full, 400) stays an HTTP status that clients can act on and retry.
    opening = dispatcher.open(model, path, body, raw_body)
    try:
        exchange: Exchange = await sse.with_keepalives(
            opening, keep_alive, dispatcher.config.keepalive_interval_s
        )
    except CortexError as exc:
        if response is None:
            raise
        await response.send(sse.data(exc.openai_body()) + sse.DONE)
        await response.eof()
        return exc.status, exc.code
    observer.placed(exchange.target.node, exchange.target.model_id, exchange.cold_load_s)
    if response is None:
        response = await request.respond(content_type="text/event-stream", headers=sse.SSE_HEADERS)
    outcome: tuple[int, str | None] = (200, None)
    try:
        async for chunk in exchange.chunks():
            observer.chunk()
            if b'"usage":{' in chunk:
                chunk = _take_usage(chunk, observer, keep=client_wants_usage)
            if chunk:
                await response.send(chunk)
    except CortexError as exc:  # the neuron broke off or went silent: end the stream cleanly
        await response.send(sse.data(exc.openai_body()) + sse.DONE)
        outcome = (exc.status, exc.code)
    finally:
        await exchange.close()
    await response.eof()
    return outcome


def _take_usage(chunk: bytes, observer: RequestObserver, *, keep: bool) -> bytes:
    """Record the usage event in `chunk`; drop it when the client did not ask for usage."""
    kept = []
    for event in chunk.split(b"\n\n"):
        if event.startswith(b"data: {") and b'"usage":{' in event:
            try:
                payload = json.loads(event[6:])
            except ValueError:
                kept.append(event)
                continue
            observer.usage(payload.get("usage"))
            if not keep and payload.get("choices") == []:
                continue
        kept.append(event)
    return b"\n\n".join(kept)
