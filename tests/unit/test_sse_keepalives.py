"""`sse.with_keepalives`: beats while the work is pending, and never leaves the work running
when the caller goes away or a beat fails."""

from __future__ import annotations

import asyncio

import pytest

from cortex.api.sse import with_keepalives


def test_beats_until_the_result_is_there() -> None:
    beats = 0

    async def beat() -> None:
        nonlocal beats
        beats += 1

    async def work() -> str:
        await asyncio.sleep(0.35)
        return "done"

    assert asyncio.run(with_keepalives(work(), beat, 0.1)) == "done"
    assert 2 <= beats <= 4


def test_fast_work_gets_no_beat_and_its_error_passes_through() -> None:
    async def beat() -> None:
        raise AssertionError("no beat for work that ends within the interval")

    async def work() -> None:
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        asyncio.run(with_keepalives(work(), beat, 1.0))


class ClientGone(asyncio.CancelledError):
    """What a beat meets when the client is gone, as Sanic's RequestCancelled."""


@pytest.mark.parametrize(
    ("how", "raised"),
    [
        ("caller cancelled", asyncio.CancelledError),
        ("beat failed", ConnectionResetError),
        ("client gone", ClientGone),  # a CancelledError, but the beat's failure all the same
    ],
)
def test_the_work_is_cancelled_when_the_caller_leaves(how: str, raised: type) -> None:
    cancelled = asyncio.Event()

    async def beat() -> None:
        if how == "beat failed":
            raise ConnectionResetError
        if how == "client gone":
            raise ClientGone

    async def work() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def main() -> None:
        caller = asyncio.ensure_future(with_keepalives(work(), beat, 0.05))
        await asyncio.sleep(0.12)
        if how == "caller cancelled":
            caller.cancel()
        with pytest.raises(raised):
            await caller
        await asyncio.wait_for(cancelled.wait(), 1)

    asyncio.run(main())


def test_a_failed_beat_raises_its_error_and_leaves_the_caller_uncancelled() -> None:
    async def beat() -> None:
        raise ConnectionResetError("client gone")

    async def work() -> None:
        await asyncio.sleep(10)

    async def main() -> int:
        with pytest.raises(ConnectionResetError, match="client gone"):
            await with_keepalives(work(), beat, 0.02)
        task = asyncio.current_task()
        assert task is not None
        await asyncio.sleep(0)  # a cancellation left pending would land here
        return task.cancelling()

    assert asyncio.run(main()) == 0


def test_a_beat_under_way_when_the_work_ends_finishes_and_no_other_starts() -> None:
    started = finished = 0

    async def beat() -> None:  # a slow write: the client reads slowly
        nonlocal started, finished
        started += 1
        await asyncio.sleep(0.1)
        finished += 1

    async def work() -> str:
        await asyncio.sleep(0.08)  # ends while the first beat (from 0.05 s) is still writing
        return "done"

    async def main() -> str:
        result = await with_keepalives(work(), beat, 0.05)
        await asyncio.sleep(0.3)
        return result

    assert asyncio.run(main()) == "done"
    assert (started, finished) == (1, 1)


def test_the_work_runs_in_the_callers_own_task() -> None:
    async def beat() -> None:
        raise AssertionError("no beat")

    async def work() -> asyncio.Task | None:
        return asyncio.current_task()

    async def main() -> bool:
        return await with_keepalives(work(), beat, 1.0) is asyncio.current_task()

    assert asyncio.run(main())
