"""`cortex top`'s pure renderer against snapshot documents, read back as plain screen text."""

from __future__ import annotations

import copy
import io
from typing import Any

import pytest
from rich.cells import cell_len
from rich.console import Console

from cortex.top.panels import kv_share
from cortex.top.view import FREE_CHAR, MODEL_CHARS, OTHER_CHAR, bar_cells, dur, render

NOW = 1_700_000_000.0
SIZES = [(80, 24), (100, 30), (120, 40), (160, 50), (240, 70)]
BAR = MODEL_CHARS[0]


def slot(model: str, node: str, vram: float, **changes: Any) -> dict[str, Any]:
    body = {
        "model_id": model,
        "node": node,
        "state": "ready",
        "in_flight": 0,
        "queue_depth": 0,
        "max_in_flight": 1,
        "max_queue_depth": 8,
        "last_used_at": NOW - 75,
        "loaded_at": NOW - 600,
        "vram_used_mb": vram,
        "ram_used_mb": 120.0,
        "estimate_mb": vram,
        "n_gpu_layers": 30,
        "n_layers": 30,
        "tok_s_decode": 88.4,
        "error": None,
    }
    return {**body, **changes}


def gpu(index: int, total: float, free: float) -> dict[str, Any]:
    return {
        "index": index,
        "name": f"GPU {index}",
        "vram_total_mb": total,
        "vram_free_mb": free,
        "utilization_pct": 37.0,
        "temp_c": 61.0,
    }


def node(name: str, gpus: list[dict], models: list[dict], **changes: Any) -> dict[str, Any]:
    body = {
        "name": name,
        "endpoint": f"http://{name}:13131",
        "up": True,
        "draining": False,
        "cordoned": False,
        "hostname": f"host-{name}",
        "backend": "cuda" if gpus else "cpu",
        "gpus": gpus,
        "models": models,
        "last_seen": NOW - 0.5,
        "misses": 0,
        "evictions_since_defrag": 0,
        "vram_total_mb": sum(g["vram_total_mb"] for g in gpus),
        "vram_free_mb": sum(g["vram_free_mb"] for g in gpus),
    }
    return {**body, **changes}


def event(seq: int, kind: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"seq": seq, "at": NOW - 100 + seq, "kind": kind, "message": message, **extra}


def fleet(**changes: Any) -> dict[str, Any]:
    """Two GPU nodes (one with two GPUs), a CPU node, one cold load, stats and some events."""
    body = {
        "now": NOW,
        "nodes": [
            node(
                "alpha",
                [gpu(0, 24576, 10000)],
                [
                    slot("llama-8b", "alpha", 9000, in_flight=2, queue_depth=3),
                    slot("smol", "alpha", 213),
                ],
            ),
            node(
                "beta",
                [gpu(0, 12288, 4000), gpu(1, 12288, 6000)],
                [slot("qwen-14b", "beta", 12000)],
            ),
            node("cpubox", [], [slot("tiny", "cpubox", 0, ram_used_mb=300)]),
        ],
        "catalogue": [],
        "aliases": {},
        "loading": [{"model": "phi-3", "node": "beta", "since": NOW - 12}],
        "stats": {
            "window_s": 60,
            "requests_per_s": 3.4,
            "tokens_per_s": 512.3,
            "errors_per_s": 0.0,
            "models": {
                "llama-8b": {
                    "requests_per_s": 2.1,
                    "tokens_per_s": 400.0,
                    "ttft_p50_s": 0.12,
                    "ttft_p95_s": 0.87,
                }
            },
        },
        "events": [
            event(1, "node_up", "alpha is up", node="alpha"),
            event(2, "load", "loaded smol on alpha in 2.1s", node="alpha", model="smol"),
            event(
                3, "evict", "evicted gemma from beta (lru, 759 MiB)", reason="lru", model="gemma"
            ),
            event(4, "load_started", "loading phi-3 on beta", node="beta", model="phi-3"),
        ],
    }
    return {**body, **changes}


def screen(doc: dict[str, Any] | None, width: int, height: int, **kw: Any) -> list[str]:
    console = Console(record=True, width=width, height=height, file=io.StringIO())
    console.print(render(doc, width=width, height=height, **kw))
    return console.export_text().splitlines()


def assert_fits(lines: list[str], width: int, height: int) -> None:
    assert len(lines) <= height, f"{len(lines)} lines on a {height}-line screen"
    too_wide = [line for line in lines if cell_len(line) > width]
    assert not too_wide, f"lines wider than {width}: {too_wide}"


def many_models() -> dict[str, Any]:
    models = [slot(f"model-{i:02d}", "alpha", 300) for i in range(30)]
    return fleet(nodes=[node("alpha", [gpu(0, 24576, 10000)], models)])


