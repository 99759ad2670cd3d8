"""Anthropic Messages routes: /v1/messages and /v1/messages/count_tokens.

Thin: the translation is `cortex.dialects.anthropic` (pure); routing, cold loads and retries
are the dispatcher's, exactly as for OpenAI requests; the stream is `sse.relay` with a framer
of this dialect. A streaming client gets `message_start` and a `ping` as soon as the request is
known to be servable, then `ping`s until the first token — during cold loads, queueing and
prompt reads alike — so client watchdogs keep waiting; upstream failures after that become an
`error` event and a clean end. `anthropic-version` and
`anthropic-beta` headers are accepted; auth (`x-api-key` or bearer) is the app's.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

from sanic import Blueprint, Request
from sanic.response import HTTPResponse
from sanic.response import json as json_response

from cortex.api import sse, validation
from cortex.api.openai import observe
from cortex.control.dispatcher import Dispatcher
from cortex.control.scheduler import Target
from cortex.dialects.anthropic import (
    StreamTranslator,
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
    with observer.observing() as outcome:
        model, openai_body, conversation = validation.anthropic_request(request)
        observer.requested(model)
        dispatcher: Dispatcher = request.app.ctx.dispatcher
        if not openai_body.get("stream"):
            return await _whole(dispatcher, observer, model, openai_body, conversation)
        outcome.status, outcome.code = await _stream(
            request, dispatcher, observer, model, openai_body, conversation
        )
        return None


async def _whole(
    dispatcher: Dispatcher,
    observer: RequestObserver,
    model: str,
    openai_body: dict[str, Any],
    conversation: str | None,
) -> HTTPResponse:
    raw = json.dumps(openai_body).encode()
    exchange, upstream = await dispatcher.fetch_json(model, _CHAT, openai_body, raw, conversation)
    target = exchange.target
    observer.placed(target.node, target.model_id, exchange.cold_load_s, target.by)
    observer.chunk()
    observer.usage(upstream.get("usage"))
    message = to_anthropic_response(
        upstream,
        model=model,
        message_id=_message_id(),
        tool_id=_tool_id,
        stop_sequences=openai_body.get("stop") or (),
    )
    return json_response(message)


class _Framer:
    """`sse.Framer` for the Anthropic dialect: `message_start` and a `ping` at once, `ping`s
    while waiting, then the translated events."""

    opens_at_once = True  # Claude Code's first-byte watchdog needs message_start at once

    def __init__(self, translator: StreamTranslator) -> None:
        self._translator = translator

    def start(self) -> bytes:
        return sse.events([*self._translator.start(), ping()])

    def keepalive(self) -> bytes:
        return sse.events([ping()])

    def feed(self, chunk: dict[str, Any], raw: str) -> bytes:
        return sse.events(self._translator.feed(chunk))

    def finish(self) -> bytes:
        return sse.events(self._translator.finish())

    def fail(self, exc: CortexError) -> bytes:
        return sse.events(self._translator.error(exc.anthropic_type, exc.message))


async def _stream(
    request: Request,
    dispatcher: Dispatcher,
    observer: RequestObserver,
    model: str,
    openai_body: dict[str, Any],
    conversation: str | None,
) -> tuple[int, str | None]:
    """Relay as Anthropic events; returns the status and error code to record."""
    # An unknown model or no capacity is an HTTP error, not a stream.
    target = dispatcher.ready(model, conversation)
    # On a ready replica the prompt is counted first (quick), so message_start carries it;
    # during a cold load (or when counting takes longer than a keep-alive interval)
    # message_start goes out at once and message_delta carries the count.
    input_tokens = None if target is None else await _input_tokens(dispatcher, target, openai_body)
    translator = StreamTranslator(
        model=model,
        message_id=_message_id(),
        tool_id=_tool_id,
        input_tokens=input_tokens,
        stop_sequences=openai_body.get("stop") or (),
    )
    return await sse.relay(
        request,
        dispatcher,
        observer,
        model,
        openai_body,
        _Framer(translator),
        conversation=conversation,
    )


async def _input_tokens(
    dispatcher: Dispatcher, target: Target, openai_body: dict[str, Any]
) -> int | None:
    """The prompt's real token count for `message_start`, from the serving neuron."""
    counted = {"model": target.model_id, "messages": openai_body["messages"]}
    if openai_body.get("tools"):
        counted["tools"] = openai_body["tools"]
    # Bounded by one keep-alive interval: a neuron too busy to count at once must not hold
    # back message_start, which is what keeps the client's watchdog waiting.
    try:
        return await asyncio.wait_for(
            dispatcher.clients[target.node].tokenize(counted),
            dispatcher.config.keepalive_interval_s,
        )
    except (CortexError, TimeoutError):
        return None  # message_delta carries the count at the end anyway
