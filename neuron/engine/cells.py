"""Which cells of the unified KV pool each sequence uses, so that the engine counts them truly.

Pure bookkeeping beside llama.cpp's own memory calls. A prefix copied from one sequence to
another (`llama_memory_seq_cp`) does not duplicate its cells: both sequences point at the same
ones. Summing sequence lengths therefore overcounts a pool where several conversations share a
system prompt (four agents on one 20k-token prompt: 80k summed, 20k real), and the engine would
push cached conversations out of a pool that still has room.

Invariants: a cell is named by (origin, position), where an origin is one run of evaluation
into one sequence; every change that drops or replaces a sequence's cells gives that sequence a
fresh origin, so new cells never take the name of freed ones. A sequence's spans cover
positions 0..length-1 in order, without gaps.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass


@dataclass(frozen=True)
class _Span:
    origin: int
    start: int
    end: int


class CellMap:
    """The cells of `n_seq` sequences; mirror every KV change of the engine here.

    `used` is the number of distinct cells; `exclusive(seq)` how many clearing that sequence
    alone would free.
    """

    def __init__(self, n_seq: int) -> None:
        self._origins = itertools.count()
        self._spans: list[list[_Span]] = [[] for _ in range(n_seq)]
        self._own = [next(self._origins) for _ in range(n_seq)]
        self._used = 0
        self._stale = False

    def length(self, seq: int) -> int:
        spans = self._spans[seq]
        return spans[-1].end if spans else 0

    def extend(self, seq: int, count: int) -> None:
        """`count` new cells evaluated at the end of `seq`."""
        if count <= 0:
            return
        spans, origin = self._spans[seq], self._own[seq]
        start = self.length(seq)
        if spans and spans[-1].origin == origin:
            spans[-1] = _Span(origin, spans[-1].start, start + count)
        else:
            spans.append(_Span(origin, start, start + count))
        self._used += count  # new cells are nobody else's

    def trim(self, seq: int, keep: int) -> None:
        """`seq` keeps its first `keep` positions (`seq_rm(seq, keep, -1)`)."""
        self._spans[seq] = _clip(self._spans[seq], 0, keep)
        self._renew(seq)

    def clear(self, seq: int) -> None:
        self.trim(seq, 0)

    def copy(self, source: int, target: int, upto: int) -> None:
        """Empty `target` takes `source`'s cells for positions below `upto` (`seq_cp`)."""
        self._spans[target] = _clip(self._spans[source], 0, upto)
        self._renew(target)

    def share(self, source: int, target: int, upto: int) -> None:
        """`target`'s positions below `upto` move onto `source`'s cells; its own are freed."""
        self._spans[target] = [
            *_clip(self._spans[source], 0, upto),
            *_clip(self._spans[target], upto, self.length(target)),
        ]
        self._stale = True

    @property
    def used(self) -> int:
        if self._stale:
            self._used = self._distinct(range(len(self._spans)))
            self._stale = False
        return self._used

    def exclusive(self, seq: int) -> int:
        """Cells that only `seq` uses."""
        others = [other for other in range(len(self._spans)) if other != seq]
        return self.used - self._distinct(others)

    def _distinct(self, seqs: range | list[int]) -> int:
        by_origin: dict[int, list[tuple[int, int]]] = {}
        for seq in seqs:
            for span in self._spans[seq]:
                by_origin.setdefault(span.origin, []).append((span.start, span.end))
        total = 0
        for intervals in by_origin.values():
            reach = -1
            for start, end in sorted(intervals):
                if end > reach:
                    total += end - max(start, reach)
                    reach = end
        return total

    def _renew(self, seq: int) -> None:
        self._own[seq] = next(self._origins)
        self._stale = True


def _clip(spans: list[_Span], start: int, end: int) -> list[_Span]:
    return [
        _Span(span.origin, max(span.start, start), min(span.end, end))
        for span in spans
        if span.end > start and span.start < end
    ]
