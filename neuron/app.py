"""Wiring of the neuron's Sanic app: config, GPU probe, model manager, the vocabulary cache of
/tokenize, routes, error rendering.

Every error leaves as the OpenAI envelope: `NeuronError`s with their own status, Sanic's
(bad JSON, unknown route, wrong method, oversized body) with theirs, and anything unexpected as
a 500 whose details go to the log only. SIGTERM and SIGINT drain before the server stops.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sanic import Request, Sanic
from sanic.exceptions import SanicException
from sanic.response import HTTPResponse, json, raw

from neuron.api import access, lifecycle, openai
from neuron.api.auth import inference_auth
from neuron.config import NeuronConfig
from neuron.engine import supports_gpu_offload
from neuron.errors import NeuronError
from neuron.gpu import GpuProbe, open_probe
from neuron.manager import EngineFactory, ModelManager
from neuron.metrics import NeuronMetrics

log = logging.getLogger("neuron")

_COUNTED = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
}
_SANIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    503: "service_unavailable",
}


def create_app(
    config: NeuronConfig,
    *,
    probe: GpuProbe | None = None,
    engine_factory: EngineFactory | None = None,
) -> Sanic:
    """The neuron's app; `probe` and `engine_factory` replace the NVML probe and llama.cpp (tests
    pass a `FakeProbe` and `FakeEngine`s to run the whole API in process)."""
    app = Sanic("neuron", configure_logging=False)  # our own logging.basicConfig applies
    app.config.RESPONSE_TIMEOUT = 24 * 3600  # generations and loads take as long as they take
    app.config.KEEP_ALIVE_TIMEOUT = 75
    app.config.REQUEST_MAX_SIZE = int(config.max_body_mb * 1024 * 1024)
    app.ctx.config = config
    app.blueprint(lifecycle.bp)
    app.blueprint(openai.bp)
    app.blueprint(openai.tokenize_bp)
    app.register_middleware(inference_auth, "request")

    @app.before_server_start
    async def start(app: Sanic) -> None:
        app.ctx.probe = probe or open_probe()
        app.ctx.gpu_offload = supports_gpu_offload()
        app.ctx.metrics = NeuronMetrics()
        app.ctx.manager = ModelManager(
            config,
            app.ctx.probe,
            app.ctx.gpu_offload,
            app.ctx.metrics,
            engine_factory=engine_factory,
        )
        app.ctx.metrics.watch(app.ctx.manager, app.ctx.probe)
        # Vocabulary-only GGUFs for /tokenize of models that are not loaded (imports llama_cpp,
        # so not at module level: `neuron.app` imports without it, like the manager's engines).
        from neuron.engine.vocab import VocabularyCache

        app.ctx.vocabularies = VocabularyCache()

    @app.after_server_start
    async def started(app: Sanic) -> None:
        # A plain task (Sanic's add_task needs its own runner's loop, not synapse.serving's);
        # kept on ctx so that it is not collected, cancelled at stop.
        app.ctx.preload = None
        if config.default_models:
            app.ctx.preload = asyncio.get_running_loop().create_task(_preload(app))

    # A stop signal (synapse.serving) runs this while the port still answers: new requests
    # get 503 draining, in-flight ones finish within drain_timeout_s.
    @app.before_server_stop
    async def drain(app: Sanic) -> None:
        log.info("draining: refusing new requests, waiting for in-flight ones")
        await app.ctx.manager.drain(app.ctx.config.drain_timeout_s)
        log.info("drained; stopping")

    @app.after_server_stop
    async def stopped(app: Sanic) -> None:
        if app.ctx.preload is not None:
            app.ctx.preload.cancel()
        await app.ctx.manager.drain(timeout_s=0)
        await app.ctx.vocabularies.close()
        app.ctx.probe.close()

    @app.get("/metrics")
    async def metrics(request: Request) -> HTTPResponse:
        return raw(
            generate_latest(request.app.ctx.metrics.registry), content_type=CONTENT_TYPE_LATEST
        )

    @app.on_request
    async def mark(request: Request) -> None:
        access.started(request)

    @app.on_response
    async def count(request: Request, response: HTTPResponse) -> None:
        if not response.content_type or "event-stream" not in response.content_type:
            access.log_request(request, response.status, usage=getattr(request.ctx, "usage", None))
        endpoint = _COUNTED.get(request.path)
        model = getattr(request.ctx, "model", None)
        if endpoint and model in request.app.ctx.manager.models:
            request.app.ctx.metrics.requests.labels(
                model, endpoint, f"{response.status // 100}xx"
            ).inc()

    app.error_handler.add(Exception, _render_error)
    return app


async def _render_error(request: Request, exc: Exception) -> HTTPResponse:
    if isinstance(exc, NeuronError):
        return json(exc.body(), status=exc.status, headers=exc.headers())
    if isinstance(exc, SanicException):
        status = exc.status_code
        body = {
            "error": {
                "message": str(exc) or "request failed",
                "type": _SANIC_ERROR_TYPES.get(status, "invalid_request_error"),
                "code": None,
                "param": None,
            }
        }
        return json(body, status=status)
    log.exception("unhandled error on %s %s", request.method, request.path)
    body = {
        "error": {
            "message": "internal error; see the neuron's log",
            "type": "server_error",
            "code": "internal_error",
            "param": None,
        }
    }
    return json(body, status=500)


async def _preload(app: Sanic) -> None:
    manager: ModelManager = app.ctx.manager
    for spec in app.ctx.config.default_models:
        try:
            await manager.load(spec)
        except NeuronError as exc:
            log.error("preloading %s failed: %s", spec.model, exc.message)
