"""`LlamaEngine`: one loaded model, many requests at once, on llama.cpp's low-level API.

One llama.cpp context per model holds a unified KV pool of `n_ctx × parallel` cells shared by
`2 × parallel` sequences: `parallel` of them generate at once, and the rest keep the KV of
finished requests as a prefix cache. One scheduler thread owns the model, the context, the batch
and every sampler; nothing else calls into llama.cpp. Each step it:

1. takes new commands (generations, one-shot jobs such as tokenize/embed, stop),
2. finishes cancelled generations (their evaluated prefix stays cached),
3. admits waiting generations into free sequences, reusing the longest cached prefix
   (`prefix.choose_sequence`) and trimming, copying or restoring KV accordingly,
4. builds one batch — one token per generating sequence plus chunked prefill, or a short
   prompt alone first (`batching.plan_batch`) — making room by moving cached sequences out of
   the pool LRU first,
5. decodes once and samples every sequence that wanted logits with its own sampler chain.

A cached sequence that gives way is parked in host RAM (`llama_state_seq_get_data`, up to
`cache_ram_mb`, least recently used dropped first) instead of being forgotten, and restored into
a sequence (`llama_state_seq_set_data`) when a prompt matches it again: copying a prefix's KV
costs milliseconds where reading it again costs seconds. A prefix that shares a long start with
one already parked is parked as a tail of it (its own cells only) and read back on top of the
pool's or RAM's copy of that start (`prefix.park_plan`). With `park_idle` (CPU hosts) idle
sequences also leave the pool while others decode (`prefix.idle_to_park`), so that a decode
step attends over live cells only.

Tokens reach the event loop through `loop.call_soon_threadsafe`; a consumer that stops reading
sets its generation's cancel flag, which the thread honours at the next step.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import gc
import logging
import multiprocessing
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
import numpy as np

from neuron.engine.batching import SequenceNeed, plan_batch
from neuron.engine.cells import CellMap
from neuron.engine.memory import return_freed_memory
from neuron.engine.prefix import (
    KEEP_TAIL_TOKENS,
    CachedSequence,
    ParkedPrefix,
    Reuse,
    cells_to_free,
    choose_sequence,
    idle_to_park,
    park_plan,
    parked_over_budget,
)
from neuron.engine.sampler import SamplerChain, token_logprob
from neuron.engine.text import TextAssembler
from neuron.engine.types import (
    EngineInfo,
    EngineStats,
    Finished,
    FinishReason,
    GenerateRequest,
    Piece,
    TokenLogprob,
    Usage,
)
from neuron.errors import (
    ContextLengthExceeded,
    EngineFailure,
    InvalidRequest,
    ModelUnavailable,
    NeuronError,
)

log = logging.getLogger("neuron.engine")
# llama-cpp-python routes llama.cpp's own log lines to this logger; only errors are of use.
logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)

_backend_lock = threading.Lock()
_backend_ready = False
_STOP = object()
_MAX_SEQUENCES = 256  # llama.cpp's LLAMA_MAX_SEQ
_FLASH_ATTN_TYPES = {
    "auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}


def init_backend() -> None:
    """Initialise llama.cpp's backends once per process (any thread may call it)."""
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            llama_cpp.llama_backend_init()
            _backend_ready = True


@dataclass(frozen=True)
class LlamaSettings:
    """How to open one model: file, per-request context, slots, offload and threads."""

    path: str
    n_ctx: int
    parallel: int = 4
    n_gpu_layers: int = 0
    tensor_split: tuple[float, ...] | None = None
    n_threads: int | None = None
    flash_attn: str = "auto"  # "auto" | "on" | "off", as llama-server's --flash-attn
    cache_ram_mb: int = 0  # host RAM for prefixes parked out of the KV pool; 0: none
    park_idle: bool = False  # idle sequences leave the pool while others decode (CPU hosts)
    embedding: bool = False
    n_batch: int = 512
    chat_template: str | None = None  # replaces the GGUF's own template when set

    @property
    def kv_cells(self) -> int:
        return self.n_ctx * self.parallel

    @property
    def n_seq_max(self) -> int:
        if self.embedding:
            return min(self.parallel, _MAX_SEQUENCES)
        return min(2 * self.parallel, _MAX_SEQUENCES)


@dataclass
class _Sequence:
    seq_id: int
    tokens: list[int] = field(default_factory=list)
    last_used: float = 0.0
    busy: bool = False


@dataclass
class _Parked:
    """A sequence's KV in host RAM, as `llama_state_seq_get_data` wrote it. A tail (`base`
    set) holds the cells of positions `skip` and on; the first `skip` are parked prefix
    `base`'s (`prefix.park_plan`)."""

    key: int
    tokens: list[int]
    data: Any  # ctypes c_uint8 array
    last_used: float
    base: int | None = None
    skip: int = 0
    # What the policy sees of it, made once: admissions look at every parked prefix.
    view: ParkedPrefix = field(init=False)

    def __post_init__(self) -> None:
        self.touch(self.last_used)

    def touch(self, at: float) -> None:
        """Used at `at` (as recent as the pool's copy of it, which gives way)."""
        self.last_used = at
        self.view = ParkedPrefix(self.key, self.tokens, at, len(self.data), self.base, self.skip)


