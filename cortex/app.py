"""Wiring of the gateway's Sanic app; no decisions are made here.

One HTTP client towards the neurons for the whole app (`nodes.transport.make_http_client`,
opened at start, closed at stop), one registry, one poller, one scheduler, one dispatcher. Errors
render in the dialect of the route: Anthropic's envelope under /v1/messages, OpenAI's everywhere
else; bodies over `max_body_mb` are refused by Sanic itself (413) before they are read.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from ipaddress import ip_address

from prometheus_client import start_http_server
from sanic import Request, Sanic
from sanic.exceptions import PayloadTooLarge, SanicException
from sanic.response import HTTPResponse, json

from cortex.api import admin, anthropic, openai, responses
from cortex.config import GatewayConfig
from cortex.control.dispatcher import Dispatcher
from cortex.control.registry import FleetRegistry
from cortex.control.scheduler import Scheduler
from cortex.errors import BodyTooLarge, CortexError, Forbidden, Unauthorized
from cortex.fleet.state import NodeState
from cortex.metrics import GatewayMetrics, log_access
from cortex.nodes.client import NeuronClient
from cortex.nodes.poller import Poller
from cortex.nodes.transport import Transport, make_http_client, make_streams
from synapse.tomlconf import parse_listen

log = logging.getLogger("cortex")


def create_app(
    config: GatewayConfig,
    *,
    transport: Transport | None = None,
    clock: Callable[[], float] | None = None,
    name: str = "cortex",
) -> Sanic:
    app = Sanic(name, configure_logging=False)  # our own logging.basicConfig applies
    app.config.RESPONSE_TIMEOUT = 24 * 3600
    app.config.KEEP_ALIVE_TIMEOUT = 75
    app.config.REQUEST_MAX_SIZE = int(config.max_body_mb * 1024 * 1024)
    app.ctx.config = config
    app.blueprint(admin.bp)
    app.blueprint(anthropic.bp)
    app.blueprint(openai.bp)
    app.blueprint(responses.bp)
    now = clock or time.time

    @app.before_server_start
    async def start(app: Sanic) -> None:
        http = make_http_client(config, transport)
        streams = make_streams(config, http, transport)
        clients = {n.name: NeuronClient(http, n, streams) for n in config.neurons}
        registry = FleetRegistry(
            (NodeState(name=n.name, endpoint=n.endpoint) for n in config.neurons),
            config.models,
            config.aliases,
            now,
        )
        poller = Poller(registry, clients, config.poll_interval_s, config.down_after_misses)
        metrics = GatewayMetrics()
        metrics.watch_fleet(registry)
        scheduler = Scheduler(
            config, registry, clients, poller, clock=now, on_event=metrics.on_scheduler_event
        )
        app.ctx.metrics = metrics
        app.ctx.metrics_server = None
        if config.metrics_listen:
            host, port = parse_listen(config.metrics_listen)
            app.ctx.metrics_server, _thread = start_http_server(
                port, addr=host, registry=metrics.registry
            )
        app.ctx.http, app.ctx.streams = http, streams
        app.ctx.registry = registry
        app.ctx.poller = poller
        app.ctx.scheduler = scheduler
        app.ctx.dispatcher = Dispatcher(config, scheduler, registry, poller, clients)
        await poller.poll_all()

    @app.after_server_start
    async def started(app: Sanic) -> None:
        app.ctx.poller.start()
        app.ctx.scheduler.start()

    @app.before_server_stop
    async def stopping(app: Sanic) -> None:
        await app.ctx.scheduler.stop()
        await app.ctx.poller.stop()

    @app.after_server_stop
    async def stopped(app: Sanic) -> None:
        await app.ctx.streams.aclose()
        await app.ctx.http.aclose()
        if app.ctx.metrics_server is not None:
            app.ctx.metrics_server.shutdown()

    @app.on_request
    async def authenticate(request: Request) -> None:
        request.ctx.started = time.monotonic()
        path = request.path
        if path.startswith("/v1/"):
            if config.api_keys and not _presented_key_in(request, config.api_keys):
                raise Unauthorized(
                    "a valid API key is required (Authorization: Bearer or x-api-key)"
                )
        elif path.startswith("/admin/"):
            if config.admin_keys:
                if not _presented_key_in(request, config.admin_keys):
                    raise Unauthorized("a valid admin key is required")
            elif not _is_loopback(request):
                raise Forbidden("admin routes answer loopback clients only until admin_keys is set")

    @app.on_response
    async def access(request: Request, response: HTTPResponse) -> None:
        if getattr(request.ctx, "observer", None) is not None:
            return  # inference routes log when their last byte is sent (RequestObserver)
        started = getattr(request.ctx, "started", time.monotonic())
        # The matched pattern (/v1/models/<model_id:path>), never the path the client sent.
        route = "/" + request.route.path.lstrip("/") if request.route else "-"
        log_access(
            request.method,
            route,
            status=response.status,
            duration_s=time.monotonic() - started,
        )

    app.error_handler.add(Exception, _render_error)
    return app


def _presented_key_in(request: Request, keys: frozenset[str]) -> bool:
    presented = request.headers.get("x-api-key", "")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token:
        presented = token.strip()
    if not presented:
        return False
    return any(hmac.compare_digest(presented, key) for key in keys)


def _is_loopback(request: Request) -> bool:
    try:
        return ip_address(request.ip).is_loopback
    except ValueError:
        return False


def _is_anthropic(request: Request) -> bool:
    return request.path.startswith("/v1/messages")


async def _render_error(request: Request, exc: Exception) -> HTTPResponse:
    if isinstance(exc, PayloadTooLarge):
        limit = request.app.ctx.config.max_body_mb
        exc = BodyTooLarge(f"the request is larger than this gateway accepts ({limit:g} MiB)")
    if isinstance(exc, SanicException):
        exc = CortexError.for_status(exc.status_code, str(exc) or "request failed")
    elif not isinstance(exc, CortexError):
        log.exception("unhandled error on %s %s", request.method, request.path)
        exc = CortexError.for_status(500, "internal error; see the gateway's log")
    body = exc.anthropic_body() if _is_anthropic(request) else exc.openai_body()
    return json(body, status=exc.status, headers=exc.headers())
