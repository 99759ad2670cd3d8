"""No text a neuron reports can make the gateway's /metrics fail, and labels stay bounded."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from cortex.control.registry import FleetRegistry
from cortex.fleet.state import CatalogueEntry, ModelSlot, NodeState
from cortex.metrics import MAX_LABEL, GatewayMetrics, RequestObserver, label

ODD_IDS = ["odd\ud800", "\udfff", "nul\x00id", "tab\tnew\nline", "bidi\u202eevil", "x" * 1000]


@pytest.mark.parametrize("value", ODD_IDS)
def test_label_is_always_encodable_and_bounded(value: str) -> None:
    text = label(value)
    text.encode("utf-8")  # would raise on a lone surrogate
    assert text.isprintable() and len(text) <= MAX_LABEL


@pytest.mark.parametrize("value", ["smol", "org/Qwen2.5-7B:Q4_K_M", "modèle-été", "a b"])
def test_ordinary_ids_are_labels_as_they_are(value: str) -> None:
    assert label(value) == value


def test_non_text_becomes_text() -> None:
    assert label(404) == "404" and label(None) == "None"


def test_metrics_render_with_odd_resident_ids_states_and_error_codes() -> None:
    slots = tuple(
        ModelSlot(model_id=model_id, node="n", state="ready\ud800", estimate_mb=1.0)
        for model_id in ODD_IDS
    )
    registry = FleetRegistry(
        [NodeState(name="n", endpoint="http://n", up=True, models=slots)],
        [CatalogueEntry(id="smol")],
        {},
        clock=lambda: 0.0,
    )
    metrics = GatewayMetrics()
    metrics.watch_fleet(registry)
    observer = RequestObserver(
        metrics, dialect="openai", endpoint="chat", known_model=lambda name: name
    )
    observer.requested("odd\ud800")
    observer.placed("n", "\udfff", cold_wait_s=1.0)
    observer.finish(502, "code\ud800")
    metrics.on_scheduler_event("load_failed", {"model": "bad\ud800", "node": "n"})
    metrics.on_scheduler_event("single_flight_join", {"model": "x" * 1000})
    text = generate_latest(metrics.registry).decode()
    assert 'cortex_model_resident{model="odd_",node="n",state="ready_"} 1.0' in text
    assert 'code="code_"' in text and 'model="bad_"' in text
    assert max(len(line) for line in text.splitlines()) < 2 * MAX_LABEL + 200
