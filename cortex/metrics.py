"""Every gateway metric, in one prometheus-client registry per app.

Per request (`RequestObserver`): requests and errors, prompt/completion tokens, end-to-end
latency, time to first token (measured from the moment the request reached a ready replica, so
cold-load time is excluded; the cold-load wait has its own histogram), and decode tokens/s.
Scheduler: cold loads with outcome and duration, evictions by reason, single-flight joins.
Fleet gauges (nodes up, VRAM per node and GPU, resident models with state, estimated vs used
VRAM per model) are read from the registry's snapshot at scrape time.

Access log: every request writes one line to the `cortex.access` logger — inference requests
from `RequestObserver.finish`, all others from the app's response hook — with method, route,
model, node, status, duration, tokens in/out and whether the client went away. The model is
the observer's bounded label (a name the fleet does not know is "unknown"); routes are the
matched route patterns. Never a prompt, key, header or any other text the client sent.

Labels are bounded: model ids are canonical ids the fleet knows (anything else is "unknown"),
nodes come from config, endpoints and dialects are fixed sets. No prompt, key or free text is
ever a label. Every label that comes from a neuron (resident ids, states, error codes) passes
through `label()`, so that no text a neuron reports can make an exposition fail to encode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from cortex.control.registry import FleetRegistry
from cortex.errors import CortexError
from cortex.fleet.state import EventKind
from cortex.stats import RollingStats, Sample
from synapse.access import access_line

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_LOAD = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_RATE = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500)
MAX_LABEL = 128
access_log = logging.getLogger("cortex.access")


def log_access(
    method: str,
    route: str,
    *,
    status: int,
    duration_s: float,
    model: str = "-",
    node: str = "-",
    tokens_in: int = 0,
    tokens_out: int = 0,
    client_gone: bool = False,
) -> None:
    """Write one access-log line (see the module docstring for what it may contain)."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    access_log.info(
        "%s",
        access_line(
            method,
            route,
            model=model,
            node=node,
            status=status,
            duration_ms=round(duration_s * 1000),
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            client_gone=client_gone,
        ),
    )


def label(value: object) -> str:
    """`value` as a label Prometheus can always encode: printable text (lone surrogates, control
    and format characters become "_"), at most `MAX_LABEL` characters."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= MAX_LABEL and text.isprintable():
        return text
    return "".join(c if c.isprintable() else "_" for c in text[:MAX_LABEL])


class GatewayMetrics:
    """The gateway's Prometheus registry and the rolling `stats`, one per app.

    Request metrics are written by `RequestObserver`, scheduler ones by `on_scheduler_event`; fleet
    gauges are read from the registry at scrape time once `watch_fleet` is called. Every label is
    bounded (see the module docstring).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.stats = RollingStats()
        labels = ("model", "node", "dialect", "endpoint")
        r = self.registry
        self.requests = Counter(
            "cortex_requests", "Requests answered", (*labels, "status_class"), registry=r
        )
        self.errors = Counter(
            "cortex_request_errors",
            "Requests that failed, by error code",
            ("model", "dialect", "endpoint", "code"),
            registry=r,
        )
        self.prompt_tokens = Counter(
            "cortex_prompt_tokens", "Prompt tokens processed", labels, registry=r
        )
        self.completion_tokens = Counter(
            "cortex_completion_tokens", "Completion tokens generated", labels, registry=r
        )
        self.latency = Histogram(
            "cortex_request_duration_seconds",
            "End-to-end request latency, cold loads included",
            labels,
            buckets=_LATENCY,
            registry=r,
        )
        self.ttft = Histogram(
            "cortex_time_to_first_token_seconds",
            "From reaching a ready replica to the first streamed byte (cold load excluded)",
            labels,
            buckets=_LATENCY,
            registry=r,
        )
        self.cold_wait = Histogram(
            "cortex_cold_load_wait_seconds",
            "Time a request waited for its model to load",
            ("model", "dialect"),
            buckets=_LOAD,
            registry=r,
        )
        self.decode_rate = Histogram(
            "cortex_decode_tokens_per_second",
            "Streamed completion tokens per second",
            ("model", "node"),
            buckets=_RATE,
            registry=r,
        )
        self.cold_loads = Counter(
            "cortex_cold_loads",
            "Model loads started by the gateway",
            ("model", "node", "outcome"),
            registry=r,
        )
        self.cold_load_duration = Histogram(
            "cortex_cold_load_duration_seconds",
            "Duration of successful loads",
            ("model", "node"),
            buckets=_LOAD,
            registry=r,
        )
        self.evictions = Counter(
            "cortex_evictions",
            "Models unloaded by the gateway, by reason",
            ("node", "reason"),
            registry=r,
        )
        self.routed = Counter(
            "cortex_requests_routed",
            "Requests sent to a ready replica, by what chose it: prefix affinity (the replica "
            "that served the conversation last), load (the least busy) or a cold load",
            ("model", "by"),
            registry=r,
        )
        self.single_flight_joins = Counter(
            "cortex_single_flight_joins",
            "Requests that joined a cold load already running",
            ("model",),
            registry=r,
        )

    def watch_fleet(self, fleet: FleetRegistry) -> None:
        self.registry.register(_FleetCollector(fleet))

    def on_scheduler_event(self, kind: EventKind, fields: dict[str, Any]) -> None:
        """Hook for `Scheduler(on_event=...)`."""
        model = label(fields.get("model", ""))
        if kind == EventKind.LOAD:
            self.cold_loads.labels(model, fields["node"], "ok").inc()
            self.cold_load_duration.labels(model, fields["node"]).observe(fields["duration_s"])
        elif kind == EventKind.LOAD_FAILED:
            self.cold_loads.labels(model, fields["node"], "failed").inc()
        elif kind == EventKind.EVICT:
            self.evictions.labels(fields["node"], fields["reason"]).inc()
        elif kind == EventKind.SINGLE_FLIGHT_JOIN:
            self.single_flight_joins.labels(model).inc()


