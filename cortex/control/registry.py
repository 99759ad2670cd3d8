"""The live, mutable holder of fleet state; everything else reads frozen snapshots from it.

Writers: the poller (what neurons report), the scheduler (loads, evictions, cordons, pins) and
request handlers (cortex's own in-flight counts). Readers get `snapshot()`, a `FleetSnapshot`
rebuilt only when something changed. A replica's in-flight count in the snapshot is the larger
of the neuron's last report and cortex's own live count, so routing sees requests the moment
they start rather than at the next poll. No I/O here; events are kept for the admin API and
`cortex top`, and logged by whoever records them.
"""

from __future__ import annotations

import itertools
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from cortex.fleet.state import CatalogueEntry, EventKind, FleetSnapshot, NodeState

EVENT_HISTORY = 200
AFFINITY_KEYS = 10_000  # conversations whose replica is remembered; the oldest are forgotten


@dataclass(frozen=True)
class FleetEvent:
    """One entry of the fleet's event feed (a load, eviction, unload, pin, node going up or
    down…), as the admin API and `cortex top` show it.

    `seq` counts from 1 per registry; `at` is UNIX seconds from the registry's clock; `node`,
    `model` and `reason` are None where they do not apply, and `as_dict` leaves them out.
    """

    seq: int
    at: float
    kind: EventKind
    message: str
    node: str | None = None
    model: str | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class FleetRegistry:
    """The one mutable holder of fleet state: nodes, catalogue, aliases, cortex's live in-flight
    counts, the replica that last served each conversation (`AFFINITY_KEYS` of them, by their
    opaque `affinity` keys), and the last `EVENT_HISTORY` events.

    Writers replace whole frozen values (`put_node`, `update_node`, `put_entry`); readers take
    `snapshot()`, which is cached until the next write. No locks and no I/O: every write happens on
    the gateway's event loop.
    """

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
        # Per-node views with live counts, rebuilt only for the node that changed: a request
        # starting or finishing touches one node, and this runs twice per proxied request.
        self._views = dict(self._nodes)
        self._catalogue_view = MappingProxyType(dict(self._catalogue))
        self._aliases_view = MappingProxyType(dict(self._aliases))
        self._snapshot: FleetSnapshot | None = None
        self.events: deque[FleetEvent] = deque(maxlen=EVENT_HISTORY)
        self._seq = itertools.count(1)
        self._affinity: OrderedDict[tuple[str, str], str] = OrderedDict()

    # -- reading -----------------------------------------------------------------------------

    def snapshot(self) -> FleetSnapshot:
        if self._snapshot is None:
            self._snapshot = FleetSnapshot(
                nodes=MappingProxyType(dict(self._views)),
                catalogue=self._catalogue_view,
                aliases=self._aliases_view,
            )
        return self._snapshot

    def node(self, name: str) -> NodeState:
        return self._nodes[name]

    def _refresh_view(self, name: str) -> None:
        node = self._nodes[name]
        live = [self._in_flight.get((name, slot.model_id), 0) for slot in node.models]
        if any(count > slot.in_flight for count, slot in zip(live, node.models, strict=True)):
            node = replace(
                node,
                models=tuple(
                    replace(slot, in_flight=max(slot.in_flight, count))
                    for count, slot in zip(live, node.models, strict=True)
                ),
            )
        self._views[name] = node
        self._snapshot = None

    # -- writing -----------------------------------------------------------------------------

    def put_node(self, node: NodeState) -> None:
        self._nodes[node.name] = node
        self._refresh_view(node.name)

    def update_node(self, name: str, **changes: Any) -> NodeState:
        node = replace(self._nodes[name], **changes)
        self.put_node(node)
        return node

    def put_entry(self, entry: CatalogueEntry) -> None:
        self._catalogue[entry.id] = entry
        self._catalogue_view = MappingProxyType(dict(self._catalogue))
        self._snapshot = None

    def served_last(self, model_id: str, key: str | None) -> str | None:
        """The node whose replica of `model_id` last served conversation `key`, if remembered."""
        return None if key is None else self._affinity.get((model_id, key))

    def remember_served(self, model_id: str, key: str | None, node: str) -> None:
        """`node` now serves conversation `key` of `model_id` (the oldest keys are forgotten)."""
        if key is None:
            return
        self._affinity[(model_id, key)] = node
        self._affinity.move_to_end((model_id, key))
        while len(self._affinity) > AFFINITY_KEYS:
            self._affinity.popitem(last=False)

    def request_started(self, node: str, model_id: str) -> None:
        self._in_flight[(node, model_id)] += 1
        self._refresh_view(node)

    def request_finished(self, node: str, model_id: str) -> None:
        key = (node, model_id)
        self._in_flight[key] -= 1
        if self._in_flight[key] <= 0:
            del self._in_flight[key]
        self._refresh_view(node)

    def record(
        self,
        kind: EventKind,
        message: str,
        *,
        node: str | None = None,
        model: str | None = None,
        reason: str | None = None,
    ) -> FleetEvent:
        event = FleetEvent(next(self._seq), self.clock(), kind, message, node, model, reason)
        self.events.append(event)
        return event