def many_nodes() -> dict[str, Any]:
    nodes = [
        node(f"n{i:02d}", [gpu(0, 8192, 4096)], [slot("smol", f"n{i:02d}", 213)]) for i in range(40)
    ]
    return fleet(nodes=nodes)


def many_events() -> dict[str, Any]:
    return fleet(events=[event(i, "load", f"loaded m{i} on alpha") for i in range(1, 201)])


DOCS = {
    "fleet": fleet(),
    "none": None,
    "no nodes": fleet(nodes=[], events=[]),
    "many models": many_models(),
    "many nodes": many_nodes(),
    "many events": many_events(),
    "older gateway": {k: v for k, v in fleet().items() if k not in ("stats", "loading")},
    "long names": fleet(
        nodes=[node("n" * 150, [gpu(0, 8192, 0)], [slot("m" * 200, "n" * 150, 8000)])],
        events=[event(1, "evict", "x" * 500, reason="r" * 80)],
    ),
}


@pytest.mark.parametrize(("width", "height"), SIZES)
@pytest.mark.parametrize("name", DOCS)
@pytest.mark.parametrize("error", [None, "cannot connect · last update 12s ago"])
def test_never_exceeds_the_screen(name: str, width: int, height: int, error: str | None) -> None:
    assert_fits(screen(DOCS[name], width, height, error=error), width, height)


@pytest.mark.parametrize(("width", "height"), [(80, 24), (160, 50)])
def test_shows_nodes_models_bars_and_events(width: int, height: int) -> None:
    text = "\n".join(screen(fleet(), width, height, source="http://gw:31313"))
    for name in ("alpha", "beta", "cpubox", "llama-8b", "smol", "qwen-14b", "tiny", "phi-3"):
        assert name in text
    assert BAR in text and FREE_CHAR in text
    assert "GPU0" in text and "GPU1" in text
    assert "3/3 nodes" in text and "3.4 req/s" in text and "512 tok/s" in text
    assert "evict(lru)" in text and "evicted gemma from beta" in text
    assert "loaded smol on alpha" in text


def test_wide_screen_puts_node_panels_side_by_side() -> None:
    lines = screen(fleet(), 160, 50)
    assert any("alpha" in line and "beta" in line for line in lines)
    narrow = screen(fleet(), 80, 24)
    assert not any("alpha" in line and "beta" in line for line in narrow)


def test_model_table_columns() -> None:
    text = "\n".join(screen(fleet(), 160, 50))
    llama = next(line for line in text.splitlines() if "llama-8b" in line)
    assert "2/3" in llama and "0.12/0.87" in llama and "busy" in llama and "88.4" in llama
    smol = next(line for line in text.splitlines() if "■ smol" in line)
    assert "1m15s" in smol  # idle since last_used_at, measured against the document's now
    phi = next(line for line in text.splitlines() if "phi-3" in line)
    assert "load 12s" in phi  # a cold load heading to beta, elapsed from loading[].since


def test_wide_model_tables_show_the_kv_pool_and_parked_prefixes() -> None:
    engine = {"kv_cells_used": 3793, "kv_cells_total": 16384, "parked_mb": 69.1}
    doc = fleet(
        nodes=[
            node(
                "alpha",
                [gpu(0, 24576, 10000)],
                [slot("llama-8b", "alpha", 9000, **engine), slot("smol", "alpha", 213)],
            )
        ]
    )
    lines = screen(doc, 240, 50)
    header = next(line for line in lines if "tok/s" in line and "idle" in line)
    assert "KV" in header and "parked" in header
    llama = next(line for line in lines if "llama-8b" in line and "23%" in line)
    assert "69M" in llama
    smol = next(line for line in lines if "■ smol" in line)  # an older neuron says neither
    assert "23%" not in smol and "69M" not in smol
    narrow = screen(doc, 80, 24)
    assert not any("parked" in line for line in narrow)  # the first columns to go


@pytest.mark.parametrize(
    ("used", "total", "text"),
    [
        (3793, 16384, "23%"),
        (0, 16384, "0%"),
        (16384, 16384, "100%"),
        (None, 16384, "–"),
        (5, 0, "–"),
        (5, None, "–"),
    ],
)
def test_kv_share(used: int | None, total: int | None, text: str) -> None:
    assert kv_share(used, total) == text


def test_vram_bar_segments_show_who_uses_the_memory() -> None:
    line = next(line for line in screen(fleet(), 160, 50) if "GPU0" in line and "24.0G" in line)
    # llama-8b then smol (sorted), alternating characters, then other use, then free
    bar = line[line.index("GPU0") + 5 :].split(" ")[0]
    assert bar.startswith(BAR) and MODEL_CHARS[1] in bar and OTHER_CHAR in bar
    assert bar.endswith(FREE_CHAR)
    used = sum(bar.count(c) for c in (*MODEL_CHARS, OTHER_CHAR))
    assert used / len(bar) == pytest.approx((24576 - 10000) / 24576, abs=0.05)


