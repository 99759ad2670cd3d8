"""One loaded model: a `llama_cpp.Llama` owned by its own worker thread.

Invariants:
* The `Llama` object is created, used and closed on the engine's worker thread only; the event
  loop never calls into llama.cpp. Jobs run one at a time in submission order (one context).
* Results reach the loop through `loop.call_soon_threadsafe`: a future for one-shot jobs, an
  `asyncio.Queue` for streams. A stream's consumer closing early sets the job's cancel flag, and
  generation stops at the next sampled token.
* Token accounting comes from the tokens llama.cpp actually sampled (the instance's `generate`
  is wrapped), so usage in streams is exact: prompt tokens as evaluated, completion tokens
  excluding the end-of-generation token, and a decode rate measured from the first token on.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("neuron.engine")

_STREAM_END = object()


_M_ARENA_MAX = -8  # glibc's mallopt parameter number


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's per-thread malloc arenas; call once at startup, before worker threads.

    Every engine gets a fresh thread, and glibc gives new threads new arenas (up to 8 per core)
    that keep freed pages: RSS then creeps up over load/unload cycles although nothing leaks.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, arenas)


def _return_freed_memory() -> None:
    """Hand freed heap pages back to the OS; glibc keeps them otherwise, and repeated
    load/unload cycles would look like a leak to anyone watching RSS."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class Cancelled(Exception):
    """The consumer went away; raised inside the worker to abandon a job."""


@dataclass
class Usage:
    """Token figures of one job, filled in by the worker as tokens are sampled."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    # What the latest sampling pass produced: its tokens (end-of-generation excluded) and
    # whether it ended on end-of-generation (else: max_tokens, a stop sequence, cancellation).
    generated: list[int] = field(default_factory=list)
    ended_on_eog: bool = False
    started_at: float = 0.0
    first_token_at: float | None = None
    last_token_at: float | None = None

    @property
    def decode_tok_s(self) -> float | None:
        if self.first_token_at is None or self.last_token_at is None:
            return None
        elapsed = self.last_token_at - self.first_token_at
        return (self.completion_tokens - 1) / elapsed if elapsed > 0 else None

    @property
    def prefill_s(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started_at

    def as_openai(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


@dataclass
class _Job:
    work: Callable[[Any, _Job], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any] | None = None
    stream: asyncio.Queue[Any] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    usage: Usage = field(default_factory=Usage)

    def emit(self, item: Any) -> None:
        """Hand one stream item to the loop (called on the worker thread)."""
        assert self.stream is not None
        self.loop.call_soon_threadsafe(self.stream.put_nowait, item)


class Engine:
    """Owns one `Llama` on a dedicated thread; async methods are safe to call from the loop."""

    def __init__(self, model_id: str, factory: Callable[[], Any]) -> None:
        self.model_id = model_id
        self._factory = factory
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"engine:{model_id}", daemon=True)
        self._current: _Job | None = None
        self.llama: Any = None
        self.last_usage: Usage | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker and build the `Llama` on it; raises what the factory raised."""
        self._thread.start()
        await self.call(lambda _llama, _job: None)

    async def close(self) -> None:
        """Free the model on its own thread and stop the worker."""
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            await self.call(self._free)
        self._jobs.put(None)
        await asyncio.to_thread(self._thread.join, 30)

    def _free(self, llama: Any, _job: _Job) -> None:
        if llama is not None:
            llama.close()
        self.llama = None
        gc.collect()
        _return_freed_memory()

    def cancel_current(self) -> None:
        """Stop the job now running at its next token (forced unload)."""
        job = self._current
        if job is not None:
            job.cancel.set()

    # -- jobs --------------------------------------------------------------------------------

    async def call(self, work: Callable[[Any, _Job], Any]) -> Any:
        """Run `work(llama, job)` on the worker and return its result."""
        return (await self.call_metered(work))[0]

    async def call_metered(self, work: Callable[[Any, _Job], Any]) -> tuple[Any, Usage]:
        """Like `call`, with the job's token usage; a cancelled await cancels the job."""
        loop = asyncio.get_running_loop()
        job = _Job(work=work, loop=loop, future=loop.create_future())
        self._jobs.put(job)
        try:
            result = await job.future  # type: ignore[misc]
        except asyncio.CancelledError:
            job.cancel.set()
            raise
        return result, job.usage

    async def stream(
        self, work: Callable[[Any, _Job], Iterator[Any]]
    ) -> AsyncIterator[tuple[Any, Usage]]:
        """Yield the items of the iterator `work` returns, as they are produced.

        Each item comes with the job's live `Usage`. Closing the async iterator early cancels the
        job: the worker stops at the next sampled token.
        """
        loop = asyncio.get_running_loop()
        job = _Job(work=work, loop=loop, stream=asyncio.Queue())
        self._jobs.put(job)
        try:
            while True:
                item = await job.stream.get()  # type: ignore[union-attr]
                if item is _STREAM_END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item, job.usage
        finally:
            job.cancel.set()

    # -- worker thread -----------------------------------------------------------------------

    def _run(self) -> None:
        startup_error: BaseException | None = None
        try:
            self.llama = self._factory()
            self._meter(self.llama)
        except BaseException as exc:  # reported to whoever awaits the first job
            startup_error = exc
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if startup_error is not None:
                self._finish(job, error=startup_error)
                continue
            self._execute(job)

    def _execute(self, job: _Job) -> None:
        if job.cancel.is_set():
            self._finish(job, error=Cancelled())
            return
        self._current = job
        job.usage.started_at = time.perf_counter()
        try:
            result = job.work(self.llama, job)
            if job.stream is not None:
                for item in result:
                    if job.cancel.is_set():
                        close = getattr(result, "close", None)
                        if close is not None:
                            close()
                        break
                    job.emit(item)
                self._finish(job)
            else:
                self._finish(job, result=result)
        except BaseException as exc:
            self._finish(job, error=exc)
        finally:
            self._current = None
            self.last_usage = job.usage

    @staticmethod
    def _finish(job: _Job, *, result: Any = None, error: BaseException | None = None) -> None:
        if job.stream is not None:
            job.emit(error if error is not None else _STREAM_END)
            return
        future = job.future
        assert future is not None

        def settle() -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        job.loop.call_soon_threadsafe(settle)

    def _meter(self, llama: Any) -> None:
        """Wrap the instance's `generate` to count tokens, time them and honour cancellation.

        Every completion path of llama-cpp-python (completions, chat handlers, tool calling)
        samples through `Llama.generate`, so this is the one place that sees every token.
        """
        if llama is None or not hasattr(llama, "generate"):
            return
        import llama_cpp

        generate = llama.generate
        vocab = llama._model.vocab

        def metered(tokens: Any, *args: Any, **kwargs: Any) -> Iterator[int]:
            job = self._current
            prompt = list(tokens)
            if job is not None:
                job.usage.prompt_tokens = max(job.usage.prompt_tokens, len(prompt))
                job.usage.generated, job.usage.ended_on_eog = [], False
            for token in generate(prompt, *args, **kwargs):
                if job is not None:
                    now = time.perf_counter()
                    if job.cancel.is_set():
                        return
                    if llama_cpp.llama_vocab_is_eog(vocab, token):
                        job.usage.ended_on_eog = True
                    else:
                        job.usage.generated.append(token)
                        job.usage.completion_tokens += 1
                        if job.usage.first_token_at is None:
                            job.usage.first_token_at = now
                        job.usage.last_token_at = now
                yield token

        llama.generate = metered
