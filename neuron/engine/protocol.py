"""The `Engine` protocol: everything the neuron asks of a loaded model.

The API handlers, tool calling and the manager talk to a model only through this; they never
see llama.cpp. `LlamaEngine` is the real one; `FakeEngine` is a deterministic stand-in for fast
in-process tests of the manager, admission and the API.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
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

    def generate(self, request: GenerateRequest) -> AsyncIterator[Piece | Finished]: ...

    async def tokenize(self, text: str, *, add_special: bool = True) -> list[int]: ...

    async def detokenize(self, tokens: list[int]) -> str: ...

    async def embed(self, texts: list[str]) -> tuple[list[list[float]], int]: ...

    def stats(self) -> EngineStats: ...
