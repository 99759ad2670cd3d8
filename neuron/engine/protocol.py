"""The `Engine` protocol: everything the neuron asks of a loaded model.

The API handlers, tool calling and the manager talk to a model only through this; they never
see llama.cpp. `LlamaEngine` is the real one; `FakeEngine` is a deterministic stand-in for fast
in-process tests of the manager, admission and the API. `Tokenizer` is the part of it that
counting tokens needs, which a vocabulary-only `engine.vocab.Vocabulary` also provides.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

from neuron.engine.types import EngineInfo, EngineStats, Finished, GenerateRequest, Piece


class Engine(Protocol):
    """One loaded model. `start` before use, `close` once; all methods run on the event loop
    and never block it. `generate` may run many times concurrently."""

    model_id: str
    info: EngineInfo | None

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def cancel_all(self) -> None: ...

    def generate(self, request: GenerateRequest) -> AsyncGenerator[Piece | Finished, None]: ...

    async def tokenize(self, text: str, *, add_special: bool = True) -> list[int]: ...

    async def detokenize(self, tokens: list[int]) -> str: ...

    async def embed(self, texts: list[str]) -> tuple[list[list[float]], int]: ...

    def stats(self) -> EngineStats: ...


class Tokenizer(Protocol):
    """What counting tokens needs of a model: `info` (its chat template, BOS and EOS) and its
    tokenizer. Every `Engine` is one, and so is a vocabulary-only `Vocabulary`; `tokenize` runs
    off the event loop and never blocks it."""

    info: EngineInfo | None

    async def tokenize(self, text: str, *, add_special: bool = True) -> list[int]: ...
