"""Rolling one-minute figures for `cortex top` and `cortex status`: requests/s, tokens/s,
errors/s, and per-model TTFT percentiles. Prometheus keeps the long history; this keeps just
enough recent samples in memory to answer "what is happening now". Pure bookkeeping: callers
pass `now`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

WINDOW_S = 60.0


@dataclass(frozen=True)
class Sample:
    """One finished request, as `RollingStats` counts it.

    `at` is UNIX seconds; `model` is the request's bounded metric label; `tokens` its completion
    tokens; `ttft_s` seconds from reaching a ready replica to the first byte relayed (the whole
    answer when not streamed), None when it got no answer; `error` is a status of 400 or more.
    """

    at: float
    model: str
    tokens: int
    ttft_s: float | None
    error: bool


class RollingStats:
    """The samples of the last `window_s` seconds, summarised as per-second rates and per-model TTFT
    percentiles.

    Rates divide by the whole window, so they read low for the first window after start. At most
    `max_samples` are kept (the oldest go first), and `summary(now)` drops those older than the
    window. No locking: the gateway adds and reads on its event loop.
    """

    def __init__(self, window_s: float = WINDOW_S, max_samples: int = 100_000) -> None:
        self.window_s = window_s
        self._samples: deque[Sample] = deque(maxlen=max_samples)

    def add(self, sample: Sample) -> None:
        self._samples.append(sample)

    def summary(self, now: float) -> dict[str, Any]:
        cutoff = now - self.window_s
        while self._samples and self._samples[0].at < cutoff:
            self._samples.popleft()
        recent = list(self._samples)
        per_model: dict[str, list[Sample]] = {}
        for sample in recent:
            per_model.setdefault(sample.model, []).append(sample)
        return {
            "window_s": self.window_s,
            "requests_per_s": len(recent) / self.window_s,
            "tokens_per_s": sum(s.tokens for s in recent) / self.window_s,
            "errors_per_s": sum(1 for s in recent if s.error) / self.window_s,
            "models": {
                model: {
                    "requests_per_s": len(samples) / self.window_s,
                    "tokens_per_s": sum(s.tokens for s in samples) / self.window_s,
                    "ttft_p50_s": _percentile([s.ttft_s for s in samples if s.ttft_s], 0.50),
                    "ttft_p95_s": _percentile([s.ttft_s for s in samples if s.ttft_s], 0.95),
                }
                for model, samples in per_model.items()
            },
        }


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
