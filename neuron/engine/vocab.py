"""Counting tokens for a model that is not loaded: its GGUF opened for the vocabulary only.

`Vocabulary` opens a GGUF with llama.cpp's `vocab_only` model parameter: the tokenizer and the
metadata (chat template, BOS/EOS), and nothing else: no weights in memory, no
context, no KV cache, no GPU memory. Counting therefore never loads, evicts or competes with a
served model. It tokenizes with the same helpers as `LlamaEngine` and exposes the same
`EngineInfo` fields the chat template needs, so a count equals what the loaded model counts.
`VocabularyCache` keeps the few most recently used vocabularies open, keyed by resolved path.

Invariants:
* every llama.cpp call runs in a worker thread (`asyncio.to_thread`), never on the event loop;
* one vocabulary is used by one thread at a time (its lock), so two requests never tokenize on
  the same llama.cpp vocabulary at once;
* a vocabulary is freed exactly once: when it has left the cache and no request still uses it,
  or when the cache closes; one that is freed is never handed out again;
* at most one open per path runs at a time (single flight), and an open whose requester went
  away still lands in the cache rather than leaking.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import llama_cpp

from neuron.engine.llama import init_backend, model_chat_template, special_text, tokenize_text
from neuron.engine.types import EngineInfo
from neuron.errors import InvalidModelFile, ModelUnavailable

DEFAULT_SIZE = 4  # vocabularies kept open (a large vocabulary is tens of MiB of host memory)
_SOURCES_KEPT = 64  # remembered source → path resolutions (many spellings may name one file)
_OPEN_TURNS = 3  # a vocabulary evicted between its open and its use is opened again, this often
_T = TypeVar("_T")


class Vocabulary:
    """One GGUF's tokenizer and metadata, opened `vocab_only`; see the module docstring.

    Made by `await Vocabulary.open(path)`, which raises `InvalidModelFile` when llama.cpp cannot
    read the file. `tokenize` may be awaited by many tasks at once: the calls take turns on a lock,
    each in a worker thread. `close` frees the vocabulary once (waiting for a call in progress);
    calls after it raise `ModelUnavailable`. `info` carries what prompts need (`chat_template`,
    `bos_token`, `eos_token`, `n_vocab`); a vocabulary has no context and llama.cpp reads no
    hyperparameters for it, so `n_ctx`, `n_ctx_train`, `n_embd` and `parallel` are 0.
    """

    def __init__(self, path: Path, model: Any, vocab: Any, info: EngineInfo) -> None:
        self.path = path
        self.info: EngineInfo | None = info
        self.users = 0  # requests holding it through `VocabularyCache.using`; event loop only
        self.retired = False  # left the cache or freed: never handed out again
        self._model = model
        self._vocab = vocab
        self._lock = threading.Lock()

    @classmethod
    async def open(cls, path: Path) -> Vocabulary:
        """Open `path` (the first part of a split GGUF) for its vocabulary, in a worker thread."""
        return await asyncio.to_thread(cls._load, path)

    @classmethod
    def _load(cls, path: Path) -> Vocabulary:
        init_backend()
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        params.n_gpu_layers = 0
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not model:
            raise InvalidModelFile(f"llama.cpp could not read the vocabulary of {path.name}")
        try:
            vocab = llama_cpp.llama_model_get_vocab(model)
            buffer = ctypes.create_string_buffer(256)
            info = EngineInfo(
                n_ctx=0,
                n_ctx_train=0,
                parallel=0,
                n_vocab=llama_cpp.llama_vocab_n_tokens(vocab),
                n_embd=0,
                embedding=False,
                chat_template=model_chat_template(model),
                bos_token=special_text(vocab, llama_cpp.llama_vocab_bos(vocab), buffer),
                eos_token=special_text(vocab, llama_cpp.llama_vocab_eos(vocab), buffer),
            )
            return cls(path, model, vocab, info)
        except BaseException:
            llama_cpp.llama_model_free(model)
            raise

    async def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        """`text` as token ids, exactly as the loaded model's engine would tokenize it."""
        return await asyncio.to_thread(
            self._locked, lambda: tokenize_text(self._vocab, text, add_special)
        )

    async def close(self) -> None:
        """Free llama.cpp's model (no-op when already freed)."""
        self.retired = True
        await asyncio.to_thread(self._free)

    def _locked(self, work: Callable[[], _T]) -> _T:
        with self._lock:
            if self._model is None:
                raise ModelUnavailable("the vocabulary was closed; retry", retry_after=1)
            return work()

    def _free(self) -> None:
        with self._lock:
            if self._model is not None:
                llama_cpp.llama_model_free(self._model)
                self._model = self._vocab = None


