"""The live, mutable holder of fleet state; everything else reads frozen snapshots from it.

Writers: the poller (what neurons report), the scheduler (loads, evictions, drains, pins) and
request handlers (cortex's own in-flight counts). Readers get `snapshot()`, a `FleetSnapshot`
rebuilt only when something changed. A replica's in-flight count in the snapshot is the larger
of the neuron's last report and cortex's own live count, so routing sees requests the moment
they start rather than at the next poll. No I/O here; events are kept for the admin API and
`cortex top`, and logged by whoever records them.
"""

from __future__ import annotations

import itertools
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from cortex.fleet.state import CatalogueEntry, FleetSnapshot, NodeState

EVENT_HISTORY = 200


@dataclass(frozen=True)
class FleetEvent:
    seq: int
    at: float
    kind: str  # load, load_failed, evict, unload, node_up, node_down, drain, pin, defrag, error
    message: str
    node: str | None = None
    model: str | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class FleetRegistry:
    def __init__(
        self,
        nodes: Iterable[NodeState],
        catalogue: Iterable[CatalogueEntry],
        aliases: dict[str, str],
        clock: Callable[[], float],
    ) -> None:
        self.clock = clock
        self._nodes: dict[str, NodeState] = {node.name: node for node in nodes}
        self._catalogue: dict[str, CatalogueEntry] = {entry.id: entry for entry in catalogue}
        self._aliases = dict(aliases)
        self._in_flight: Counter[tuple[str, str]] = Counter()
        self._snapshot: FleetSnapshot | None = None
        self.events: deque[FleetEvent] = deque(maxlen=EVENT_HISTORY)
        self._seq = itertools.count(1)

    # -- reading -----------------------------------------------------------------------------

    def snapshot(self) -> FleetSnapshot:
        if self._snapshot is None:
            self._snapshot = FleetSnapshot(
                nodes={name: self._with_live_counts(node) for name, node in self._nodes.items()},
                catalogue=dict(self._catalogue),
                aliases=dict(self._aliases),
            )
        return self._snapshot

    def node(self, name: str) -> NodeState:
        return self._nodes[name]

    def _with_live_counts(self, node: NodeState) -> NodeState:
        if not any(key[0] == node.name for key in self._in_flight):
            return node
        slots = tuple(
            replace(
                slot, in_flight=max(slot.in_flight, self._in_flight[(node.name, slot.model_id)])
            )
            for slot in node.models
        )
        return replace(node, models=slots)

    # -- writing -----------------------------------------------------------------------------

    def put_node(self, node: NodeState) -> None:
        self._nodes[node.name] = node
        self._snapshot = None

    def update_node(self, name: str, **changes: Any) -> NodeState:
        node = replace(self._nodes[name], **changes)
        self.put_node(node)
        return node

    def put_entry(self, entry: CatalogueEntry) -> None:
        self._catalogue[entry.id] = entry
        self._snapshot = None

    def request_started(self, node: str, model_id: str) -> None:
        self._in_flight[(node, model_id)] += 1
        self._snapshot = None

    def request_finished(self, node: str, model_id: str) -> None:
        key = (node, model_id)
        self._in_flight[key] -= 1
        if self._in_flight[key] <= 0:
            del self._in_flight[key]
        self._snapshot = None

    def record(
        self,
        kind: str,
        message: str,
        *,
        node: str | None = None,
        model: str | None = None,
        reason: str | None = None,
    ) -> FleetEvent:
        event = FleetEvent(next(self._seq), self.clock(), kind, message, node, model, reason)
        self.events.append(event)
        return event