@dataclass
class _Generation:
    request: GenerateRequest
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[Any]
    cancel: threading.Event = field(default_factory=threading.Event)
    submitted_at: float = field(default_factory=time.perf_counter)
    tokens: list[int] | None = None
    max_tokens: int = 0
    seq: _Sequence | None = None
    fed: int = 0
    cached: int = 0
    admitted: int = 0
    admitted_at: float = 0.0
    first_token_at: float | None = None
    last_token_at: float | None = None
    completion_tokens: int = 0
    last_token: int = -1
    sampler: SamplerChain | None = None
    assembler: TextAssembler | None = None


def _deliver(items: list[tuple[_Generation, Any]]) -> None:
    """On the event loop: hand each item to its generation's queue."""
    for generation, item in items:
        generation.out.put_nowait(item)


@dataclass
class _Job:
    work: Callable[[], Any]
    future: concurrent.futures.Future[Any]


class LlamaEngine:
    """Serves one GGUF with continuous batching; every method is safe to call from the loop.

    Owns one scheduler thread, created by `start` and ended by `close`. `generate` may be called
    any number of times concurrently: at most `parallel` generations decode at once, the others
    wait in arrival order (admission limits are the manager's job, not this class's).
    """

    def __init__(self, model_id: str, settings: LlamaSettings) -> None:
        self.model_id = model_id
        self.settings = settings
        self.info: EngineInfo | None = None
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._waiting: deque[_Generation] = deque()
        self._active: list[_Generation] = []
        self._seqs: list[_Sequence] = []
        self._cells = CellMap(0)
        self._cells_used = 0  # `_cells.used` as of the last loop, for `stats` on other threads
        self._admissions = 0
        self._closed = False
        self._stats = EngineStats()
        self._counters = {
            "steps": 0,
            "batch": 0,
            "prefill": 0,
            "decode": 0,
            "cached": 0,
            "parked": 0,
            "restored": 0,
        }
        self._parked: dict[int, _Parked] = {}
        # A sequence id outside the pool's, empty between scheduler steps: parking a tail copies
        # it there to serialise only its own cells, and restoring one reads it in there,
        # because `llama_state_seq_set_data` first empties the sequence it writes to. None when
        # the memory cannot copy a range of positions (recurrent, hybrid) or no id is left.
        self._scratch: int | None = None
        self._park_keys = 0
        self._pool_changed = False  # a sequence became idle or busy since the last step
        self._last_batch = 0
        self._decoders_waited = False  # the last step read prompts only while others decoded
        self._model: Any = None
        self._ctx: Any = None
        self._batch: Any = None
        self._vocab: Any = None
        self._piece_buffer = ctypes.create_string_buffer(256)
        # Items for consumers, handed to their event loops once per step: one wake-up of a loop
        # per step instead of one per token and stream.
        self._outbox: list[tuple[_Generation, Any]] = []

    # -- loop side ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the model and context on the scheduler thread; raises what opening raised."""
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name=f"engine:{self.model_id}", daemon=True
        )
        self._thread.start()
        try:
            await asyncio.wrap_future(ready)
        except BaseException:
            self._closed = True
            await asyncio.to_thread(self._thread.join, 30)
            raise

    async def close(self) -> None:
        """Cancel everything in flight, free llama.cpp's memory and end the thread."""
        if self._closed:
            return
        self._closed = True
        self._inbox.put(_STOP)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 60)

    def cancel_all(self) -> None:
        """Cancel every generation (forced unload); each ends at the next step."""
        for generation in [*self._active, *self._waiting]:
            generation.cancel.set()

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[Piece | Finished, None]:
        """Yield `Piece`s as text is produced, then one `Finished`.

        Errors found before the first token (a prompt too long, a grammar llama.cpp refuses)
        are raised from the first iteration. Closing the iterator early cancels the generation.
        """
        if self._closed:
            raise ModelUnavailable(f"model {self.model_id!r} is unloading", retry_after=5)
        generation = _Generation(request, asyncio.get_running_loop(), asyncio.Queue())
        self._inbox.put(generation)
        try:
            while True:
                item = await generation.out.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, Finished):
                    return
        finally:
            generation.cancel.set()

    async def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        return await self._call(lambda: self._tokenize(text, add_special))

    async def detokenize(self, tokens: list[int]) -> str:
        return await self._call(
            lambda: b"".join(self._piece(t) for t in tokens).decode("utf-8", errors="replace")
        )

    async def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        """One pooled vector per text, and the number of tokens read."""
        if not self.settings.embedding:
            raise InvalidRequest("this model was not loaded for embeddings", param="model")
        return await self._call(lambda: self._embed(texts))

    def stats(self) -> EngineStats:
        counters = self._counters
        parked = list(self._parked.values())  # a copy: the scheduler thread may change the dict
        return EngineStats(
            slots_busy=len(self._active),
            slots_total=self.settings.parallel,
            waiting=len(self._waiting),
            decode_steps=counters["steps"],
            batch_tokens=counters["batch"],
            prefill_tokens=counters["prefill"],
            decode_tokens=counters["decode"],
            cached_tokens=counters["cached"],
            cache_sequences=sum(1 for s in self._seqs if s.tokens and not s.busy),
            kv_cells_used=self._cells_used,
            kv_cells_total=self.settings.kv_cells,
            last_batch_tokens=self._last_batch,
            parked_prefixes=len(parked),
            parked_bytes=sum(len(entry.data) for entry in parked),
            parked_total=counters["parked"],
            restored_tokens=counters["restored"],
        )

    async def _call(self, work: Callable[[], Any]) -> Any:
        if self._closed:
            raise ModelUnavailable(f"model {self.model_id!r} is unloading", retry_after=5)
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._inbox.put(_Job(work, future))
        return await asyncio.wrap_future(future)

    # -- scheduler thread: open and close ------------------------------------------------------

    def _run(self, ready: concurrent.futures.Future[None]) -> None:
        try:
            self._open()
        except BaseException as exc:
            self._free_native()
            ready.set_exception(exc)
            return
        ready.set_result(None)
        try:
            while self._serve_once():
                pass
        except BaseException:
            log.exception("engine %s failed", self.model_id)
            self._closed = True  # new requests get 503 at once instead of waiting on a dead thread
            self._fail_all(EngineFailure("the engine failed; see the neuron's log"))
            self._flush()
        finally:
            self._free_native()

    def _open(self) -> None:
        init_backend()
        s = self.settings
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = s.n_gpu_layers
        split = None
        if s.tensor_split:
            split = (ctypes.c_float * llama_cpp.llama_max_devices())(*s.tensor_split)
            model_params.tensor_split = split
        self._model = llama_cpp.llama_model_load_from_file(s.path.encode(), model_params)
        if not self._model:
            raise RuntimeError(f"llama.cpp could not load {s.path}")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self._ctx = self._new_context(llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED)
        if (
            s.embedding
            and llama_cpp.llama_pooling_type(self._ctx) == llama_cpp.LLAMA_POOLING_TYPE_NONE
        ):
            # A generative model declares no pooling and would give one vector per token; an
            # embeddings API wants one per input, so mean-pool.
            llama_cpp.llama_free(self._ctx)
            self._ctx = self._new_context(llama_cpp.LLAMA_POOLING_TYPE_MEAN)
        self._batch = llama_cpp.llama_batch_init(llama_cpp.llama_n_batch(self._ctx), 0, 1)
        self._seqs = [_Sequence(seq_id) for seq_id in range(s.n_seq_max)]
        self._cells = CellMap(s.n_seq_max)
        if (
            llama_cpp.llama_n_seq_max(self._ctx) > s.n_seq_max
            and not llama_cpp.llama_model_is_recurrent(self._model)
            and not llama_cpp.llama_model_is_hybrid(self._model)
        ):
            self._scratch = s.n_seq_max
        self._warm_up()
        self.info = EngineInfo(
            n_ctx=s.n_ctx,
            n_ctx_train=llama_cpp.llama_model_n_ctx_train(self._model),
            parallel=s.parallel,
            n_vocab=llama_cpp.llama_vocab_n_tokens(self._vocab),
            n_embd=llama_cpp.llama_model_n_embd(self._model),
            embedding=s.embedding,
            chat_template=s.chat_template or model_chat_template(self._model),
            bos_token=self._special_text(llama_cpp.llama_vocab_bos(self._vocab)),
            eos_token=self._special_text(llama_cpp.llama_vocab_eos(self._vocab)),
        )

    def _warm_up(self) -> None:
        """Decode one token and forget it, as llama-server does: the first real request then
        does not pay for faulting the weights in and setting up the compute graph."""
        batch = self._batch
        token = llama_cpp.llama_vocab_bos(self._vocab)
        batch.token[0] = token if token >= 0 else 0
        batch.pos[0] = 0
        batch.n_seq_id[0] = 1
        batch.seq_id[0][0] = 0
        batch.logits[0] = 1
        batch.n_tokens = 1
        llama_cpp.llama_decode(self._ctx, batch)
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self._ctx), True)

    def _new_context(self, pooling: int) -> Any:
        s = self.settings
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = s.kv_cells
        # One more than the pool's sequences for the scratch sequence (`_scratch`).
        params.n_seq_max = s.n_seq_max if s.embedding else min(s.n_seq_max + 1, _MAX_SEQUENCES)
        # One unified pool: llama.cpp batches sequences of one stream into one pass, while
        # separate streams (kv_unified off) were measured to decode no faster together than
        # alone on the CPU. Masked cells of other sequences cost little with flash attention.
        params.kv_unified = True
        # Keep every position of sliding-window layers, so that cached prefixes stay reusable.
        params.swa_full = True
        params.no_perf = True
        params.flash_attn_type = _FLASH_ATTN_TYPES[s.flash_attn]
        cores = multiprocessing.cpu_count()
        params.n_threads = s.n_threads or max(cores // 2, 1)
        params.n_threads_batch = s.n_threads or cores
        # llama.cpp keeps room for one output per sequence and asserts (aborting the process)
        # unless a batch can hold that many: n_batch must be at least n_seq_max.
        if s.embedding:
            # Pooling needs a whole input in one micro-batch.
            params.n_batch = params.n_ubatch = max(s.n_ctx, s.n_seq_max)
            params.embeddings = True
            params.pooling_type = pooling
        else:
            params.n_batch = params.n_ubatch = max(s.n_batch, params.n_seq_max)
        ctx = llama_cpp.llama_init_from_model(self._model, params)
        if not ctx:
            raise RuntimeError("llama.cpp could not create a context (out of memory?)")
        return ctx

    def _free_native(self) -> None:
        self._parked.clear()
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None
        gc.collect()
        return_freed_memory()

    def _fail_all(self, error: NeuronError) -> None:
        for generation in [*self._active, *self._waiting]:
            if generation.sampler is not None:  # a chain is native memory: free it here
                generation.sampler.close()
                generation.sampler = None
            self._emit(generation, error)
        self._active.clear()
        self._waiting.clear()
        while True:
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(command, _Generation):
                self._emit(command, error)
            elif isinstance(command, _Job) and command.future.set_running_or_notify_cancel():
                command.future.set_exception(error)

    # -- scheduler thread: the step ------------------------------------------------------------

    def _emit(self, generation: _Generation, item: Any) -> None:
        self._outbox.append((generation, item))

    def _flush(self) -> None:
        if not self._outbox:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Generation, Any]]] = {}
        for generation, item in self._outbox:
            by_loop.setdefault(generation.loop, []).append((generation, item))
        self._outbox = []
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening
                loop.call_soon_threadsafe(_deliver, items)

    def _serve_once(self) -> bool:
        idle = not self._active and not self._waiting
        try:
            command = self._inbox.get(block=idle)
        except queue.Empty:
            command = None
        while command is not None:
            if command is _STOP:
                self._fail_all(ModelUnavailable(f"model {self.model_id!r} unloaded", retry_after=5))
                self._flush()
                return False
            self._accept(command)
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                command = None
        for generation in [g for g in self._active if g.cancel.is_set()]:
            self._finish(generation, FinishReason.CANCELLED)
        self._admit()
        if self._active:
            self._step()
        self._cells_used = self._cells.used
        self._flush()
        return True

    def _accept(self, command: Any) -> None:
        if isinstance(command, _Generation):
            self._waiting.append(command)
            return
        # The awaiting request may be gone (its client left, a bounded wait ran out): then the
        # future is cancelled, and the job is skipped rather than failing on it.
        if not command.future.set_running_or_notify_cancel():
            return
        try:
            result = command.work()
        except Exception as exc:
            command.future.set_exception(exc)
        else:
            command.future.set_result(result)

    def _admit(self) -> None:
        while self._waiting and len(self._active) < self.settings.parallel:
            generation = self._waiting[0]
            if generation.cancel.is_set():
                self._waiting.popleft()
                continue
            if generation.tokens is None:
                try:
                    self._prepare(generation)
                except NeuronError as exc:
                    self._waiting.popleft()
                    self._emit(generation, exc)
                    continue
            assert generation.tokens is not None
            reuse = choose_sequence(
                generation.tokens,
                self._views(),
                self._parked_views(),
                reuse=generation.request.reuse_prefix,
            )
            if reuse is None:
                return
            self._waiting.popleft()
            try:
                generation.sampler = SamplerChain(
                    generation.request.sampling,
                    self._vocab,
                    self.info.n_vocab,  # type: ignore[union-attr]
                )
            except NeuronError as exc:
                self._emit(generation, exc)
                continue
            self._take(generation, reuse)
            self._active.append(generation)

    def _prepare(self, generation: _Generation) -> None:
        request = generation.request
        if isinstance(request.prompt, str):
            tokens = self._tokenize(request.prompt, request.add_special)
        else:
            tokens = list(request.prompt)
        n_ctx = self.settings.n_ctx
        if not tokens:
            raise InvalidRequest("the prompt is empty", param=request.param)
        if len(tokens) >= n_ctx:
            raise ContextLengthExceeded(
                f"the prompt is {len(tokens)} tokens; this model's context is {n_ctx}",
                param=request.param,
            )
        room = n_ctx - len(tokens)
        generation.max_tokens = min(request.max_tokens or room, room)
        generation.tokens = tokens
        generation.assembler = TextAssembler(request.stop)

    def _take(self, generation: _Generation, reuse: Reuse) -> None:
        memory = llama_cpp.llama_get_memory(self._ctx)
        seq = self._seqs[reuse.seq_id]
        keep = reuse.keep
        if reuse.restore is not None:
            self._evict(seq)
            busy = frozenset(g.seq.seq_id for g in self._active if g.seq is not None)
            keep = self._restore(reuse, seq, busy)
        elif reuse.copy_from is not None:
            self._evict(seq)
            source = self._seqs[reuse.copy_from]
            llama_cpp.llama_memory_seq_cp(memory, source.seq_id, seq.seq_id, 0, keep)
            self._cells.copy(source.seq_id, seq.seq_id, keep)
            seq.tokens = source.tokens[:keep]
        else:
            if len(seq.tokens) - keep >= KEEP_TAIL_TOKENS:
                self._park(seq)  # another conversation's KV is cut away: keep it in RAM
            if not self._trim(seq, keep):
                # Recurrent and hybrid memories cannot drop a tail: start the sequence afresh.
                self._drop(seq)
                keep = 0
        seq.busy = True
        self._pool_changed = True
        self._admissions += 1
        generation.seq = seq
        generation.fed = generation.cached = keep
        generation.admitted = self._admissions
        generation.admitted_at = time.perf_counter()
        self._counters["cached"] += keep

    def _step(self) -> None:
        if self._pool_changed and self.settings.park_idle and self.settings.cache_ram_mb > 0:
            for seq_id in idle_to_park(self._views()):
                self._evict(self._seqs[seq_id])
        self._pool_changed = False
        by_seq = {g.seq.seq_id: g for g in self._active}  # type: ignore[union-attr]
        needs = [
            SequenceNeed(seq_id, len(g.tokens) - g.fed, g.admitted)  # type: ignore[arg-type]
            for seq_id, g in by_seq.items()
        ]
        decoding = any(need.pending == 0 for need in needs)
        slices = plan_batch(needs, self.settings.n_batch, decoders_waited=self._decoders_waited)
        self._decoders_waited = decoding and all(piece.prefill for piece in slices)
        total = sum(piece.count for piece in slices)
        self._make_room(total, frozenset(by_seq))
        batch = self._batch
        row = 0
        fed: list[tuple[_Generation, list[int], bool]] = []
        sample_rows: list[tuple[_Generation, int]] = []
        for piece in slices:
            generation = by_seq[piece.seq_id]
            assert generation.seq is not None and generation.tokens is not None
            if piece.prefill:
                tokens = generation.tokens[generation.fed : generation.fed + piece.count]
            else:
                tokens = [generation.last_token]
            base = len(generation.seq.tokens)
            for offset, token in enumerate(tokens):
                batch.token[row] = token
                batch.pos[row] = base + offset
                batch.n_seq_id[row] = 1
                batch.seq_id[row][0] = piece.seq_id
                batch.logits[row] = 0
                row += 1
            if piece.logits:
                batch.logits[row - 1] = 1
                sample_rows.append((generation, row - 1))
            fed.append((generation, tokens, piece.prefill))
        batch.n_tokens = row
        result = llama_cpp.llama_decode(self._ctx, batch)
        if result == 1:  # no room in the KV pool: drop every cached prefix and try once more
            self._make_room(self.settings.kv_cells, frozenset(by_seq))
            result = llama_cpp.llama_decode(self._ctx, batch)
        if result != 0:
            self._decode_failed(result)
            return
        counters = self._counters
        counters["steps"] += 1
        counters["batch"] += row
        self._last_batch = row
        for generation, tokens, prefill in fed:
            generation.seq.tokens.extend(tokens)  # type: ignore[union-attr]
            self._cells.extend(generation.seq.seq_id, len(tokens))  # type: ignore[union-attr]
            if prefill:
                generation.fed += len(tokens)
                counters["prefill"] += len(tokens)
            else:
                counters["decode"] += 1
        for generation, index in sample_rows:
            self._sample(generation, index)

    def _make_room(self, need: int, exclude: frozenset[int]) -> None:
        # One at a time: a sequence's cells shared with another are freed only once both go.
        while (free := self.settings.kv_cells - self._cells.used) < need:
            own = {
                seq.seq_id: self._cells.exclusive(seq.seq_id)
                for seq in self._seqs
                if seq.tokens and not seq.busy
            }
            victims = cells_to_free(
                self._views(), need=need, free=free, exclude=exclude, own_cells=own
            )
            if not victims:
                return
            self._evict(self._seqs[victims[0]])

    # -- scheduler thread: the prefix cache's two tiers ---------------------------------------

    def _views(self) -> list[CachedSequence]:
        return [CachedSequence(s.seq_id, s.tokens, s.last_used, s.busy) for s in self._seqs]

    def _parked_views(self) -> list[ParkedPrefix]:
        return [entry.view for entry in self._parked.values()]

    def _evict(self, seq: _Sequence) -> None:
        """Empty an idle sequence, parking its KV in host RAM when that is worth it."""
        if not seq.tokens:
            return
        self._park(seq)
        self._drop(seq)

    def _drop(self, seq: _Sequence) -> None:
        """Forget a sequence's KV."""
        llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(self._ctx), seq.seq_id, -1, -1)
        self._cells.clear(seq.seq_id)
        seq.tokens = []

    def _trim(self, seq: _Sequence, keep: int) -> bool:
        """Keep a sequence's first `keep` tokens; False when its memory cannot drop a tail."""
        memory = llama_cpp.llama_get_memory(self._ctx)
        if not llama_cpp.llama_memory_seq_rm(memory, seq.seq_id, keep, -1):
            return False
        self._cells.trim(seq.seq_id, keep)
        del seq.tokens[keep:]
        return True

    def _park(self, seq: _Sequence) -> None:
        """Copy a sequence's KV into host RAM (the sequence itself is left as it is)."""
        budget = self.settings.cache_ram_mb << 20
        if budget <= 0:
            return
        plan = park_plan(seq.tokens, self._parked_views(), tails=self._scratch is not None)
        if plan.covered_by is not None:
            # RAM holds it already (a base its tails kept there): the budget must see it as
            # used now, not as when it was parked.
            covering = self._parked[plan.covered_by]
            covering.touch(max(covering.last_used, seq.last_used))
        if not plan.park:
            return
        if plan.base is None:
            data = self._copy_out(seq.seq_id, budget)
        else:
            assert self._scratch is not None
            memory = llama_cpp.llama_get_memory(self._ctx)
            llama_cpp.llama_memory_seq_cp(memory, seq.seq_id, self._scratch, plan.skip, -1)
            try:
                data = self._copy_out(self._scratch, budget)
            finally:
                llama_cpp.llama_memory_seq_rm(memory, self._scratch, -1, -1)
        if data is None:
            return
        for key in plan.superseded:
            del self._parked[key]
        self._park_keys += 1
        key = self._park_keys
        self._parked[key] = _Parked(
            key, list(seq.tokens), data, seq.last_used, plan.base, plan.skip
        )
        self._counters["parked"] += 1
        self._trim_parked()

    def _copy_out(self, seq_id: int, budget: int) -> Any:
        """Sequence `seq_id`'s KV as bytes, or None when it is over `budget` or unreadable."""
        size = llama_cpp.llama_state_seq_get_size(self._ctx, seq_id)
        if size > budget:
            return None
        data = (ctypes.c_uint8 * size)()
        if llama_cpp.llama_state_seq_get_data(self._ctx, data, size, seq_id) != size:
            log.warning("engine %s: could not copy a cached prefix out of the pool", self.model_id)
            return None
        return data

    def _trim_parked(self) -> None:
        """Drop parked prefixes, least recently used first, until they fit `cache_ram_mb`."""
        for key in parked_over_budget(self._parked_views(), self.settings.cache_ram_mb << 20):
            del self._parked[key]

    def _restore(self, reuse: Reuse, seq: _Sequence, exclude: frozenset[int]) -> int:
        """Bring parked prefix `reuse.restore` back into the empty sequence `seq`, trimmed to
        `reuse.keep` tokens, its shared part on `reuse.share_from`'s cells; returns how many
        tokens it holds (0 when the pool has no room for it)."""
        assert reuse.restore is not None
        key, keep = reuse.restore, reuse.keep
        entry = self._parked[key]
        # A base stays parked while tails need it; any other entry is in the pool from now on.
        if not any(other.base == key for other in self._parked.values()):
            del self._parked[key]
        lender = self._seqs[reuse.share_from] if reuse.share_from is not None else None
        from_lender = lender is not None and entry.base is not None and reuse.shared >= entry.skip
        base = None if entry.base is None or from_lender else self._parked[entry.base]
        need = max(len(entry.tokens), len(base.tokens) if base is not None else 0)
        self._make_room(need, exclude | {seq.seq_id} | ({lender.seq_id} if lender else set()))
        if not self._read_in(entry, seq, base, lender if from_lender else None):
            self._drop(seq)
            # Not lost: another request may fit it later. Making room may have parked others
            # meanwhile, and trimming the parked prefixes for them may have dropped this tail's
            # base, without which the tail is nothing.
            if entry.base is None or entry.base in self._parked:
                self._parked.setdefault(key, entry)
                self._trim_parked()
            return 0
        if not self._trim(seq, keep):
            self._drop(seq)
            return 0
        if lender is not None:
            shared = min(reuse.shared, len(lender.tokens), keep)
            # Positions below `shared` hold the same KV in both: drop the restored copies and
            # point the sequence at the lender's cells, as an admission's prefix copy does.
            memory = llama_cpp.llama_get_memory(self._ctx)
            if shared and llama_cpp.llama_memory_seq_rm(memory, seq.seq_id, 0, shared):
                llama_cpp.llama_memory_seq_cp(memory, lender.seq_id, seq.seq_id, 0, shared)
                self._cells.share(lender.seq_id, seq.seq_id, shared)
        self._counters["restored"] += keep
        return keep

    def _read_in(
        self, entry: _Parked, seq: _Sequence, base: _Parked | None, lender: _Sequence | None
    ) -> bool:
        """Write a parked entry's KV into the empty `seq`; a tail's first `skip` positions come
        from `lender`'s cells or else from its `base` read in first. False when llama.cpp
        finds no room (`seq` is then left for the caller to empty)."""
        if entry.base is None:
            if not self._set_data(entry, seq.seq_id):
                return False
            seq.tokens = list(entry.tokens)
            self._cells.extend(seq.seq_id, len(seq.tokens))
            return True
        assert self._scratch is not None
        memory = llama_cpp.llama_get_memory(self._ctx)
        if lender is not None:
            llama_cpp.llama_memory_seq_cp(memory, lender.seq_id, seq.seq_id, 0, entry.skip)
            self._cells.copy(lender.seq_id, seq.seq_id, entry.skip)
            seq.tokens = lender.tokens[: entry.skip]
        else:
            assert base is not None
            if not self._set_data(base, seq.seq_id):
                return False
            seq.tokens = list(base.tokens)
            self._cells.extend(seq.seq_id, len(seq.tokens))
            if not self._trim(seq, entry.skip):
                return False
        try:
            if not self._set_data(entry, self._scratch):
                return False
            llama_cpp.llama_memory_seq_cp(memory, self._scratch, seq.seq_id, entry.skip, -1)
        finally:
            llama_cpp.llama_memory_seq_rm(memory, self._scratch, -1, -1)
        seq.tokens = list(entry.tokens)
        self._cells.extend(seq.seq_id, len(entry.tokens) - entry.skip)
        return True

    def _set_data(self, entry: _Parked, seq_id: int) -> bool:
        return bool(
            llama_cpp.llama_state_seq_set_data(self._ctx, entry.data, len(entry.data), seq_id)
        )

    def _decode_failed(self, result: int) -> None:
        if result == 1 and len(self._active) > 1:
            # Still no room: the youngest request gives way so that the others can go on.
            victim = max(self._active, key=lambda g: g.admitted)
            self._release(victim, clear=True)
            full = ModelUnavailable("the model's context is full; retry", retry_after=2)
            self._emit(victim, full)
            return
        error = EngineFailure(f"llama_decode failed ({result})")
        for generation in list(self._active):
            self._release(generation, clear=True)
            self._emit(generation, error)

    def _sample(self, generation: _Generation, row: int) -> None:
        assert generation.sampler is not None and generation.assembler is not None
        token = generation.sampler.sample(self._ctx, row)
        now = time.perf_counter()
        if generation.first_token_at is None:
            generation.first_token_at = now
        if llama_cpp.llama_vocab_is_eog(self._vocab, token):
            self._finish(generation, FinishReason.STOP)
            return
        generation.completion_tokens += 1
        generation.last_token_at = now
        logprobs: tuple[TokenLogprob, ...] = ()
        if generation.request.logprobs is not None:
            logits = np.ctypeslib.as_array(
                llama_cpp.llama_get_logits_ith(self._ctx, row),
                shape=(self.info.n_vocab,),  # type: ignore[union-attr]
            )
            logprobs = (token_logprob(logits, token, generation.request.logprobs, self._piece),)
        text = generation.assembler.feed(self._piece(token))
        if text or logprobs:
            self._emit(generation, Piece(text, logprobs))
        if generation.assembler.stopped is not None:
            self._finish(generation, FinishReason.STOP)
        elif generation.completion_tokens >= generation.max_tokens:
            self._finish(generation, FinishReason.LENGTH)
        else:
            generation.last_token = token

    def _finish(self, generation: _Generation, reason: FinishReason) -> None:
        assembler = generation.assembler
        assert assembler is not None and generation.tokens is not None
        tail = assembler.flush()
        if tail:
            self._emit(generation, Piece(tail))
        first = generation.first_token_at or time.perf_counter()
        usage = Usage(
            prompt_tokens=len(generation.tokens),
            completion_tokens=generation.completion_tokens,
            cached_tokens=generation.cached,
            queued_s=generation.admitted_at - generation.submitted_at,
            prefill_s=first - generation.admitted_at,
            decode_s=(generation.last_token_at or first) - first,
        )
        self._release(generation, clear=False)
        self._emit(generation, Finished(reason, usage, assembler.stopped, assembler.text))

    def _release(self, generation: _Generation, *, clear: bool) -> None:
        if generation.sampler is not None:
            generation.sampler.close()
            generation.sampler = None
        seq = generation.seq
        if seq is not None:
            if clear:
                self._drop(seq)
            seq.busy = False
            seq.last_used = time.monotonic()
            self._pool_changed = True
        with contextlib.suppress(ValueError):
            self._active.remove(generation)

    # -- scheduler thread: tokens, text, embeddings ----------------------------------------------

    def _tokenize(self, text: str, add_special: bool) -> list[int]:
        return tokenize_text(self._vocab, text, add_special)

    def _piece(self, token: int, special: bool = False) -> bytes:
        return token_piece(self._vocab, token, self._piece_buffer, special)

    def _special_text(self, token: int) -> str:
        return special_text(self._vocab, token, self._piece_buffer)

    def _embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        n_ctx = self.settings.n_ctx
        inputs = [self._tokenize(text, True) for text in texts]
        for index, tokens in enumerate(inputs):
            if len(tokens) > n_ctx:
                raise ContextLengthExceeded(
                    f"input[{index}] is {len(tokens)} tokens; this model's context is {n_ctx}",
                    param="input",
                )
        n_embd = self.info.n_embd  # type: ignore[union-attr]
        memory = llama_cpp.llama_get_memory(self._ctx)
        vectors: list[list[float]] = []
        start = 0
        while start < len(inputs):
            batch, row, seqs = self._batch, 0, 0
            while (
                start + seqs < len(inputs)
                and seqs < self.settings.n_seq_max
                and row + len(inputs[start + seqs]) <= n_ctx
            ):
                for position, token in enumerate(inputs[start + seqs]):
                    batch.token[row] = token
                    batch.pos[row] = position
                    batch.n_seq_id[row] = 1
                    batch.seq_id[row][0] = seqs
                    batch.logits[row] = 1
                    row += 1
                seqs += 1
            batch.n_tokens = row
            result = llama_cpp.llama_decode(self._ctx, batch)
            if result != 0:
                llama_cpp.llama_memory_clear(memory, True)
                raise EngineFailure(f"llama_decode failed ({result}) while embedding")
            for seq_id in range(seqs):
                pointer = llama_cpp.llama_get_embeddings_seq(self._ctx, seq_id)
                vectors.append(list(np.ctypeslib.as_array(pointer, shape=(n_embd,)).astype(float)))
            llama_cpp.llama_memory_clear(memory, True)
            start += seqs
        return vectors, sum(len(tokens) for tokens in inputs)


