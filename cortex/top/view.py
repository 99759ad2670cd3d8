"""`cortex top`'s screen as a pure function of one `/admin/fleet` document.

`render(fleet, width=, height=, error=, source=)` returns a rich renderable that never draws
more than `height` lines nor any line wider than `width`: every text is truncated (no wrap)
and the whole frame is finally cropped to `height`. No I/O, no clock: every age is measured
against the document's own `now`, and the spinner frame is derived from it too.

Layout, top to bottom:
* header (1 line, +1 red banner when `error` is set: the last fleet is then shown dimmed);
* node panels: as many side by side as fit at `PANEL_MIN_WIDTH` columns each, otherwise
  stacked. Each holds one VRAM bar per GPU ("CPU" for GPU-less nodes) and a table of its
  resident models plus cold loads heading there. When the panels are taller than the space,
  model rows are cut first ("+N more"); when even that does not fit, the nodes collapse into a
  compact one-line-per-node list;
* the event feed takes the remaining lines (newest at the bottom, like `tail -f`).

This module holds the frame (header, the split between panels and feed, the event feed and the
final crop); the node panels, their VRAM bars and the compact list are `cortex.top.panels`, the
small formatting helpers `cortex.top.common`. Fields that an older gateway does not send
(`stats`, `loading`) render as "–". The names callers and tests import (`render`, `bar_cells`,
`dur`, the bar characters, …) stay importable from here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.panel import Panel
from rich.segment import Segment
from rich.styled import Styled
from rich.table import Table
from rich.text import Text

from cortex.top.common import PALETTE, SPINNER, Doc, colours, dur, fmt, loads, mib, spinner
from cortex.top.panels import (
    FREE_CHAR,
    MODEL_CHARS,
    OTHER_CHAR,
    NodeView,
    _compact,
    _fit,
    _panel_row,
    _row_height,
    bar_cells,
)

__all__ = [
    "EVENT_STYLES",
    "FREE_CHAR",
    "MIN_EVENT_LINES",
    "MODEL_CHARS",
    "OTHER_CHAR",
    "PALETTE",
    "PANEL_MIN_WIDTH",
    "SPINNER",
    "Doc",
    "NodeView",
    "bar_cells",
    "colours",
    "dur",
    "events_panel",
    "fmt",
    "loads",
    "mib",
    "render",
    "spinner",
]

PANEL_MIN_WIDTH = 72
EVENT_STYLES = {
    "load": "green",
    "load_started": "cyan",
    "load_failed": "bold red",
    "evict": "yellow",
    "unload": "yellow",
    "node_up": "green",
    "node_down": "bold red",
    "cordon": "magenta",
    "uncordon": "magenta",
    "pin": "blue",
    "defrag": "magenta",
    "error": "bold red",
}
MIN_EVENT_LINES = 3  # the feed keeps at least this many lines before node panels are cut


def render(
    fleet: Doc | None,
    *,
    width: int,
    height: int,
    error: str | None = None,
    source: str = "",
) -> RenderableType:
    """The whole frame for a `width` × `height` screen; `fleet` None means no data yet."""
    width, height = max(20, width), max(1, height)
    parts: list[RenderableType] = [_header(fleet, width, source)]
    if error is not None:
        banner = f" disconnected — retrying: {error} "
        parts.append(Text(banner, style="bold white on red", no_wrap=True, overflow="ellipsis"))
    if fleet is None:
        parts.append(Text("waiting for the gateway…" if error is None else "", style="dim"))
        return _Fit(Group(*parts), width, height)
    body = _body(fleet, width, height - len(parts))
    parts.append(Styled(body, "dim") if error is not None else body)
    return _Fit(Group(*parts), width, height)


# -- header ------------------------------------------------------------------------------------


def _header(fleet: Doc | None, width: int, source: str) -> Text:
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append("cortex top", style="bold")
    if source and width >= 100:  # the address is the first thing to go on a narrow screen
        text.append(f"  {source}", style="dim")
    if fleet is not None:
        nodes = fleet.get("nodes") or []
        up = sum(1 for node in nodes if node.get("up"))
        style = "green" if up == len(nodes) and nodes else "bold red"
        text.append("  ")
        text.append(f"{up}/{len(nodes)} nodes", style=style)
        stats = value if isinstance(value := fleet.get("stats"), Mapping) else {}
        text.append(f"  {fmt(stats.get('requests_per_s'), '.1f')} req/s")
        text.append(f"  {fmt(stats.get('tokens_per_s'), '.0f')} tok/s")
        errors = stats.get("errors_per_s")
        text.append(f"  {fmt(errors, '.2f')} err/s", style="red" if errors else "")
        if stats.get("window_s"):
            text.append(f" ({fmt(stats['window_s'], '.0f')}s)", style="dim")
        now = float(fleet.get("now") or 0.0)
        nowhere = [load for load in loads(fleet) if load["node"] is None]
        for load in nowhere:
            since = load["since"]
            age = dur(now - since) if since is not None else "–"
            text.append(f"  {spinner(now)} {load['model']} {age}", style="yellow")
    hint = "  q quit"
    text.truncate(max(0, width - len(hint)), overflow="ellipsis", pad=True)
    text.append(hint, style="dim")
    return text


# -- body: node panels and the event feed ------------------------------------------------------


def _body(fleet: Doc, width: int, height: int) -> RenderableType:
    nodes: Sequence[Doc] = fleet.get("nodes") or []
    now = float(fleet.get("now") or 0.0)
    colour = colours(fleet)
    stats_models = _stats_models(fleet)
    if not nodes:
        note = Text("no neurons configured", style="dim", no_wrap=True)
        return Group(note, events_panel(fleet, width, height - 1, now))
    ncols = max(1, min(len(nodes), width // PANEL_MIN_WIDTH))
    inner = width // ncols - 4  # borders and panel padding
    views = [NodeView(node, fleet, now, colour, stats_models, inner) for node in nodes]
    rows = [views[i : i + ncols] for i in range(0, len(views), ncols)]
    room = height - (MIN_EVENT_LINES + 2 if fleet.get("events") else 0)
    if _fit(rows, room):
        used = sum(_row_height(row) for row in rows)
        grid_rows = [_panel_row(row, ncols) for row in rows]
        return Group(*grid_rows, events_panel(fleet, width, height - used, now))
    compact = _compact(views, width, max(1, room))
    return Group(compact, events_panel(fleet, width, height - len(compact.rows), now))


def _stats_models(fleet: Doc) -> Mapping[str, Doc]:
    stats = fleet.get("stats")
    models = stats.get("models") if isinstance(stats, Mapping) else None
    return models if isinstance(models, Mapping) else {}


class _Fit:
    """Renders its child at `width` and crops it to `height` lines: the frame never scrolls.

    Children get no height in their options, or every panel would stretch to the screen.
    """

    def __init__(self, renderable: RenderableType, width: int, height: int) -> None:
        self.renderable, self.width, self.height = renderable, width, height

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = min(options.max_width, self.width)
        child = options.update(width=width, height=None)
        lines = console.render_lines(self.renderable, child, pad=False)[: self.height]
        for line in lines:
            yield from line
            yield Segment.line()


# -- the event feed --------------------------------------------------------------------------


def events_panel(fleet: Doc, width: int, height: int, now: float) -> RenderableType:
    """The newest events that fit in `height` lines (border included), oldest first."""
    events = [e for e in fleet.get("events") or [] if isinstance(e, Mapping)]
    if height < 3:
        return Text("")
    lines = height - 2
    shown = events[-lines:]
    grid = Table.grid(expand=True, padding=(0, 1))
    grid.add_column(no_wrap=True, justify="right", width=6)
    grid.add_column(no_wrap=True, overflow="ellipsis", max_width=max(8, width // 5))
    grid.add_column(no_wrap=True, overflow="ellipsis", ratio=1)
    for event in shown:
        kind = str(event.get("kind", "?"))
        label = f"{kind}({event['reason']})" if event.get("reason") else kind
        at = event.get("at")
        age = "-" + dur(now - float(at)) if at is not None else "–"
        style = EVENT_STYLES.get(kind, "")
        grid.add_row(
            Text(age, style="dim"), Text(label, style=style), str(event.get("message", ""))
        )
    if not shown:
        grid.add_row("", Text("no events yet", style="dim"), "")
    title = Text(f" events ({len(events)}) ", style="bold")
    return Panel(grid, title=title, title_align="left", height=height, border_style="grey50")