def test_cpu_node_shows_cpu_instead_of_bars() -> None:
    doc = fleet(nodes=[node("cpubox", [], [slot("tiny", "cpubox", 0, ram_used_mb=300)])])
    text = "\n".join(screen(doc, 80, 24))
    assert "CPU" in text and "300M" in text
    assert BAR not in text and FREE_CHAR not in text


def test_down_and_cordoned_nodes_are_marked() -> None:
    doc = fleet(
        nodes=[
            node("gone", [gpu(0, 8192, 8192)], [], up=False, misses=7, last_seen=NOW - 95),
            node("busy", [gpu(0, 8192, 8192)], [], draining=True),
            node("held", [gpu(0, 8192, 8192)], [], cordoned=True),
        ]
    )
    text = "\n".join(screen(doc, 120, 40))
    assert "gone DOWN" in text and "last seen 1m35s" in text and "misses 7" in text
    assert "busy DRAINING" in text and "held CORDONED" in text
    assert "2/3 nodes" in text  # cordoned nodes are still up


@pytest.mark.parametrize(("width", "height"), [(80, 24), (160, 50)])
def test_disconnected_banner_keeps_the_last_fleet(width: int, height: int) -> None:
    text = "\n".join(screen(fleet(), width, height, error="cannot connect"))
    assert "disconnected — retrying: cannot connect" in text
    assert "alpha" in text and "llama-8b" in text
    lines = screen(None, width, height, error="cannot connect")
    assert "disconnected — retrying" in "\n".join(lines)
    assert "waiting" in "\n".join(screen(None, width, height))


def test_many_models_are_cut_with_a_count() -> None:
    lines = screen(many_models(), 80, 24)
    text = "\n".join(lines)
    assert "model-00" in text and "model-29" not in text
    assert "more" in text


def test_many_nodes_collapse_to_one_line_each() -> None:
    lines = screen(many_nodes(), 80, 24)
    text = "\n".join(lines)
    assert "n00" in text and "more nodes" in text
    assert sum(1 for line in lines if BAR in line) > 5  # compact rows still carry a bar


def test_event_feed_shows_the_newest_that_fit() -> None:
    lines = screen(many_events(), 80, 24)
    text = "\n".join(lines)
    assert "loaded m200 on alpha" in text and "loaded m1 on alpha" not in text
    feed = [line for line in lines if "loaded m" in line]
    assert feed == sorted(feed, key=lambda line: int(line.split("loaded m")[1].split()[0]))
    assert "events (200)" in text


def test_missing_stats_and_loading_render_dashes() -> None:
    doc = DOCS["older gateway"]
    text = "\n".join(screen(doc, 160, 50))
    assert "– req/s" in text and "– tok/s" in text and "– err/s" in text
    assert "llama-8b" in text


def test_loads_without_a_node_and_the_old_id_list_show_in_the_header() -> None:
    header = screen(fleet(loading=[{"model": "gemma", "node": None, "since": NOW - 3}]), 120, 40)[0]
    assert "gemma 3s" in header
    assert "gemma –" in screen(fleet(loading=["gemma"]), 120, 40)[0]


def test_render_is_pure() -> None:
    doc = fleet()
    before = copy.deepcopy(doc)
    assert screen(doc, 120, 40) == screen(doc, 120, 40)
    assert doc == before


@pytest.mark.parametrize(
    ("parts", "total", "width", "expected"),
    [
        ([50, 25, 0], 100, 20, [10, 5, 0]),
        ([1, 0, 0], 1000, 10, [1, 0, 0]),  # tiny but present: one cell
        ([100, 100], 100, 10, [10, 0]),  # over-reporting never spills past the bar
        ([10], 0, 10, [0]),
    ],
)
def test_bar_cells(parts: list[float], total: float, width: int, expected: list[int]) -> None:
    assert bar_cells(parts, total, width) == expected


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (42.9, "42s"), (187, "3m07s"), (7500, "2h05m"), (273600, "3d04h"), (-5, "0s")],
)
def test_durations(seconds: float, text: str) -> None:
    assert dur(seconds) == text


def test_rounding_between_model_and_gpu_figures_is_not_drawn_as_other_use() -> None:
    # 9213 MiB attributed to models; the GPU reports 1 MiB more in use (figures are rounded)
    doc = fleet()
    doc["nodes"][0] = node(
        "alpha",
        [gpu(0, 24576, 24576 - 9214)],
        [slot("llama-8b", "alpha", 9000), slot("smol", "alpha", 213)],
    )
    line = next(line for line in screen(doc, 160, 50) if "GPU0" in line and "24.0G" in line)
    bar = line[line.index("GPU0") + 5 :].split(" ")[0]
    assert OTHER_CHAR not in bar and bar.endswith(FREE_CHAR)
