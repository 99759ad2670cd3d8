"""Getting one inference request onto a neuron: route, cold-load, open the upstream, retry once.

`Dispatcher.open` returns an `Exchange` whose upstream response has its status and headers but
no body read yet; the caller relays the body (chunk by chunk for streams) and closes it. Rules:
* A ready replica is used at once; otherwise the request joins the model's single-flight cold
  load, waiting at most `cold_load_timeout_s`. While it waits, `waiting()` is called every
  `keepalive_interval_s` so a streaming caller can keep its client's connection alive.
* A neuron that cannot be reached before the first byte is marked down and the request is tried
  once more elsewhere; a draining neuron (503 `draining`) is likewise skipped. Other neuron
  errors pass through with their status, envelope and Retry-After.
* The exchange counts as in flight on its replica from open to close, so eviction never picks a
  model that is serving, and routing sees the load at once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from cortex.config import GatewayConfig
from cortex.errors import LoadTimeout, NodeUnavailable, UpstreamError
from cortex.fleet.registry import FleetRegistry
from cortex.fleet.scheduler import Scheduler, Target
from cortex.nodes.client import NeuronClient
from cortex.nodes.poller import Poller

Waiting = Callable[[], Awaitable[None]]
_JSON = {"Content-Type": "application/json"}


@dataclass
class Exchange:
    target: Target
    response: httpx.Response
    registry: FleetRegistry
    cold_load_s: float = 0.0
    started: float = field(default_factory=time.monotonic)
    _closed: bool = False

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self.response.aclose()
        finally:
            self.registry.request_finished(self.target.node, self.target.model_id)


class Dispatcher:
    def __init__(
        self,
        config: GatewayConfig,
        scheduler: Scheduler,
        registry: FleetRegistry,
        poller: Poller,
        clients: dict[str, NeuronClient],
    ) -> None:
        self.config = config
        self.scheduler = scheduler
        self.registry = registry
        self.poller = poller
        self.clients = clients

    async def open(
        self,
        requested: str,
        path: str,
        body: dict[str, Any],
        raw: bytes,
        *,
        waiting: Waiting | None = None,
    ) -> Exchange:
        exclude: frozenset[str] = frozenset()
        for attempt in range(2):
            target = self.scheduler.route_now(requested, exclude)
            cold_started = time.monotonic()
            cold_load_s = 0.0
            if target is None:
                target = await self._wait_for_load(requested, exclude, waiting)
                cold_load_s = time.monotonic() - cold_started
            payload = raw
            if body.get("model") != target.model_id:  # an alias: the neuron knows the real id
                payload = json.dumps({**body, "model": target.model_id}).encode()
            self.registry.request_started(target.node, target.model_id)
            try:
                response = await self.clients[target.node].open_stream(path, payload, _JSON, None)
            except NodeUnavailable as exc:
                self.registry.request_finished(target.node, target.model_id)
                self.poller.mark_down(target.node, exc.message)
                if attempt == 0:
                    exclude |= {target.node}
                    continue
                raise
            except UpstreamError as exc:
                self.registry.request_finished(target.node, target.model_id)
                if exc.code == "draining" and attempt == 0:
                    self.registry.update_node(target.node, draining=True)
                    exclude |= {target.node}
                    continue
                raise
            return Exchange(target, response, self.registry, cold_load_s)
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def fetch(
        self, requested: str, path: str, body: dict[str, Any], raw: bytes
    ) -> tuple[Exchange, bytes]:
        """A whole (non-streaming) answer: the closed exchange and its body."""
        exchange = await self.open(requested, path, body, raw)
        try:
            content = await exchange.response.aread()
        except httpx.TransportError as exc:
            self.node_failed(exchange.target.node, type(exc).__name__)
            raise NodeUnavailable(f"neuron {exchange.target.node} broke off") from exc
        finally:
            await exchange.close()
        return exchange, content

    async def target(self, requested: str, waiting: Waiting | None = None) -> Target:
        """A ready replica of `requested`, cold-loading it if needed, without opening a request."""
        target = self.scheduler.route_now(requested)
        if target is None:
            target = await self._wait_for_load(requested, frozenset(), waiting)
        return target

    def node_failed(self, node: str, why: str) -> None:
        """The neuron broke off mid-response: take it out of routing until it polls well."""
        self.poller.mark_down(node, why)

    async def _wait_for_load(
        self, requested: str, exclude: frozenset[str], waiting: Waiting | None
    ) -> Target:
        task = self.scheduler.loading(requested, exclude)
        deadline = time.monotonic() + self.config.cold_load_timeout_s
        if waiting is None:
            return await self.scheduler.wait_loaded(task, deadline)
        while True:
            await waiting()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LoadTimeout(
                    f"the model did not load within {self.config.cold_load_timeout_s:g}s",
                    retry_after=30,
                )
            try:
                return await asyncio.wait_for(
                    asyncio.shield(task), min(self.config.keepalive_interval_s, remaining)
                )
            except TimeoutError:
                continue
