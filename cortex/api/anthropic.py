"""Anthropic Messages routes: /v1/messages and /v1/messages/count_tokens.

Thin: the translation is `cortex.dialects.anthropic` (pure); routing, cold loads and retries
are the dispatcher's, exactly as for OpenAI requests. A streaming client gets `message_start`
and `ping`s as soon as a cold load begins, so short client timeouts keep waiting; upstream
failures after that become an `error` event and a clean end. `anthropic-version` and
`anthropic-beta` headers are accepted; auth (`x-api-key` or bearer) is the app's.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from sanic import Blueprint, Request
from sanic.response import HTTPResponse
from sanic.response import json as json_response

from cortex.api import sse, validation
from cortex.api.openai import observe
from cortex.api.proxy import Dispatcher, Exchange
from cortex.dialects.anthropic import (
    StreamTranslator,
    error_type_from_openai,
    ping,
    to_anthropic_response,
)
from cortex.errors import CortexError
from cortex.metrics import RequestObserver

bp = Blueprint("anthropic", url_prefix="/v1")
_CHAT = "/v1/chat/completions"


def _tool_id() -> str:
    return secrets.token_hex(12)


def _message_id() -> str:
    return "msg_" + secrets.token_hex(12)


@bp.post("/messages/count_tokens")
async def count_tokens(request: Request) -> HTTPResponse:
    model, counted = validation.anthropic_count_request(request)
    dispatcher: Dispatcher = request.app.ctx.dispatcher
    return json_response({"input_tokens": await dispatcher.tokenize(model, counted)})


@bp.post("/messages")
async def messages(request: Request) -> HTTPResponse | None:
    observer = observe(request, "anthropic", "messages")
    status, code = 200, None
    try:
        model, openai_body = validation.anthropic_request(request)
        observer.requested(model)
        dispatcher: Dispatcher = request.app.ctx.dispatcher
        if not openai_body.get("stream"):
            return await _whole(dispatcher, observer, model, openai_body)
        status, code = await _stream(request, dispatcher, observer, model, openai_body)
        return None
    except CortexError as exc:
        status, code = exc.status, exc.code
        raise
    finally:
        observer.finish(status, code)


async def _whole(
    dispatcher: Dispatcher, observer: RequestObserver, model: str, openai_body: dict[str, Any]
) -> HTTPResponse:
    raw = json.dumps(openai_body).encode()
    exchange, content = await dispatcher.fetch(model, _CHAT, openai_body, raw)
    observer.placed(exchange.target.node, exchange.target.model_id, exchange.cold_load_s)
    observer.chunk()
    upstream = json.loads(content)
    observer.usage(upstream.get("usage"))
    message = to_anthropic_response(
        upstream,
        model=model,
        message_id=_message_id(),
        tool_id=_tool_id,
        stop_sequences=openai_body.get("stop") or (),
    )
    return json_response(message)


async def _stream(
    request: Request,
    dispatcher: Dispatcher,
    observer: RequestObserver,
    model: str,
    openai_body: dict[str, Any],
) -> tuple[int, str | None]:
    """Relay as Anthropic events; returns the status and error code to record."""
    response = None
    translator: StreamTranslator | None = None
    raw = json.dumps(openai_body).encode()

    async def send(events: list[tuple[str, dict[str, Any]]]) -> None:
        if events:
            await response.send(b"".join(sse.event(name, data) for name, data in events))

    async def begin(input_tokens: int | None) -> None:
        nonlocal response, translator
        response = await request.respond(content_type="text/event-stream", headers=sse.SSE_HEADERS)
        translator = StreamTranslator(
            model=model,
            message_id=_message_id(),
            tool_id=_tool_id,
            input_tokens=input_tokens,
            stop_sequences=openai_body.get("stop") or (),
        )
        await send([*translator.start(), ping()])

    async def keep_waiting() -> None:
        if response is None:
            await begin(None)  # cold load: message_start now, real input_tokens at the end
        else:
            await send([ping()])

    try:
        exchange: Exchange = await dispatcher.open(
            model, _CHAT, openai_body, raw, waiting=keep_waiting
        )
    except CortexError as exc:
        if response is None:
            raise
        await send(translator.error(_error_type(exc), exc.message))
        await response.eof()
        return exc.status, exc.code
    observer.placed(exchange.target.node, exchange.target.model_id, exchange.cold_load_s)
    outcome: tuple[int, str | None] = (200, None)
    try:
        if response is None:
            await begin(await _input_tokens(dispatcher, exchange, openai_body))
        async for line in exchange.lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            observer.chunk()
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                observer.usage(chunk["usage"])
            await send(translator.feed(chunk))
        await send(translator.finish())
    except CortexError as exc:  # the neuron broke off or went silent: end the stream cleanly
        await send(translator.error("api_error", exc.message))
        outcome = (exc.status, exc.code)
    finally:
        await exchange.close()
    await response.eof()
    return outcome


async def _input_tokens(
    dispatcher: Dispatcher, exchange: Exchange, openai_body: dict[str, Any]
) -> int | None:
    """The prompt's real token count for `message_start`, from the serving neuron."""
    counted = {"model": exchange.target.model_id, "messages": openai_body["messages"]}
    if openai_body.get("tools"):
        counted["tools"] = openai_body["tools"]
    try:
        return await dispatcher.clients[exchange.target.node].tokenize(counted)
    except CortexError:
        return None  # message_delta carries the count at the end anyway


def _error_type(exc: CortexError) -> str:
    return error_type_from_openai(exc.type, exc.code)
