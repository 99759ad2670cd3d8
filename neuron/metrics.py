"""The neuron's Prometheus metrics, served at GET /metrics on the neuron's own API port.

Counters and histograms are updated by the request handlers (requests, tokens, queue wait);
gauges are read from the model manager and the GPU probe at scrape time (in-flight, queue depth,
rejections, decode tok/s, load duration, VRAM estimate vs planned use, GPU memory, utilisation,
temperature). Labels: model ids resident here, endpoint, status class, GPU index; nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from neuron.gpu import GpuProbe

if TYPE_CHECKING:  # the manager imports this module
    from neuron.manager import ModelManager

_WAIT = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
MIB = 1024 * 1024


class NeuronMetrics:
    """The neuron's Prometheus registry: counters and histograms the handlers update, plus gauges
    read from the model manager and the GPU probe at scrape time once `watch` is called."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "neuron_requests",
            "Inference requests answered",
            ("model", "endpoint", "status_class"),
            registry=r,
        )
        self.prompt_tokens = Counter(
            "neuron_prompt_tokens", "Prompt tokens evaluated", ("model",), registry=r
        )
        self.completion_tokens = Counter(
            "neuron_completion_tokens", "Tokens generated", ("model",), registry=r
        )
        self.cached_tokens = Counter(
            "neuron_prompt_cached_tokens",
            "Prompt tokens served from the prefix cache instead of being evaluated",
            ("model",),
            registry=r,
        )
        self.queue_wait = Histogram(
            "neuron_queue_wait_seconds",
            "Time requests waited for an admission slot",
            ("model",),
            buckets=_WAIT,
            registry=r,
        )

    def watch(self, manager: ModelManager, probe: GpuProbe) -> None:
        self.registry.register(_StateCollector(manager, probe))


class _StateCollector(Collector):
    def __init__(self, manager: ModelManager, probe: GpuProbe) -> None:
        self.manager = manager
        self.probe = probe

    def collect(self) -> Iterable[Metric]:
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "in_flight": GaugeMetricFamily(
                "neuron_model_in_flight", "Requests generating", labels=["model"]
            ),
            "queue": GaugeMetricFamily(
                "neuron_model_queue_depth", "Requests waiting", labels=["model"]
            ),
            "rejected": GaugeMetricFamily(
                "neuron_model_rejections", "Requests refused with 429 since load", labels=["model"]
            ),
            "tok_s": GaugeMetricFamily(
                "neuron_model_decode_tokens_per_second", "Recent decode rate", labels=["model"]
            ),
            "load": GaugeMetricFamily(
                "neuron_model_load_duration_seconds", "How long the load took", labels=["model"]
            ),
            "state": GaugeMetricFamily(
                "neuron_model_state", "1 for the model's current state", labels=["model", "state"]
            ),
            "estimate": GaugeMetricFamily(
                "neuron_model_memory_estimate_bytes",
                "Estimated memory for the load",
                labels=["model"],
            ),
            "slots": GaugeMetricFamily(
                "neuron_model_slots_busy", "Sequences generating now", labels=["model"]
            ),
            "slots_total": GaugeMetricFamily(
                "neuron_model_slots", "Sequences the model decodes together", labels=["model"]
            ),
            "steps": CounterMetricFamily(
                "neuron_model_decode_steps", "Batched decodes run", labels=["model"]
            ),
            "batch": CounterMetricFamily(
                "neuron_model_batch_tokens",
                "Tokens in all batched decodes (divide by decode steps for the mean batch size)",
                labels=["model"],
            ),
            "prefill": CounterMetricFamily(
                "neuron_model_prefill_tokens", "Prompt tokens evaluated", labels=["model"]
            ),
            "decode": CounterMetricFamily(
                "neuron_model_decode_tokens", "Sampled tokens fed back", labels=["model"]
            ),
            "kv": GaugeMetricFamily(
                "neuron_model_kv_cells_used", "KV cells held (live and cached)", labels=["model"]
            ),
            "cache": GaugeMetricFamily(
                "neuron_model_prefix_cache_sequences",
                "Finished sequences kept for prefix reuse",
                labels=["model"],
            ),
            "parked": GaugeMetricFamily(
                "neuron_model_prefix_ram_entries",
                "Cached prefixes parked in host RAM",
                labels=["model"],
            ),
            "parked_bytes": GaugeMetricFamily(
                "neuron_model_prefix_ram_bytes",
                "Host RAM held by parked prefixes",
                labels=["model"],
            ),
            "restored": CounterMetricFamily(
                "neuron_model_prefix_restored_tokens",
                "Prompt tokens served from prefixes parked in host RAM",
                labels=["model"],
            ),
            "vram": GaugeMetricFamily(
                "neuron_model_vram_planned_bytes",
                "VRAM planned (offloaded layers)",
                labels=["model"],
            ),
        }
        for resident in self.manager.models.values():
            model = [resident.spec.model]
            families["in_flight"].add_metric(model, resident.gate.in_flight)
            families["queue"].add_metric(model, resident.gate.waiting)
            families["rejected"].add_metric(model, resident.gate.rejected)
            families["state"].add_metric([resident.spec.model, resident.state.value], 1)
            if resident.tok_s_decode is not None:
                families["tok_s"].add_metric(model, resident.tok_s_decode)
            if resident.load_duration_s is not None:
                families["load"].add_metric(model, resident.load_duration_s)
            engine = resident.engine
            if engine is not None and resident.state.value == "ready":
                stats = engine.stats()
                families["slots"].add_metric(model, stats.slots_busy)
                families["slots_total"].add_metric(model, stats.slots_total)
                families["steps"].add_metric(model, stats.decode_steps)
                families["batch"].add_metric(model, stats.batch_tokens)
                families["prefill"].add_metric(model, stats.prefill_tokens)
                families["decode"].add_metric(model, stats.decode_tokens)
                families["kv"].add_metric(model, stats.kv_cells_used)
                families["cache"].add_metric(model, stats.cache_sequences)
                families["parked"].add_metric(model, stats.parked_prefixes)
                families["parked_bytes"].add_metric(model, stats.parked_bytes)
                families["restored"].add_metric(model, stats.restored_tokens)
            if resident.placement is not None:
                families["estimate"].add_metric(model, resident.placement.estimate.host_mb * MIB)
                planned = sum(resident.placement.plan.device_mb.values())
                families["vram"].add_metric(model, planned * MIB)
        yield from families.values()
        total = GaugeMetricFamily("neuron_gpu_vram_total_bytes", "GPU memory", labels=["gpu"])
        used = GaugeMetricFamily("neuron_gpu_vram_used_bytes", "GPU memory used", labels=["gpu"])
        free = GaugeMetricFamily("neuron_gpu_vram_free_bytes", "GPU memory free", labels=["gpu"])
        util = GaugeMetricFamily("neuron_gpu_utilization_ratio", "GPU busy share", labels=["gpu"])
        temp = GaugeMetricFamily(
            "neuron_gpu_temperature_celsius", "GPU temperature", labels=["gpu"]
        )
        for status in self.probe.status():
            gpu = [str(status.index)]
            total.add_metric(gpu, status.vram_total_mb * MIB)
            used.add_metric(gpu, status.vram_used_mb * MIB)
            free.add_metric(gpu, status.vram_free_mb * MIB)
            if status.utilization_pct is not None:
                util.add_metric(gpu, status.utilization_pct / 100)
            if status.temp_c is not None:
                temp.add_metric(gpu, status.temp_c)
        yield from (total, used, free, util, temp)
