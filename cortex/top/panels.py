"""`cortex top`'s node panels: VRAM bars, the models table, and how they fit the screen.

`NodeView` is one node's panel, sized on demand; `_fit` caps each panel's model rows so the
rows of panels fit the space `view` gives them, `_panel_row` lays a row out side by side, and
`_compact` is the one-line-per-node list used when even capped panels do not fit.

Each panel holds one VRAM bar per GPU ("CPU" for GPU-less nodes, one "unreachable" line for a
down node) and a table of its resident models plus cold loads heading there. When the panels
are taller than the space, model rows are cut first ("+N more", or a one-line summary); earlier
nodes get their full table first. The table drops its least telling columns as it narrows.

VRAM bars say who uses the memory: one segment per resident model (its `vram_used_mb`) in the
model's colour and alternating `█`/`▓` so neighbours stay apart without colour, then `▒` for
memory used by anything else, then `░` free. Neurons report a model's VRAM as one total, not
per device, so on a multi-GPU node each model's share is split across the GPUs in proportion
to the VRAM each GPU has in use (what llama.cpp's tensor split produced); a single GPU gets it
all.

Invariants:
* Pure: no I/O, no clock; ages are measured against the `now` passed in.
* `NodeView.height(cap)` is the number of lines its panel takes with model lines capped at
  `cap`; `_fit` sizes on it alone. Every text is truncated (no wrap), so a line never grows.
* `bar_cells` gives each part its cells in order, summing to at most `width`; a non-zero part
  gets at least one cell (a small model still shows).
* Fields an older gateway does not send render as "–".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from cortex.top.common import Doc, dur, fmt, loads, mib, spinner

MODEL_CHARS = ("█", "▓")  # alternate per model so neighbouring segments differ without colour
OTHER_CHAR = "▒"  # VRAM in use by something that is not a resident model
FREE_CHAR = "░"
OTHER_NOISE_MB = 8.0  # VRAM not attributed to a model below this is rounding, not a user


def _fit(rows: list[list[NodeView]], room: int) -> bool:
    """Set each panel's `cap` (model lines) so all rows fit in `room`; False if they cannot.

    Earlier nodes get their full table first; a panel beside a taller one in its row then
    takes the lines it is given anyway.
    """
    views = [view for row in rows for view in row]
    for view in views:
        view.cap = 1
    if sum(_row_height(row) for row in rows) > room:
        return False
    for view in views:
        for cap in range(view.model_lines(), 1, -1):
            view.cap = cap
            if sum(_row_height(row) for row in rows) <= room:
                break
        else:
            view.cap = 1
    for row in rows:
        height = _row_height(row)
        for view in row:
            fits = [c for c in range(view.model_lines(), 0, -1) if view.height(c) <= height]
            view.cap = fits[0] if fits else view.cap
    return True


def _row_height(row: list[NodeView]) -> int:
    return max(view.height(view.cap) for view in row)


def _panel_row(row: list[NodeView], ncols: int) -> RenderableType:
    height = _row_height(row)
    grid = Table.grid(expand=True)
    for _ in range(ncols):
        grid.add_column(ratio=1, no_wrap=True)
    panels: list[RenderableType] = [view.panel(height) for view in row]
    grid.add_row(*panels, *([""] * (ncols - len(row))))
    return grid


def _compact(views: list[NodeView], width: int, room: int) -> Table:
    """One line per node when the panels do not fit: name, state, node VRAM bar, models."""
    table = Table(box=None, pad_edge=False, expand=True, show_header=False, padding=(0, 1))
    table.add_column(no_wrap=True, overflow="ellipsis", max_width=max(8, width // 5))
    table.add_column(no_wrap=True, width=min(24, max(8, width // 4)))
    table.add_column(no_wrap=True, overflow="ellipsis", ratio=1)
    shown = views if len(views) <= room else views[: max(0, room - 1)]
    for view in shown:
        table.add_row(
            view.title(where=False), view.node_bar(min(24, max(8, width // 4))), view.names()
        )
    if len(shown) < len(views):
        table.add_row(Text(f"+{len(views) - len(shown)} more nodes", style="dim"), "", "")
    return table


class NodeView:
    """One node's panel, sized on demand: `height(cap)` lines when model rows are capped."""

    def __init__(
        self,
        node: Doc,
        fleet: Doc,
        now: float,
        colour: Mapping[str, str],
        stats_models: Mapping[str, Doc],
        inner: int,
    ) -> None:
        self.node, self.now, self.colour, self.stats = node, now, colour, stats_models
        self.inner = max(10, inner)
        self.gpus: Sequence[Doc] = node.get("gpus") or []
        slots = sorted(node.get("models") or [], key=lambda slot: str(slot.get("model_id")))
        self.slots: list[Doc] = slots
        here = {str(slot.get("model_id")) for slot in slots}
        mine = [load for load in loads(fleet) if load["node"] == node.get("name")]
        self.loading = {load["model"]: load for load in mine}
        self.pending = [load for load in mine if load["model"] not in here]
        self.cap = self.model_lines()  # model lines this panel may use; `_fit` lowers it

    def status_lines(self) -> int:
        return max(1, len(self.gpus)) if self.node.get("up") else 1

    def model_lines(self) -> int:
        rows = len(self.slots) + len(self.pending)
        if not rows:
            return 1 if self.node.get("up") else 0  # a down node says so and nothing more
        return 1 + rows

    def height(self, cap: int) -> int:
        return 2 + self.status_lines() + self.capped_lines(cap)

    def capped_lines(self, cap: int) -> int:
        """Lines the models take under `cap`: all, or header + rows + "+N more", or a summary."""
        natural = self.model_lines()
        if cap >= natural:
            return natural
        return cap if cap >= 3 else min(1, natural)  # a header over "+N more" says nothing

    def title(self, where: bool = True) -> Text:
        """Name and state, plus hostname and backend unless `where` is False (compact rows)."""
        node = self.node
        title = Text(no_wrap=True, overflow="ellipsis")
        title.append(f" {node.get('name', '?')} ", style="bold")
        if not node.get("up"):
            title.append("DOWN", style="bold red")
        elif node.get("draining"):
            title.append("DRAINING", style="bold yellow")
        elif node.get("cordoned"):
            title.append("CORDONED", style="bold yellow")
        else:
            title.append("up", style="green")
        host = " · ".join(str(v) for v in (node.get("hostname"), node.get("backend")) if v)
        if host and where:
            title.append(f" {host} ", style="dim")
        return title

    def names(self) -> Text:
        text = Text(no_wrap=True, overflow="ellipsis")
        for slot in self.slots:
            model = str(slot.get("model_id"))
            text.append("■ ", style=self.colour.get(model, "white"))
            text.append(f"{model} ")
        for load in self.pending:
            text.append(f"{spinner(self.now)} {load['model']} ", style="yellow")
        return text

    def panel(self, height: int) -> Panel:
        lines: list[RenderableType] = []
        if not self.node.get("up"):
            seen = self.node.get("last_seen")
            ago = dur(self.now - seen) if seen else "never"
            lines.append(
                Text(
                    f"unreachable · last seen {ago} · misses {self.node.get('misses', 0)}",
                    style="red",
                    no_wrap=True,
                    overflow="ellipsis",
                )
            )
        elif self.gpus:
            lines.extend(self._gpu_line(gpu) for gpu in self.gpus)
        else:
            ram = sum(float(slot.get("ram_used_mb") or 0) for slot in self.slots)
            lines.append(
                Text(f"CPU  no GPUs · models use {mib(ram)} RAM", no_wrap=True, overflow="ellipsis")
            )
        if self.model_lines():
            lines.append(self._models(self.cap))
        border = "red" if not self.node.get("up") else "blue"
        return Panel(
            Group(*lines),
            title=self.title(),
            title_align="left",
            height=height,
            border_style=border,
            padding=(0, 1),
        )

    # -- VRAM bars --

    def _shares(self, gpu: Doc) -> list[tuple[str, float]]:
        """Each resident model's MiB on this GPU (see the module docstring for the split)."""
        used = [
            max(0.0, float(g.get("vram_total_mb") or 0) - float(g.get("vram_free_mb") or 0))
            for g in self.gpus
        ]
        totals = [float(g.get("vram_total_mb") or 0) for g in self.gpus]
        weights = used if sum(used) > 0 else totals
        i = list(self.gpus).index(gpu)
        part = weights[i] / sum(weights) if sum(weights) > 0 else 0.0
        return [
            (str(s.get("model_id")), float(s.get("vram_used_mb") or 0) * part) for s in self.slots
        ]

    def _gpu_line(self, gpu: Doc) -> Text:
        total = float(gpu.get("vram_total_mb") or 0)
        used = max(0.0, total - float(gpu.get("vram_free_mb") or 0))
        label = f"GPU{gpu.get('index', '?')} "
        right = f" {mib(used)}/{mib(total)}"
        extra = ""
        if isinstance(gpu.get("utilization_pct"), int | float):
            extra += f" {gpu['utilization_pct']:.0f}%"
        if isinstance(gpu.get("temp_c"), int | float):
            extra += f" {gpu['temp_c']:.0f}°C"
        if self.inner - len(label) - len(right) - len(extra) >= 12:
            right += extra
        bar_width = max(4, self.inner - len(label) - len(right))
        line = Text(label, no_wrap=True, overflow="ellipsis", style="bold")
        line.append_text(self._bar(self._shares(gpu), used, total, bar_width))
        line.append(right)
        return line

    def node_bar(self, width: int) -> Text:
        total = sum(float(g.get("vram_total_mb") or 0) for g in self.gpus)
        if not self.gpus:
            return Text("CPU", style="dim")
        used = total - sum(float(g.get("vram_free_mb") or 0) for g in self.gpus)
        shares = [(str(s.get("model_id")), float(s.get("vram_used_mb") or 0)) for s in self.slots]
        return self._bar(shares, used, total, width)

    def _bar(self, shares: list[tuple[str, float]], used: float, total: float, width: int) -> Text:
        parts = [mb for _, mb in shares]
        other = used - sum(parts)
        if other < OTHER_NOISE_MB:  # per-model figures are rounded: a few MiB is not a user
            other = 0.0
        cells = bar_cells([*parts, other], total, width)
        bar = Text(no_wrap=True, overflow="crop")
        for i, ((model, _), n) in enumerate(zip(shares, cells, strict=False)):
            bar.append(MODEL_CHARS[i % 2] * n, style=self.colour.get(model, "white"))
        bar.append(OTHER_CHAR * cells[-1], style="grey50")
        bar.append(FREE_CHAR * max(0, width - sum(cells)), style="grey23")
        return bar

    # -- the models table --

    def _models(self, cap: int) -> RenderableType:
        rows = self._rows()
        if not rows:
            return Text("no models resident", style="dim", no_wrap=True)
        if self.capped_lines(cap) == 1:
            summary = f"{len(rows)} model(s): " + ", ".join(model for model, _, _ in rows)
            return Text(summary, no_wrap=True, overflow="ellipsis", style="dim")
        table = Table(
            box=None, pad_edge=False, expand=True, padding=(0, 1), header_style="bold dim"
        )
        columns = self._columns()
        for column in columns:
            if column == "model":
                table.add_column(column, ratio=1, no_wrap=True, overflow="ellipsis", min_width=8)
            else:
                table.add_column(column, no_wrap=True, overflow="ellipsis", justify="right")
        shown = rows if len(rows) <= cap - 1 else rows[: max(0, cap - 2)]
        for row in shown:
            cells = self._cells(*row)
            table.add_row(*(cells[column] for column in columns))
        if len(shown) < len(rows):
            table.add_row(Text(f"+{len(rows) - len(shown)} more", style="dim"))
        return table

    def _columns(self) -> list[str]:
        """The table's columns; the least telling ones go first as the panel narrows."""
        columns = ["model", "state", "in/q", "tok/s"]
        if self.inner >= 56:
            columns.append("ttft p50/95")
        if self.inner >= 66:
            columns.append("VRAM" if self.gpus else "RAM")
        if self.inner >= 80:
            columns.append("req/s")
        if self.inner >= 90:
            columns.append("KV")  # the share of the model's KV pool in use
        if self.inner >= 100:
            columns.append("parked")  # host RAM holding prefixes moved out of the pool
        return [*columns, "idle"]

    def _rows(self) -> list[tuple[str, Doc | None, Doc | None]]:
        """(model, slot or None, cold load or None): resident models, then loads heading here."""
        rows: list[tuple[str, Doc | None, Doc | None]] = [
            (str(slot.get("model_id")), slot, self.loading.get(str(slot.get("model_id"))))
            for slot in self.slots
        ]
        return rows + [(load["model"], None, load) for load in self.pending]

    def _cells(self, model: str, slot: Doc | None, load: Doc | None) -> dict[str, Any]:
        slot = slot or {}
        state = str(slot.get("state") or "loading")
        if load is not None or state == "loading":
            since = load.get("since") if load else None
            age = dur(self.now - since) if since is not None else ""
            state_cell = Text(f"{spinner(self.now)} load {age}".rstrip(), style="yellow")
        else:
            style = {"ready": "green", "failed": "bold red"}.get(state, "yellow")
            state_cell = Text(state, style=style)
        stats = self.stats.get(model) or {}
        p50, p95 = stats.get("ttft_p50_s"), stats.get("ttft_p95_s")
        mem = slot.get("vram_used_mb") if self.gpus else slot.get("ram_used_mb")
        parked = slot.get("parked_mb")
        if not slot:
            idle = "–"
        elif slot.get("in_flight") or slot.get("queue_depth"):
            idle = "busy"
        else:
            since = slot.get("last_used_at") or slot.get("loaded_at")
            idle = dur(self.now - since) if since else "–"
        name = Text("■ ", style=self.colour.get(model, "yellow")).append(model, style="")
        return {
            "model": name,
            "state": state_cell,
            "in/q": f"{slot.get('in_flight', 0)}/{slot.get('queue_depth', 0)}" if slot else "–",
            "tok/s": fmt(slot.get("tok_s_decode"), ".1f"),
            "ttft p50/95": "–"
            if p50 is None and p95 is None
            else f"{fmt(p50, '.2f')}/{fmt(p95, '.2f')}",
            "VRAM": mib(mem) if isinstance(mem, int | float) else "–",
            "RAM": mib(mem) if isinstance(mem, int | float) else "–",
            "req/s": fmt(stats.get("requests_per_s"), ".2f"),
            "KV": kv_share(slot.get("kv_cells_used"), slot.get("kv_cells_total")),
            "parked": mib(parked) if isinstance(parked, int | float) else "–",
            "idle": idle,
        }


def kv_share(used: Any, total: Any) -> str:
    """`37%` of the KV pool's cells in use; a dash when the neuron does not say."""
    if not isinstance(used, int) or not isinstance(total, int) or total <= 0:
        return "–"
    return f"{round(100 * used / total)}%"


def bar_cells(parts: Sequence[float], total: float, width: int) -> list[int]:
    """Cells per part, in order, summing to at most `width`; non-zero parts get ≥ 1 cell."""
    cells: list[int] = []
    if total <= 0:
        return [0] * len(parts)
    cum, taken = 0.0, 0
    for mb in parts:
        cum += max(0.0, mb)
        n = max(0, min(width, round(cum / total * width)) - taken)
        if mb > 0 and n == 0 and taken < width:
            n = 1  # a small model still shows: it is who uses the memory that matters here
        cells.append(n)
        taken += n
    return cells
