"""`NeuronClient`: the gateway's only way to talk to a neuron.

All clients share the app's single `httpx.AsyncClient` (one connection pool, opened at server
start, closed at stop). Transport failures (refused, reset, timeouts) become `NodeUnavailable`;
neuron error answers become `UpstreamError` with the neuron's status, envelope and Retry-After.
Every call — lifecycle, admin and inference alike — carries the neuron's bearer token when one
is configured.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from cortex.config import NeuronEndpoint
from cortex.errors import (
    Conflict,
    ModelNotFound,
    NodeUnavailable,
    UpstreamError,
    UpstreamTimeout,
)

# Reads of lifecycle routes are quick; loads may take as long as the gateway lets a cold load run.
QUICK_READ_S = 10.0


class NeuronClient:
    """One neuron's HTTP API.

    Raises only `NodeUnavailable`, `UpstreamTimeout`, `UpstreamError`, and from the model
    management calls `Conflict` (any 409) and `ModelNotFound` (unloading what is gone).
    """

    def __init__(self, http: httpx.AsyncClient, endpoint: NeuronEndpoint) -> None:
        self.http = http
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
            raise NodeUnavailable(f"neuron {self.name} sent a non-JSON answer") from exc

    def _timeout(self, read_s: float | None) -> httpx.Timeout:
        # The app's client carries `[gateway] connect_timeout_s`; each call sets its own read.
        return httpx.Timeout(read_s, connect=self.http.timeout.connect)

    async def discovery(self) -> dict[str, Any]:
        return await self._request("GET", "/discovery")

    async def health(self) -> dict[str, Any]:
        return await self._request("GET", "/health")

    async def models(self) -> list[dict[str, Any]]:
        return await self._request("GET", "/models")

    async def plan(self, model: str, source: str | None, n_ctx: int | None) -> dict[str, Any]:
        return await self._request("POST", "/models/plan", _load_body(model, source, n_ctx))

    async def load(
        self,
        model: str,
        source: str | None,
        n_ctx: int | None,
        *,
        embedding: bool = False,
        min_gpu_layers: int | None = None,
        timeout_s: float,
    ) -> dict[str, Any]:
        """Load `model` from `source`; with `min_gpu_layers` the neuron refuses (507
        `insufficient_vram`) when fewer layers fit its free VRAM at that moment."""
        body = _load_body(model, source, n_ctx)
        if embedding:
            body["embedding"] = True
        if min_gpu_layers is not None:
            body["min_gpu_layers"] = min_gpu_layers
        return await self._request("POST", "/models/load", body, timeout_s)

    async def unload(self, model: str, *, force: bool = False) -> dict[str, Any]:
        """Unload `model`; `ModelNotFound` when the neuron no longer holds it."""
        try:
            return await self._request(
                "POST", "/models/unload", {"model": model, "force": force}, 120
            )
        except UpstreamError as exc:
            if exc.status == 404 and exc.code == "model_not_found":
                raise ModelNotFound(exc.message, param="model") from exc
            raise

    async def tokenize(self, body: dict[str, Any], *, read_s: float = QUICK_READ_S) -> int:
        """Token count by the model's own tokenizer (`messages`/`tools` or `prompt`); the body
        goes as given (with `source`, the neuron counts on that GGUF's vocabulary alone)."""
        return int((await self._request("POST", "/tokenize", body, read_s))["count"])

    async def open_stream(
        self, path: str, body: bytes, headers: dict[str, str], first_byte_deadline: float
    ) -> httpx.Response:
        """Send an inference request; the caller reads and closes the streamed response.

        Raises before the first byte of the body is read: `NodeUnavailable` when the neuron
        cannot be reached, `UpstreamTimeout` when its answer has not begun by
        `first_byte_deadline` (event-loop time), `UpstreamError` when it answers with an error
        status. Reads have no httpx timeout: the caller times the body (see `Exchange`).
        """
        request = self.http.build_request(
            "POST",
            self.endpoint + path,
            content=body,
            headers={**headers, **self._auth},
            timeout=self._timeout(None),
        )
        try:
            async with asyncio.timeout_at(first_byte_deadline):
                response = await self.http.send(request, stream=True)
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


def _load_body(model: str, source: str | None, n_ctx: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model}
    if source:
        body["source"] = source
    if n_ctx:
        body["n_ctx"] = n_ctx
    return body


def _upstream_error(status: int, content: bytes, headers: httpx.Headers) -> UpstreamError:
    try:
        body = json.loads(content)
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = content.decode(errors="replace")
    return UpstreamError(status, body, headers.get("retry-after"))
