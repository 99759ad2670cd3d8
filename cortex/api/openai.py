"""OpenAI routes of the gateway: the catalogue, and the three inference routes proxied to neurons.

Non-streaming answers are relayed as the neuron sent them. Streams go through `sse.relay`
event by event as they arrive (no buffering); when the neuron has not answered within one
keep-alive interval (a cold load, its queue, a long prompt read) the client gets headers and
SSE keep-alive comments until it does.
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
from cortex.control.dispatcher import Dispatcher
from cortex.errors import CortexError, ModelNotFound
from cortex.fleet.affinity import affinity_key, explicit_key
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
        # Embeddings keep no prompt cache: only generation has a replica worth returning to.
        conversation = None if endpoint == "embeddings" else affinity_key(explicit_key(body), body)
        if body.get("stream") is not True:
            response = await _relay_whole(
                dispatcher, observer, model, path, body, request.body, conversation
            )
            outcome.status = response.status
            return response
        outcome.status, outcome.code = await _relay_stream(
            request, dispatcher, observer, model, path, body, conversation
        )
        return None


async def _relay_whole(
    dispatcher: Dispatcher,
    observer: RequestObserver,
    model: str,
    path: str,
    body: dict[str, Any],
    raw_body: bytes,
    conversation: str | None,
) -> HTTPResponse:
    exchange, content = await dispatcher.fetch(model, path, body, raw_body, conversation)
    target = exchange.target
    observer.placed(target.node, target.model_id, exchange.cold_load_s, target.by)
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
    conversation: str | None,
) -> tuple[int, str | None]:
    """Relay an SSE stream; returns the status and error code to record for it."""
    options = body.get("stream_options")
    client_wants_usage = isinstance(options, dict) and options.get("include_usage") is True
    raw_body: bytes | None = request.body
    if not client_wants_usage:
        # Ask the neuron for usage anyway (metrics count tokens); the client doesn't see it.
        body = {**body, "stream_options": {**(options or {}), "include_usage": True}}
        raw_body = None
    framer = _Framer(keep_usage=client_wants_usage)
    return await sse.relay(
        request,
        dispatcher,
        observer,
        model,
        body,
        framer,
        path=path,
        raw_body=raw_body,
        conversation=conversation,
    )


class _Framer:
    """`sse.Framer` for OpenAI streams: the neuron's chunks as it wrote them, `data: [DONE]` last.

    Headers wait for the first keep-alive interval (see `sse`). The usage-only chunk the
    gateway asked for on its own behalf is dropped unless the client asked for usage too."""

    opens_at_once = False

    def __init__(self, *, keep_usage: bool) -> None:
        self._keep_usage = keep_usage

    def start(self) -> bytes:
        return b""

    def keepalive(self) -> bytes:
        return sse.KEEPALIVE

    def feed(self, chunk: dict[str, Any], raw: str) -> bytes:
        if not self._keep_usage and chunk.get("usage") and chunk.get("choices") == []:
            return b""
        return b"data: " + raw.encode() + b"\n\n"  # as the neuron wrote it: no re-encoding

    def finish(self) -> bytes:
        return sse.DONE

    def fail(self, exc: CortexError) -> bytes:
        return sse.data(exc.openai_body()) + sse.DONE