@dataclass
class Outcome:
    """How a request ended, as `RequestObserver.observing` records it: a handler that streams
    sets it from what the relay reports; an exception sets it from the error."""

    status: int = 200
    code: str | None = None


class RequestObserver:
    """Measures one request from arrival to its last byte; `finish` records its metrics and
    writes its access-log line, once. Handlers wrap their work in `observing()`."""

    def __init__(
        self,
        metrics: GatewayMetrics,
        *,
        dialect: str,
        endpoint: str,
        known_model: Callable[[str], str],
        clock: Callable[[], float] = time.time,
        method: str = "POST",
        route: str = "",
    ) -> None:
        self.metrics = metrics
        self.dialect = dialect
        self.endpoint = endpoint
        self.method = method
        self.route = route
        self.client_gone = False
        self._known_model = known_model
        self._clock = clock
        self.model = "unknown"
        self.node = "none"
        self.started = time.monotonic()
        self.ready_at: float | None = None
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0

    @contextlib.contextmanager
    def observing(self) -> Iterator[Outcome]:
        """Finish once however the block ends: with its `Outcome`, a `CortexError`'s status and
        code, or a client that went away (`CancelledError`)."""
        outcome = Outcome()
        try:
            yield outcome
        except CortexError as exc:
            outcome.status, outcome.code = exc.status, exc.code
            raise
        except asyncio.CancelledError:
            self.client_gone = True
            raise
        finally:
            self.finish(outcome.status, outcome.code)

    def requested(self, name: str) -> None:
        self.model = label(self._known_model(name))

    def placed(self, node: str, model_id: str, cold_wait_s: float, by: str = "load") -> None:
        """The request is open on `node`'s replica of `model_id`, after `cold_wait_s` of
        waiting for a load, chosen `by` affinity or load (`Target.by`)."""
        self.node, self.model = node, label(model_id)
        self.ready_at = time.monotonic()
        if cold_wait_s > 0:
            self.metrics.cold_wait.labels(self.model, self.dialect).observe(cold_wait_s)
        self.metrics.routed.labels(self.model, "cold" if cold_wait_s > 0 else by).inc()

    def chunk(self) -> None:
        now = time.monotonic()
        if self.first_at is None:
            self.first_at = now
        self.last_at = now

    def usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)

    def finish(self, status: int, code: str | None = None) -> None:
        m = self.metrics
        labels = (self.model, self.node, self.dialect, self.endpoint)
        m.requests.labels(*labels, f"{status // 100}xx").inc()
        if status >= 400:
            m.errors.labels(self.model, self.dialect, self.endpoint, label(code or status)).inc()
        m.latency.labels(*labels).observe(time.monotonic() - self.started)
        ttft = None
        if self.first_at is not None and self.ready_at is not None:
            ttft = self.first_at - self.ready_at
            m.ttft.labels(*labels).observe(ttft)
        if self.prompt_tokens:
            m.prompt_tokens.labels(*labels).inc(self.prompt_tokens)
        if self.completion_tokens:
            m.completion_tokens.labels(*labels).inc(self.completion_tokens)
            if self.first_at and self.last_at and self.last_at > self.first_at:
                rate = (self.completion_tokens - 1) / (self.last_at - self.first_at)
                m.decode_rate.labels(self.model, self.node).observe(rate)
        m.stats.add(Sample(self._clock(), self.model, self.completion_tokens, ttft, status >= 400))
        log_access(
            self.method,
            self.route,
            status=status,
            duration_s=time.monotonic() - self.started,
            model=self.model,
            node=self.node,
            tokens_in=self.prompt_tokens,
            tokens_out=self.completion_tokens,
            client_gone=self.client_gone,
        )


