"""`NeuronClient`: the gateway's only way to talk to a neuron.

All clients share the app's single `httpx.AsyncClient` (`transport.make_http_client`: one
connection pool, opened at server start, closed at stop). Transport failures (refused, reset,
timeouts) become `NodeUnavailable`; neuron error answers become `UpstreamError` with the
neuron's status, envelope and Retry-After. Every lifecycle answer is parsed into its
`synapse.contract` type; one that is off the contract (not JSON, or JSON of the wrong shape) is
`OffContract`, a `NodeUnavailable`, so the node leaves routing like one that cannot be reached.
Every call — lifecycle, admin and inference alike — carries the neuron's bearer token when one
is configured.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any, TypeVar

import httpx

from cortex.config import NeuronEndpoint
from cortex.errors import (
    Conflict,
    ModelNotFound,
    NodeUnavailable,
    OffContract,
    UpstreamError,
    UpstreamTimeout,
)
from cortex.nodes.transport import HttpxStreams, Streams, UpstreamResponse
from synapse.contract import (
    ContractError,
    Discovery,
    Health,
    LoadRequest,
    ModelInfo,
    PlanAnswer,
    PlanRequest,
    TokenCount,
    Unloaded,
    parse,
    to_json,
)

T = TypeVar("T")

# Reads of lifecycle routes are quick; loads may take as long as the gateway lets a cold load run.
QUICK_READ_S = 10.0


class NeuronClient:
    """One neuron's HTTP API.

    Raises only `NodeUnavailable` (`OffContract` among them), `UpstreamTimeout`,
    `UpstreamError`, and from the model management calls `Conflict` (any 409) and
    `ModelNotFound` (unloading what is gone).
    """

    def __init__(
        self, http: httpx.AsyncClient, endpoint: NeuronEndpoint, streams: Streams | None = None
    ) -> None:
        self.http = http
        self.streams: Streams = streams or HttpxStreams(http)
        self.name = endpoint.name
        self.endpoint = endpoint.endpoint
        self._auth = {"Authorization": f"Bearer {endpoint.token}"} if endpoint.token else {}

    async def _request(
        self, method: str, path: str, body: Any = None, read_s: float = QUICK_READ_S
    ) -> Any:
        try:
            response = await self.http.request(
                method,
                self.endpoint + path,
                json=body,
                headers=self._auth,
                timeout=self._timeout(read_s),
            )
        except httpx.TransportError as exc:
            raise NodeUnavailable(f"neuron {self.name} unreachable: {type(exc).__name__}") from exc
        if response.status_code == 409:
            # A model busy, loading or unloading there, or a different source under that id:
            # the scheduler re-plans or waits on these, so they get their own class.
            error = _upstream_error(409, response.content, response.headers)
            raise Conflict(error.message, code=error.code)
        if response.status_code >= 400:
            raise _upstream_error(response.status_code, response.content, response.headers)
        try:
            return response.json()
        except ValueError as exc:  # not JSON, or not even UTF-8
            raise OffContract(f"neuron {self.name} sent a non-JSON answer") from exc

    def _timeout(self, read_s: float | None) -> httpx.Timeout:
        # The app's client carries `[gateway] connect_timeout_s`; each call sets its own read.
        return httpx.Timeout(read_s, connect=self.http.timeout.connect)

    def _parsed(self, kind: type[T], answer: Any, route: str) -> T:
        try:
            return parse(kind, answer, route)
        except ContractError as exc:
            raise OffContract(f"neuron {self.name} answered off the contract: {exc}") from exc

    async def discovery(self) -> Discovery:
        return self._parsed(Discovery, await self._request("GET", "/discovery"), "/discovery")

    async def health(self) -> Health:
        return self._parsed(Health, await self._request("GET", "/health"), "/health")

    async def models(self) -> tuple[ModelInfo, ...]:
        return self._parsed(tuple[ModelInfo, ...], await self._request("GET", "/models"), "/models")

    async def plan(self, asked: PlanRequest) -> PlanAnswer:
        answer = await self._request("POST", "/models/plan", to_json(asked))
        return self._parsed(PlanAnswer, answer, "/models/plan")

    async def load(self, asked: LoadRequest, *, timeout_s: float) -> ModelInfo:
        """Load a model; with `min_gpu_layers` the neuron refuses (507 `insufficient_vram`)
        when fewer layers fit its free VRAM at that moment."""
        answer = await self._request("POST", "/models/load", to_json(asked), timeout_s)
        return self._parsed(ModelInfo, answer, "/models/load")

    async def unload(self, model: str, *, force: bool = False) -> Unloaded:
        """Unload `model`; `ModelNotFound` when the neuron no longer holds it."""
        try:
            answer = await self._request(
                "POST", "/models/unload", {"model": model, "force": force}, 120
            )
        except UpstreamError as exc:
            if exc.status == 404 and exc.code == "model_not_found":
                raise ModelNotFound(exc.message, param="model") from exc
            raise
        return self._parsed(Unloaded, answer, "/models/unload")

    async def tokenize(self, body: dict[str, Any], *, read_s: float = QUICK_READ_S) -> int:
        """Token count by the model's own tokenizer (`messages`/`tools` or `prompt`); the body
        goes as given (with `source`, the neuron counts on that GGUF's vocabulary alone)."""
        answer = await self._request("POST", "/tokenize", body, read_s)
        return self._parsed(TokenCount, answer, "/tokenize").count

    async def open_stream(
        self, path: str, body: bytes, headers: dict[str, str], first_byte_deadline: float
    ) -> UpstreamResponse:
        """Send an inference request; the caller reads and closes the streamed response.

        Raises before the first byte of the body is read: `NodeUnavailable` when the neuron
        cannot be reached, `UpstreamTimeout` when its answer has not begun by
        `first_byte_deadline` (event-loop time), `UpstreamError` when it answers with an error
        status. Reads have no httpx timeout: the caller times the body (see `Exchange`).
        """
        try:
            async with asyncio.timeout_at(first_byte_deadline):
                response = await self.streams.send(
                    self.endpoint + path, body, {**headers, **self._auth}
                )
        except TimeoutError:
            raise UpstreamTimeout(f"neuron {self.name} sent no answer in time") from None
        except httpx.TransportError as exc:
            raise NodeUnavailable(f"neuron {self.name} unreachable: {type(exc).__name__}") from exc
        if response.status_code >= 400:
            try:
                async with asyncio.timeout_at(first_byte_deadline):
                    content = await response.aread()
            except (TimeoutError, httpx.TransportError) as exc:
                raise NodeUnavailable(f"neuron {self.name} broke off") from exc
            finally:
                await response.aclose()
            raise _upstream_error(response.status_code, content, response.headers)
        return response


def _upstream_error(status: int, content: bytes, headers: Mapping[str, str]) -> UpstreamError:
    try:
        body = json.loads(content)
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = content.decode(errors="replace")
    return UpstreamError(status, body, headers.get("retry-after"))
