"""`FakeEngine`: the `Engine` protocol without a model, for fast in-process tests.

Deterministic: a prompt's "tokens" are its whitespace-separated words, and the reply is
`reply(prompt)` (by default the prompt's words reversed) emitted one word per step, every
`step_s` seconds, at most `parallel` generations at a time — the others wait, as they do in
`LlamaEngine`. Stop strings, `max_tokens`, the context limit, cancellation and usage behave as
the real engine's do, so the manager, admission and the API can be tested against it in
milliseconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable

from neuron.engine.text import TextAssembler
from neuron.engine.types import (
    EngineInfo,
    EngineStats,
    Finished,
    FinishReason,
    GenerateRequest,
    Piece,
    Usage,
)
from neuron.errors import ContextLengthExceeded, InvalidRequest, ModelUnavailable


def _reverse(prompt: str) -> str:
    return " ".join(reversed(prompt.split()))


class FakeEngine:
    """A stand-in model; see the module docstring for its behaviour."""

    def __init__(
        self,
        model_id: str,
        *,
        n_ctx: int = 512,
        parallel: int = 2,
        step_s: float = 0.0,
        reply: Callable[[str], str] = _reverse,
        chat_template: str | None = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n"
        "{% endfor %}assistant:",
        fail_start: BaseException | None = None,
    ) -> None:
        self.model_id = model_id
        self.info: EngineInfo | None = None
        self._info = EngineInfo(
            n_ctx=n_ctx,
            n_ctx_train=n_ctx,
            parallel=parallel,
            n_vocab=1000,
            n_embd=8,
            embedding=False,
            chat_template=chat_template,
            bos_token="",
            eos_token="",
        )
        self._slots = asyncio.Semaphore(parallel)
        self._step_s = step_s
        self._reply = reply
        self._fail_start = fail_start
        self._closed = False
        self._cancelled: set[asyncio.Event] = set()
        self.busy = 0
        self.started = 0
        self.prompts: list[str] = []

    async def start(self) -> None:
        if self._fail_start is not None:
            raise self._fail_start
        self.info = self._info

    async def close(self) -> None:
        self.cancel_all()
        self._closed = True
        await asyncio.sleep(self._step_s)  # freeing a model takes a while: other calls interleave

    def cancel_all(self) -> None:
        for event in self._cancelled:
            event.set()

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[Piece | Finished, None]:
        if self._closed:
            raise ModelUnavailable(f"model {self.model_id!r} is unloading", retry_after=5)
        prompt = (
            request.prompt
            if isinstance(request.prompt, str)
            else " ".join(str(t) for t in request.prompt)
        )
        words = prompt.split()
        if not words:
            raise InvalidRequest("the prompt is empty", param=request.param)
        if len(words) >= self._info.n_ctx:
            raise ContextLengthExceeded(
                f"the prompt is {len(words)} tokens; this model's context is {self._info.n_ctx}",
                param=request.param,
            )
        cancel = asyncio.Event()
        self._cancelled.add(cancel)
        queued = time.perf_counter()
        try:
            async with self._slots:
                self.busy += 1
                self.started += 1
                self.prompts.append(prompt)
                try:
                    async for item in self._produce(request, words, cancel, queued):
                        yield item
                finally:
                    self.busy -= 1
        finally:
            self._cancelled.discard(cancel)

    async def _produce(
        self, request: GenerateRequest, words: list[str], cancel: asyncio.Event, queued: float
    ) -> AsyncIterator[Piece | Finished]:
        admitted = time.perf_counter()
        limit = min(request.max_tokens or self._info.n_ctx, self._info.n_ctx - len(words))
        assembler = TextAssembler(request.stop)
        produced = 0
        reason = FinishReason.STOP
        for index, word in enumerate(self._reply(" ".join(words)).split()):
            if cancel.is_set():
                reason = FinishReason.CANCELLED
                break
            if produced >= limit:
                reason = FinishReason.LENGTH
                break
            await asyncio.sleep(self._step_s)
            produced += 1
            text = assembler.feed((word if index == 0 else " " + word).encode())
            if text:
                yield Piece(text)
            if assembler.stopped is not None:
                break
        tail = assembler.flush()
        if tail:
            yield Piece(tail)
        now = time.perf_counter()
        usage = Usage(
            prompt_tokens=len(words),
            completion_tokens=produced,
            queued_s=admitted - queued,
            decode_s=now - admitted,
        )
        yield Finished(reason, usage, assembler.stopped, assembler.text)

    async def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        return [hash(word) % 1000 for word in text.split()]

    async def detokenize(self, tokens: list[int]) -> str:
        return " ".join(str(token) for token in tokens)

    async def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        vectors = [[float(len(text)), *([0.0] * 7)] for text in texts]
        return vectors, sum(len(text.split()) for text in texts)

    def stats(self) -> EngineStats:
        return EngineStats(slots_busy=self.busy, slots_total=self._info.parallel)
