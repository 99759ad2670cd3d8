"""Pure views of the gateway's `/admin/fleet` document for the `cortex` CLI.

`status_view`, `model_rows` and `models_table` read only the document they are given (its
`now` stands for the current time), so they are tested without a gateway. Text that comes from
the fleet (model ids, node names) is printed literally, never as rich markup.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group, JustifyMethod
from rich.table import Table
from rich.text import Text

from cortex.fleet.state import offload_text

EVENTS_SHOWN = 8
NONE = "\u2013"  # en dash: "nowhere" / "unknown" in tables


def format_age(seconds: float | None) -> str:
    """A short duration: 42s, 3m05s, 2h10m, 4d03h; the dash when unknown."""
    if seconds is None:
        return NONE
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def model_rows(document: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model: the catalogue's in its order, then ids resident but not catalogued.

    `idle_s` is the shortest idle time over the ready replicas, measured against the document's
    own `now` (the gateway's clock), so the client's clock does not matter.
    """
    now = document.get("now") or 0.0
    up = {node["name"]: node.get("up", False) for node in document.get("nodes", [])}
    slots: dict[str, list[dict[str, Any]]] = {}
    for node in document.get("nodes", []):
        for slot in node.get("models", []):
            slots.setdefault(slot["model_id"], []).append(slot)
    catalogue = {entry["id"]: entry for entry in document.get("catalogue", [])}
    rows = []
    for model_id in [*catalogue, *(m for m in slots if m not in catalogue)]:
        where = []
        for slot in slots.get(model_id, []):
            since = slot.get("last_used_at") or slot.get("loaded_at")
            idle = now - since if since and slot.get("state") == "ready" else None
            where.append(
                {
                    "node": slot["node"],
                    "state": slot.get("state"),
                    "node_up": up.get(slot["node"], False),
                    "vram_used_mb": slot.get("vram_used_mb") or 0.0,
                    "idle_s": None if idle is None else max(0.0, idle),
                    "offload": offload_text(slot.get("n_gpu_layers"), slot.get("n_layers")),
                }
            )
        states = list(dict.fromkeys(w["state"] for w in where))
        idles = [w["idle_s"] for w in where if w["idle_s"] is not None]
        entry = catalogue.get(model_id, {})
        rows.append(
            {
                "id": model_id,
                "state": ", ".join(states) if states else "not loaded",
                "where": where,
                "vram_used_mb": sum(w["vram_used_mb"] for w in where) if where else None,
                "idle_s": min(idles) if idles else None,
                "pinned_on": list(entry.get("pinned_on") or []),
                "in_catalogue": model_id in catalogue,
            }
        )
    return rows


def models_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="Models", title_justify="left")
    table.add_column("Model", overflow="fold")
    table.add_column("Where", overflow="fold")
    table.add_column("State")
    table.add_column("VRAM (MiB)", justify="right")
    table.add_column("Idle", justify="right")
    table.add_column("Pinned", overflow="fold")
    for row in rows:
        where = ", ".join(
            f"{w['node']} {w['state']}"
            + (f" ({w['offload']})" if w.get("offload") and w["offload"] != "full offload" else "")
            + ("" if w["node_up"] else " (node down)")
            for w in row["where"]
        )
        vram = row["vram_used_mb"]
        table.add_row(
            # Text, not str: ids and node names are data, never rich markup.
            Text(row["id"] + ("" if row["in_catalogue"] else " (not in catalogue)")),
            Text(where or NONE),
            Text(row["state"]),
            NONE if vram is None else f"{vram:,.0f}",
            format_age(row["idle_s"]),
            Text(", ".join(row["pinned_on"])),
        )
    return table


def status_view(document: dict[str, Any], url: str) -> Group:
    """The fleet summary: a header line, the nodes table, loads in progress, recent events."""
    nodes = document.get("nodes", [])
    now = document.get("now") or 0.0
    resident = sum(len(node.get("models", [])) for node in nodes)
    header = Text(
        f"{url}: {sum(1 for n in nodes if n.get('up'))}/{len(nodes)} nodes up, "
        f"{resident} models resident, {len(document.get('catalogue', []))} catalogued"
    )
    table = Table(title="Nodes", title_justify="left")
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("Node", "left"),
        ("State", "left"),
        ("Cordoned", "left"),
    )
    for name, justify in columns:
        table.add_column(name, justify=justify, overflow="fold")
    table.add_column("Backend")
    table.add_column("GPUs (VRAM used / total MiB)", overflow="fold")
    table.add_column("Models", justify="right")
    for node in nodes:
        cordoned = "yes" if node.get("cordoned") else "no"
        if node.get("draining"):
            cordoned += " (neuron draining)"
        gpus = [
            f"{gpu.get('index')} {gpu.get('name')}: "
            f"{gpu['vram_total_mb'] - gpu['vram_free_mb']:,.0f} / {gpu['vram_total_mb']:,.0f}"
            for gpu in node.get("gpus", [])
        ]
        table.add_row(
            Text(node["name"]),
            "up" if node.get("up") else "down",
            cordoned,
            Text(node.get("backend") or NONE),
            Text("\n".join(gpus) or "none"),
            str(len(node.get("models", []))),
        )
    loading = document.get("loading") or []
    parts: list[Any] = [header, table, Text(f"Loading: {', '.join(loading) or 'nothing'}")]
    events = document.get("events", [])[-EVENTS_SHOWN:]
    if events:
        feed = Table(title="Recent events", title_justify="left", box=None, show_header=False)
        feed.add_column(justify="right", style="dim")
        feed.add_column()
        feed.add_column(overflow="fold")
        for event in reversed(events):
            age = format_age(now - event["at"]) + " ago" if "at" in event else NONE
            feed.add_row(age, Text(event.get("kind", "")), Text(event.get("message", "")))
        parts.append(feed)
    return Group(*parts)
