"""One access-log line format for both programs: ``METHOD ROUTE key=value …``.

`access_line` writes the fields in the order given; booleans read `yes`/`no`. Each program keeps
its own logger (`cortex.access`, `neuron.access`) and decides which fields it logs; the callers'
invariant is the same on both sides: route patterns, ids and counts only, never a prompt, a
token or a key. Pure: builds the text, writes nothing.
"""

from __future__ import annotations

__all__ = ["access_line"]


def access_line(method: str, route: str, **fields: object) -> str:
    """The line for one request; `fields` in the order they should appear."""
    parts = [method, route]
    for key, value in fields.items():
        if isinstance(value, bool):
            value = "yes" if value else "no"
        parts.append(f"{key}={value}")
    return " ".join(parts)