# -- llama.cpp helpers shared with `neuron.engine.vocab` (call them on one thread per vocab) ------


def model_chat_template(model: Any) -> str | None:
    """The GGUF's own chat template (`tokenizer.chat_template`), or None when it has none."""
    template = llama_cpp.llama_model_chat_template(model, None)
    return template.decode("utf-8", errors="replace") if template else None


def tokenize_text(vocab: Any, text: str, add_special: bool) -> list[int]:
    """`text` as token ids; `add_special` lets the tokenizer add BOS, and special tokens written
    in the text (`<|im_start|>`) are parsed as such, as a chat template's output needs."""
    data = text.encode("utf-8", errors="replace")
    capacity = len(data) + 8
    buffer = (llama_cpp.llama_token * capacity)()
    count = llama_cpp.llama_tokenize(vocab, data, len(data), buffer, capacity, add_special, True)
    if count < 0:  # more tokens than bytes (never for real vocabularies), retry with room
        capacity = -count
        buffer = (llama_cpp.llama_token * capacity)()
        count = llama_cpp.llama_tokenize(
            vocab, data, len(data), buffer, capacity, add_special, True
        )
    return list(buffer[:count])


def token_piece(vocab: Any, token: int, buffer: Any, special: bool = False) -> bytes:
    """The bytes of one token, written through `buffer` (a 256-byte ctypes string buffer)."""
    size = llama_cpp.llama_token_to_piece(vocab, token, buffer, 256, 0, special)
    if size < 0:
        bigger = ctypes.create_string_buffer(-size)
        size = llama_cpp.llama_token_to_piece(vocab, token, bigger, -size, 0, special)
        return bigger.raw[:size]
    return buffer.raw[:size]


def special_text(vocab: Any, token: int, buffer: Any) -> str:
    """The text of a special token (BOS, EOS), or "" when the vocabulary has none (-1)."""
    if token < 0:
        return ""
    return token_piece(vocab, token, buffer, special=True).decode("utf-8", errors="replace")