class VocabularyCache:
    """The `size` most recently used `Vocabulary`s, open, keyed by resolved GGUF path.

    `using(source, resolve)` yields the open vocabulary of a model source: `resolve` (a blocking
    function, run in a worker thread) turns the source into its GGUF path the first time; a source
    already resolved to an open vocabulary is not resolved again (no hub round trip per count).
    A miss opens the file, one open per path at a time. A vocabulary held by `using` is not freed
    while it is held, even if it leaves the cache meanwhile: the last holder frees it. `close`
    frees all the others and retires the cache. Event loop only; llama.cpp runs in threads.
    """

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self.size = max(1, size)
        self._open: OrderedDict[Path, Vocabulary] = OrderedDict()
        self._sources: dict[str, Path] = {}  # sources resolved to a path that is open
        self._opening: dict[Path, asyncio.Task[Vocabulary]] = {}
        self._closed = False

    def __len__(self) -> int:
        return len(self._open)

    @contextlib.asynccontextmanager
    async def using(self, source: str, resolve: Callable[[str], Path]) -> AsyncIterator[Vocabulary]:
        """Hold the vocabulary of `source` for the duration of one count."""
        if self._closed:
            raise ModelUnavailable("the neuron is stopping", retry_after=5)
        path = self._sources.get(source)
        if path is None or path not in self._open:
            path = await asyncio.to_thread(resolve, source)
        vocabulary = await self._get(path)
        self._remember(source, path)
        vocabulary.users += 1
        try:
            yield vocabulary
        finally:
            vocabulary.users -= 1
            if vocabulary.users == 0 and self._open.get(path) is not vocabulary:
                await vocabulary.close()  # it left the cache while held: the last holder frees it

    async def close(self) -> None:
        """Free every vocabulary nobody holds (the held ones are freed by their last holder)."""
        self._closed = True
        for task in list(self._opening.values()):
            with contextlib.suppress(Exception):
                await asyncio.shield(task)
        vocabularies = list(self._open.values())
        self._open.clear()
        self._sources.clear()
        for vocabulary in vocabularies:
            vocabulary.retired = True
            if vocabulary.users == 0:
                await vocabulary.close()

    def _remember(self, source: str, path: Path) -> None:
        self._sources.pop(source, None)
        self._sources[source] = path  # the newest last: the oldest are forgotten first
        while len(self._sources) > _SOURCES_KEPT:
            del self._sources[next(iter(self._sources))]

    async def _get(self, path: Path) -> Vocabulary:
        for _ in range(_OPEN_TURNS):
            vocabulary = self._open.get(path)
            if vocabulary is not None:
                self._open.move_to_end(path)
                return vocabulary
            task = self._opening.get(path)
            if task is None:
                task = asyncio.get_running_loop().create_task(self._open_into_cache(path))
                task.add_done_callback(_retrieve)
                self._opening[path] = task
            vocabulary = await asyncio.shield(task)
            # Other opens ran while this request waited to resume: it may have been evicted.
            if not vocabulary.retired:
                return vocabulary
        raise ModelUnavailable(
            "too many vocabularies are being opened at once; retry", retry_after=1
        )

    async def _open_into_cache(self, path: Path) -> Vocabulary:
        try:
            vocabulary = await Vocabulary.open(path)
        finally:
            self._opening.pop(path, None)
        if self._closed:
            await vocabulary.close()
            raise ModelUnavailable("the neuron is stopping", retry_after=5)
        self._open[path] = vocabulary
        while len(self._open) > self.size:
            old_path, old = self._open.popitem(last=False)
            old.retired = True
            for source in [s for s, p in self._sources.items() if p == old_path]:
                del self._sources[source]
            if old.users == 0:
                await old.close()
        return vocabulary


def _retrieve(task: asyncio.Task[Vocabulary]) -> None:
    # Every waiter may have gone away (clients that left): the failure is then nobody's to raise.
    if not task.cancelled():
        task.exception()
