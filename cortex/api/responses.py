"""OpenAI Responses route: POST /v1/responses, answered statelessly over a neuron's chat path.

Thin: the translation is `cortex.dialects.responses` (pure); routing, cold loads and retries
are the dispatcher's; the stream is `sse.relay` with a framer of this dialect. A streaming
client gets `response.created` and `response.in_progress` as soon as the request is known to be
servable, then keep-alive comments until the neuron's first chunk — also during cold loads,
queueing and prompt reads. Errors render in OpenAI's envelope (the app's error handler); after
the stream has begun they are an `error` event and `response.failed`.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from sanic import Blueprint, Request
from sanic.response import HTTPResponse
from sanic.response import json as json_response

from cortex.api import sse, validation
from cortex.api.openai import observe
from cortex.control.dispatcher import Dispatcher
from cortex.dialects.responses import ResponsesRequest, ResponsesStream, to_response
from cortex.errors import CortexError
from cortex.fleet.affinity import affinity_key
from cortex.metrics import RequestObserver

bp = Blueprint("responses", url_prefix="/v1")


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


class _Framer:
    """`sse.Framer` for the Responses dialect: `ResponsesStream` events as named SSE events."""

    opens_at_once = True  # response.created at once, as the Responses API streams

    def __init__(self, stream: ResponsesStream) -> None:
        self._stream = stream

    def start(self) -> bytes:
        return sse.events(self._stream.start())

    def keepalive(self) -> bytes:
        return sse.KEEPALIVE

    def feed(self, chunk: dict[str, Any], raw: str) -> bytes:
        return sse.events(self._stream.feed(chunk))

    def finish(self) -> bytes:
        return sse.events(self._stream.finish())

    def fail(self, exc: CortexError) -> bytes:
        return sse.events(self._stream.fail(exc.code or exc.type, exc.message))


@bp.post("/responses")
async def responses(request: Request) -> HTTPResponse | None:
    observer = observe(request, "responses", "responses")
    with observer.observing() as outcome:
        parsed = validation.responses_request(request)
        observer.requested(parsed.model)
        dispatcher: Dispatcher = request.app.ctx.dispatcher
        dispatcher.ready(parsed.model)  # unknown model / no capacity: an HTTP error, not a stream
        created_at = int(time.time())
        if not parsed.stream:
            return await _whole(dispatcher, observer, parsed, created_at)
        stream = ResponsesStream(
            parsed.echo,
            response_id=_new_id("resp"),
            model=parsed.model,
            created_at=created_at,
            new_id=_new_id,
            namespaces=parsed.namespaces,
        )
        outcome.status, outcome.code = await sse.relay(
            request,
            dispatcher,
            observer,
            parsed.model,
            parsed.chat,
            _Framer(stream),
            conversation=_conversation(parsed),
        )
        return None


async def _whole(
    dispatcher: Dispatcher, observer: RequestObserver, parsed: ResponsesRequest, created_at: int
) -> HTTPResponse:
    raw = json.dumps(parsed.chat).encode()
    exchange, upstream = await dispatcher.fetch_json(
        parsed.model, sse.CHAT_PATH, parsed.chat, raw, _conversation(parsed)
    )
    target = exchange.target
    observer.placed(target.node, target.model_id, exchange.cold_load_s, target.by)
    observer.chunk()
    observer.usage(upstream.get("usage"))
    answer = to_response(
        upstream,
        parsed.echo,
        response_id=_new_id("resp"),
        model=parsed.model,
        created_at=created_at,
        new_id=_new_id,
        namespaces=parsed.namespaces,
    )
    return json_response(answer)


def _conversation(parsed: ResponsesRequest) -> str | None:
    """The affinity key: the client's `prompt_cache_key` or `user`, else the opening."""
    return affinity_key(parsed.hints.prompt_cache_key or parsed.hints.user, parsed.chat)
