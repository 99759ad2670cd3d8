"""Small pure helpers shared by `cortex top`'s renderer (`view` and `panels`).

The `Doc` type (a decoded `/admin/fleet` document or part of one), cold loads read from it,
a colour per model, the spinner frame, and compact number/size/age formats.

Invariants:
* Pure: no I/O, no clock; the spinner frame and every age derive from the `now` passed in.
* Tolerant of older gateways: bare model ids in `loading` are read as loads with no node and no
  start; a missing number formats as "–".
* Colours are stable across nodes and frames: assigned over sorted model ids, never hash().
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
PALETTE = ("cyan", "magenta", "green", "yellow", "bright_blue", "bright_red", "orange3", "orchid")
Doc = Mapping[str, Any]


def loads(fleet: Doc) -> list[dict[str, Any]]:
    """Cold loads in progress as {model, node, since}; an older gateway sent bare model ids."""
    out: list[dict[str, Any]] = []
    for item in fleet.get("loading") or []:
        if isinstance(item, str):
            out.append({"model": item, "node": None, "since": None})
        elif isinstance(item, Mapping) and item.get("model") is not None:
            since = item.get("since")
            out.append(
                {
                    "model": str(item["model"]),
                    "node": item.get("node"),
                    "since": float(since) if isinstance(since, int | float) else None,
                }
            )
    return out


def colours(fleet: Doc) -> dict[str, str]:
    """A colour per model id, stable across nodes and frames (sorted ids, not hash())."""
    ids = {str(entry.get("id")) for entry in fleet.get("catalogue") or [] if entry.get("id")}
    for node in fleet.get("nodes") or []:
        ids.update(str(slot.get("model_id")) for slot in node.get("models") or [])
    return {model: PALETTE[i % len(PALETTE)] for i, model in enumerate(sorted(ids))}


def spinner(now: float) -> str:
    return SPINNER[int(now) % len(SPINNER)]


def fmt(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, int | float) else "–"


def mib(mb: float) -> str:
    return f"{mb / 1024:.1f}G" if mb >= 1024 else f"{mb:.0f}M"


def dur(seconds: float) -> str:
    """A compact age: 42s, 3m07s, 2h05m, 3d04h."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"
