"""OpenAI routes of the gateway: the catalogue, and the three inference routes proxied to neurons.

Non-streaming answers are relayed as the neuron sent them. Streams are relayed chunk by chunk
as they arrive (no buffering); while a cold load runs the client gets SSE keep-alive comments.
A client that disconnects cancels this handler, which closes the upstream stream, which makes
the neuron stop generating.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, raw
from sanic.response import json as json_response

from cortex.api import sse
from cortex.api.proxy import Dispatcher, Exchange
from cortex.errors import CortexError, InvalidRequest, ModelNotFound, NodeUnavailable
from cortex.fleet.catalogue import catalogue_view, model_ids, model_view

bp = Blueprint("openai", url_prefix="/v1")


def parse_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(request.body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body


def requested_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a non-empty string", param="model")
    return model


@bp.get("/models")
async def list_models(request: Request) -> HTTPResponse:
    return json_response(catalogue_view(request.app.ctx.registry.snapshot()))


@bp.get("/models/<model_id:path>")
async def get_model(request: Request, model_id: str) -> HTTPResponse:
    snapshot = request.app.ctx.registry.snapshot()
    if model_id in snapshot.aliases:
        return json_response(model_view(snapshot, snapshot.aliases[model_id], alias_of=model_id))
    if model_id not in model_ids(snapshot):
        raise ModelNotFound(f"model {model_id!r} does not exist", param="model")
    return json_response(model_view(snapshot, model_id))


@bp.post("/chat/completions")
async def chat_completions(request: Request) -> HTTPResponse | None:
    return await relay(request, "/v1/chat/completions")


@bp.post("/completions")
async def completions(request: Request) -> HTTPResponse | None:
    return await relay(request, "/v1/completions")


@bp.post("/embeddings")
async def embeddings(request: Request) -> HTTPResponse | None:
    return await relay(request, "/v1/embeddings")


async def relay(request: Request, path: str) -> HTTPResponse | None:
    body = parse_body(request)
    model = requested_model(body)
    dispatcher: Dispatcher = request.app.ctx.dispatcher
    if body.get("stream") is not True:
        exchange = await dispatcher.open(model, path, body, request.body)
        try:
            content = await exchange.response.aread()
        except httpx.TransportError as exc:
            dispatcher.node_failed(exchange.target.node, type(exc).__name__)
            raise NodeUnavailable(f"neuron {exchange.target.node} broke off") from exc
        finally:
            await exchange.close()
        return raw(
            content,
            status=exchange.response.status_code,
            content_type=exchange.response.headers.get("content-type", "application/json"),
        )
    return await _relay_stream(request, dispatcher, model, path, body)


async def _relay_stream(
    request: Request, dispatcher: Dispatcher, model: str, path: str, body: dict[str, Any]
) -> None:
    response = None

    async def keep_alive() -> None:
        nonlocal response
        if response is None:
            response = await request.respond(
                content_type="text/event-stream", headers=sse.SSE_HEADERS
            )
        await response.send(sse.KEEPALIVE)

    try:
        exchange: Exchange = await dispatcher.open(
            model, path, body, request.body, waiting=keep_alive
        )
    except CortexError as exc:
        if response is None:
            raise
        await response.send(sse.data(exc.openai_body()) + sse.DONE)
        await response.eof()
        return None
    if response is None:
        response = await request.respond(content_type="text/event-stream", headers=sse.SSE_HEADERS)
    try:
        async for chunk in exchange.response.aiter_raw():
            await response.send(chunk)
    except httpx.TransportError as exc:
        dispatcher.node_failed(exchange.target.node, type(exc).__name__)
        error = NodeUnavailable(f"neuron {exchange.target.node} broke off mid-stream")
        await response.send(sse.data(error.openai_body()) + sse.DONE)
    finally:
        await exchange.close()
    await response.eof()
    return None