class _FleetCollector(Collector):
    """Gauges read from the fleet snapshot when Prometheus scrapes."""

    def __init__(self, fleet: FleetRegistry) -> None:
        self.fleet = fleet

    def collect(self) -> Iterable[GaugeMetricFamily]:
        snapshot = self.fleet.snapshot()
        up = GaugeMetricFamily("cortex_node_up", "1 when the neuron answers polls", labels=["node"])
        cordoned = GaugeMetricFamily(
            "cortex_node_cordoned", "1 when the node is cordoned: no new loads", labels=["node"]
        )
        node_total = GaugeMetricFamily(
            "cortex_node_vram_total_bytes", "VRAM per node", labels=["node"]
        )
        node_free = GaugeMetricFamily(
            "cortex_node_vram_free_bytes", "Free VRAM per node", labels=["node"]
        )
        gpu_total = GaugeMetricFamily(
            "cortex_gpu_vram_total_bytes", "VRAM per GPU", labels=["node", "gpu"]
        )
        gpu_free = GaugeMetricFamily(
            "cortex_gpu_vram_free_bytes", "Free VRAM per GPU", labels=["node", "gpu"]
        )
        resident = GaugeMetricFamily(
            "cortex_model_resident",
            "1 per resident model and state",
            labels=["node", "model", "state"],
        )

        def per_replica(name: str, documentation: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, documentation, labels=["node", "model"])

        used = per_replica(
            "cortex_model_vram_used_bytes", "VRAM a resident model holds (as the neuron reports)"
        )
        estimate = per_replica(
            "cortex_model_vram_estimate_bytes", "The neuron's estimate for a full offload"
        )
        in_flight = per_replica("cortex_model_in_flight", "Requests running per replica")
        queued = per_replica("cortex_model_queue_depth", "Requests queued per replica")
        kv_used = per_replica(
            "cortex_model_kv_cells_used", "KV pool cells in use per replica, as its neuron reports"
        )
        kv_total = per_replica("cortex_model_kv_cells", "KV pool cells per replica")
        parked = per_replica(
            "cortex_model_parked_bytes",
            "Host RAM holding a replica's cached prefixes parked out of its KV pool",
        )
        mib = 1024 * 1024
        for node in snapshot.nodes.values():
            up.add_metric([node.name], 1.0 if node.up else 0.0)
            cordoned.add_metric([node.name], 1.0 if node.cordoned else 0.0)
            node_total.add_metric([node.name], node.vram_total_mb * mib)
            node_free.add_metric([node.name], node.vram_free_mb * mib)
            for gpu in node.gpus:
                gpu_total.add_metric([node.name, str(gpu.index)], gpu.vram_total_mb * mib)
                gpu_free.add_metric([node.name, str(gpu.index)], gpu.vram_free_mb * mib)
            for slot in node.models:
                model = label(slot.model_id)
                resident.add_metric([node.name, model, label(slot.state)], 1.0)
                used.add_metric([node.name, model], slot.vram_used_mb * mib)
                if slot.estimate_mb is not None:
                    estimate.add_metric([node.name, model], slot.estimate_mb * mib)
                in_flight.add_metric([node.name, model], slot.in_flight)
                queued.add_metric([node.name, model], slot.queue_depth)
                if slot.kv_cells_total is not None:
                    kv_total.add_metric([node.name, model], slot.kv_cells_total)
                    kv_used.add_metric([node.name, model], slot.kv_cells_used or 0)
                if slot.parked_mb is not None:
                    parked.add_metric([node.name, model], slot.parked_mb * mib)
        yield from (
            up,
            cordoned,
            node_total,
            node_free,
            gpu_total,
            gpu_free,
            resident,
            used,
            estimate,
            in_flight,
            queued,
            kv_used,
            kv_total,
            parked,
        )
