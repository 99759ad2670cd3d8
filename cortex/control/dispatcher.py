"""Getting one inference request onto a neuron: route, cold-load, open the upstream, retry once.

`Dispatcher.open` returns an `Exchange` whose upstream response has its status and headers but
no body read yet; the caller reads the body through the exchange (`chunks`, `lines`, `read`) and
closes it. Rules:
* A ready replica is used at once; otherwise the request joins the model's single-flight cold
  load, waiting at most `cold_load_timeout_s`. Keeping a streaming client's connection alive
  meanwhile (and while the neuron queues or reads the prompt) is the caller's, with
  `sse.with_keepalives` around `open`.
* A neuron that cannot be reached before the first byte is marked down and the request is tried
  once more elsewhere; a draining neuron (503 `draining`) is likewise skipped. A neuron that
  answers 404 `model_not_found` or 503 `model_unavailable` for a model the last poll said it
  serves (it restarted, or unloaded or began unloading it within one poll interval) is polled
  again and the request routed afresh, cold loading if needed. Other neuron errors pass
  through with their status, envelope and Retry-After.
* A neuron gets `first_byte_timeout_s` from the request to the first byte of the answer's body
  and `idle_timeout_s` between two chunks of it. On expiry (or a broken connection) the node
  leaves routing until it polls well again, and the reader gets `UpstreamTimeout` (504) or
  `NodeUnavailable`; nothing is retried once a neuron has the request, since it may be working.
* The body goes to the neuron as the client's bytes unless the model id is an alias (the
  neuron gets the real id) or the catalogue entry's `max_output_tokens` (a cap on what was
  asked for) or `temperature` (when the client sent none) apply.
* The exchange counts as in flight on its replica from open to close, so eviction never picks a
  model that is serving, and routing sees the load at once.
* `tokenize` (Anthropic `count_tokens`) never cold-loads or evicts: with no ready replica it
  asks an up neuron to count on the catalogue source's vocabulary alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from cortex.config import GatewayConfig
from cortex.control.registry import FleetRegistry
from cortex.control.scheduler import Scheduler, Target
from cortex.dialects.openai import with_model_defaults
from cortex.errors import (
    CortexError,
    NoCapacity,
    NodeUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from cortex.fleet.routing import RETRY_AFTER_S
from cortex.nodes.client import NeuronClient
from cortex.nodes.poller import Poller
from cortex.nodes.transport import TransportError, UpstreamResponse

_JSON = {"Content-Type": "application/json"}


@dataclass
class Exchange:
    """One request on one replica: the upstream answer, read under the relay's timeouts.

    `first_byte_deadline` is in event-loop time; `broken(node, why)` takes the node out of
    routing when it breaks off or goes silent.
    """

    target: Target
    response: UpstreamResponse
    registry: FleetRegistry
    first_byte_deadline: float
    idle_timeout_s: float
    broken: Callable[[str, str], None]
    cold_load_s: float = 0.0
    started: float = field(default_factory=time.monotonic)
    _closed: bool = False

    async def chunks(self) -> AsyncIterator[bytes]:
        """The upstream body as it arrives; raises `UpstreamTimeout` or `NodeUnavailable`."""
        body = self.response.aiter_raw()
        deadline, silence = self.first_byte_deadline, "sent no answer in time"
        node = self.target.node
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    chunk = await anext(body)
            except StopAsyncIteration:
                return
            except TimeoutError:
                self.broken(node, "timed out")
                raise UpstreamTimeout(f"neuron {node} {silence}") from None
            except TransportError as exc:
                self.broken(node, type(exc).__name__)
                raise NodeUnavailable(f"neuron {node} broke off mid-answer") from exc
            deadline = loop.time() + self.idle_timeout_s
            silence = f"went silent for {self.idle_timeout_s:g}s mid-answer"
            yield chunk

    async def lines(self) -> AsyncIterator[str]:
        """The upstream body line by line (SSE), under the same timeouts as `chunks`."""
        pending = b""
        async for chunk in self.chunks():
            *complete, pending = (pending + chunk).split(b"\n")
            for line in complete:
                yield line.rstrip(b"\r").decode("utf-8", "replace")
        if pending:
            yield pending.decode("utf-8", "replace")

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self.response.aclose()
        finally:
            self.registry.request_finished(self.target.node, self.target.model_id)


class Dispatcher:
    """Routes inference requests onto replicas (see the module docstring for the rules)."""

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
        conversation: str | None = None,
    ) -> Exchange:
        """Open `body` on a replica of `requested` (the one that served `conversation` last, by
        the affinity rule), cold-loading it if none is ready; see the module docstring."""
        exclude: frozenset[str] = frozenset()
        repolled = False
        while True:  # at most three turns: one elsewhere, one after a re-poll
            target = self.scheduler.route_now(requested, exclude, conversation)
            cold_started = time.monotonic()
            cold_load_s = 0.0
            if target is None:
                target = await self._wait_for_load(requested, exclude)
                cold_load_s = time.monotonic() - cold_started
            payload = self._payload(target, path, body, raw)
            deadline = asyncio.get_running_loop().time() + self.config.first_byte_timeout_s
            self.registry.request_started(target.node, target.model_id)
            try:
                response = await self.clients[target.node].open_stream(
                    path, payload, _JSON, deadline
                )
            except BaseException as exc:
                # Not open after all (the client went away too): it no longer counts as in flight.
                self.registry.request_finished(target.node, target.model_id)
                if isinstance(exc, NodeUnavailable):
                    self.poller.mark_down(target.node, exc.message)
                    if not exclude:
                        exclude |= {target.node}
                        continue
                elif isinstance(exc, UpstreamTimeout):
                    self.node_failed(target.node, "timed out")
                elif isinstance(exc, UpstreamError):
                    if exc.code == "draining" and not exclude:
                        self.registry.update_node(target.node, draining=True)
                        exclude |= {target.node}
                        continue
                    if _is_stale(exc) and not repolled:
                        repolled = True
                        await self._repoll(target.node)
                        continue
                raise
            self.registry.remember_served(target.model_id, conversation, target.node)
            return Exchange(
                target,
                response,
                self.registry,
                deadline,
                self.config.idle_timeout_s,
                self.node_failed,
                cold_load_s,
            )

    def _payload(self, target: Target, path: str, body: dict[str, Any], raw: bytes) -> bytes:
        """The bytes for the neuron: the client's own, unless the model id is an alias (the
        neuron knows the real id) or the catalogue entry's settings apply."""
        entry = self.registry.snapshot().entry(target.model_id)
        sent = body
        if entry is not None and path in ("/v1/chat/completions", "/v1/completions"):
            sent = with_model_defaults(body, entry.max_output_tokens, entry.temperature)
        if sent is body and body.get("model") == target.model_id:
            return raw
        return json.dumps({**sent, "model": target.model_id}).encode()

    async def fetch(
        self,
        requested: str,
        path: str,
        body: dict[str, Any],
        raw: bytes,
        conversation: str | None = None,
    ) -> tuple[Exchange, bytes]:
        """A whole (non-streaming) answer: the closed exchange and its body."""
        exchange = await self.open(requested, path, body, raw, conversation)
        try:
            content = await exchange.read()
        finally:
            await exchange.close()
        return exchange, content

    async def fetch_json(
        self,
        requested: str,
        path: str,
        body: dict[str, Any],
        raw: bytes,
        conversation: str | None = None,
    ) -> tuple[Exchange, dict[str, Any]]:
        """A whole answer that is translated, not relayed: its JSON object. A neuron that
        answers anything else has broken the contract: `NodeUnavailable`, and the node leaves
        routing until it polls well."""
        exchange, content = await self.fetch(requested, path, body, raw, conversation)
        try:
            answer = json.loads(content)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            node = exchange.target.node
            self.node_failed(node, "malformed answer")
            raise NodeUnavailable(f"neuron {node} sent a malformed answer")
        return exchange, answer

    def ready(self, requested: str, conversation: str | None = None) -> Target | None:
        """A ready replica of `requested` now (the one `open` would pick for `conversation`), or
        None when it must load first.

        Raises `ModelNotFound` / `NoCapacity` when that is already known, so that a streaming
        handler can refuse with an HTTP status before it starts its stream."""
        return self.scheduler.route_now(requested, conversation=conversation)

    async def target(self, requested: str) -> Target:
        """A ready replica of `requested`, cold-loading it if needed, without opening a request."""
        target = self.scheduler.route_now(requested)
        if target is None:
            target = await self._wait_for_load(requested, frozenset())
        return target

    async def tokenize(self, requested: str, body: dict[str, Any]) -> int:
        """The prompt's token count by the model's own tokenizer; never loads or evicts a model.

        On a ready replica when there is one (a replica found gone is polled again and the
        count routed afresh). Otherwise on an up neuron, one that accepts loads first, which
        counts on the catalogue entry's GGUF opened for its vocabulary only. A model neither in
        the catalogue nor resident is `ModelNotFound`; with no neuron up, `NoCapacity`."""
        for repolled in (False, True):
            try:
                target = self.scheduler.route_now(requested)
            except NoCapacity:
                # No replica can serve and no node takes loads (cordoned, draining): a
                # catalogue model can still be counted on any neuron that is up.
                snapshot = self.registry.snapshot()
                if snapshot.entry(snapshot.resolve(requested)) is None:
                    raise
                target = None
            if target is None:
                return await self._count_unloaded(requested, body)
            try:
                return await self.clients[target.node].tokenize({**body, "model": target.model_id})
            except UpstreamError as exc:
                if repolled or not _is_stale(exc):
                    raise
                await self._repoll(target.node)
        raise AssertionError("unreachable: the second turn returns or raises")

    async def _count_unloaded(self, requested: str, body: dict[str, Any]) -> int:
        """Count on a neuron that does not hold the model, from its catalogue source."""
        snapshot = self.registry.snapshot()
        model_id = snapshot.resolve(requested)
        entry = snapshot.entry(model_id)
        if entry is None:  # resident somewhere, still loading, and no source cortex knows of
            raise NoCapacity(
                f"model {model_id!r} is not ready on any node; retry", retry_after=RETRY_AFTER_S
            )
        nodes = sorted(
            (node for node in snapshot.nodes.values() if node.up),
            key=lambda node: (not node.accepts_loads, node.name),
        )
        if not nodes:
            raise NoCapacity(
                f"no neuron is up to count tokens for {model_id!r}", retry_after=RETRY_AFTER_S
            )
        payload = {**body, "model": model_id, "source": entry.source_or_id}
        tried = nodes[:2]  # one more neuron when the first cannot be reached
        for node in tried:
            try:
                # The first count of a source resolves it (an HF source may reach the hub):
                # the neuron gets as long as for the first byte of any answer.
                return await self.clients[node.name].tokenize(
                    payload, read_s=self.config.first_byte_timeout_s
                )
            except NodeUnavailable as exc:
                self.poller.mark_down(node.name, exc.message)
                if node is tried[-1]:
                    raise
        raise AssertionError("unreachable: the last turn returns or raises")

    async def _repoll(self, node: str) -> None:
        # The neuron no longer holds what its last poll said (restarted or unloaded within one
        # poll interval): look again, so that routing sees the truth and cold-loads if needed.
        with contextlib.suppress(CortexError):
            await self.poller.poll(node)

    def node_failed(self, node: str, why: str) -> None:
        """The neuron broke off mid-response: take it out of routing until it polls well."""
        self.poller.mark_down(node, why)

    async def _wait_for_load(self, requested: str, exclude: frozenset[str]) -> Target:
        task = self.scheduler.loading(requested, exclude)
        deadline = time.monotonic() + self.config.cold_load_timeout_s
        return await self.scheduler.wait_loaded(task, deadline)


def _is_stale(exc: UpstreamError) -> bool:
    """The neuron no longer serves what its last poll said: gone (404) or going (503)."""
    return (exc.status, exc.code) in ((404, "model_not_found"), (503, "model_unavailable"))
