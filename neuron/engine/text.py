"""From token bytes to the text a client sees: UTF-8 reassembly and stop strings.

Pure. A token is bytes, not text: a multi-byte character may span tokens, so bytes go through
an incremental UTF-8 decoder and only whole characters come out. Stop strings are matched on
the text; the part of the text that could still become a stop string is held back until it
either completes one (generation ends, the stop string is not emitted) or cannot any more.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class TextAssembler:
    """Accumulates token bytes and releases text that is safe to emit.

    `feed(data)` returns the text that may be sent now; `stopped` names the stop string that
    matched, after which nothing more is released; `flush()` releases what is held at the end
    of a generation that did not stop on a string.
    """

    def __init__(self, stops: Sequence[str] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = tuple(stop for stop in stops if stop)
        self._hold = max((len(stop) for stop in self._stops), default=1) - 1
        self._pending = ""
        self.text = ""  # everything released so far
        self.stopped: str | None = None

    def feed(self, data: bytes) -> str:
        if self.stopped is not None:
            return ""
        self._pending += self._decoder.decode(data)
        if not self._stops:
            return self._release(len(self._pending))
        found = [(self._pending.find(stop), stop) for stop in self._stops]
        hits = [(index, stop) for index, stop in found if index >= 0]
        if hits:
            index, stop = min(hits)
            self.stopped = stop
            out = self._release(index)
            self._pending = ""
            return out
        # Hold back the longest tail that is a prefix of some stop string.
        keep = 0
        for size in range(min(self._hold, len(self._pending)), 0, -1):
            tail = self._pending[-size:]
            if any(stop.startswith(tail) for stop in self._stops):
                keep = size
                break
        return self._release(len(self._pending) - keep)

    def flush(self) -> str:
        if self.stopped is not None:
            return ""
        self._pending += self._decoder.decode(b"", final=True)
        return self._release(len(self._pending))

    def _release(self, count: int) -> str:
        out, self._pending = self._pending[:count], self._pending[count:]
        self.text += out
        return out
