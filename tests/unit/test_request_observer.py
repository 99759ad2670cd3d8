"""`RequestObserver.observing`: one finish per request, however its handler ends."""

from __future__ import annotations

import asyncio

import pytest

from cortex.errors import CortexError, NoCapacity
from cortex.metrics import GatewayMetrics, RequestObserver


class Recording(RequestObserver):
    def __init__(self) -> None:
        super().__init__(
            GatewayMetrics(), dialect="openai", endpoint="chat", known_model=lambda name: name
        )
        self.finished: list[tuple[int, str | None]] = []

    def finish(self, status: int, code: str | None = None) -> None:
        self.finished.append((status, code))


def test_a_block_that_returns_finishes_with_its_outcome() -> None:
    observer = Recording()
    with observer.observing() as outcome:
        outcome.status, outcome.code = 200, None
    with observer.observing() as outcome:
        outcome.status, outcome.code = 504, "upstream_timeout"  # a stream that ended in error
    assert observer.finished == [(200, None), (504, "upstream_timeout")]
    assert observer.client_gone is False


def test_an_error_finishes_with_its_status_and_code_and_still_raises() -> None:
    observer = Recording()
    with pytest.raises(CortexError), observer.observing():
        raise NoCapacity("no room", retry_after=5)
    assert observer.finished == [(503, NoCapacity.code)]


def test_a_client_gone_is_marked_and_finishes_once() -> None:
    observer = Recording()
    with pytest.raises(asyncio.CancelledError), observer.observing():
        raise asyncio.CancelledError
    assert observer.client_gone is True and observer.finished == [(200, None)]
