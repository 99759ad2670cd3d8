"""What every integration test gets: the OpenAI and Anthropic SDK clients it makes are closed
when it ends.

A client left open keeps its keep-alive socket until the garbage collector finds it, which may
be during a later test; with warnings as errors, that later test then fails for a socket it
never opened. Closing them here keeps each test's sockets inside the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest


@pytest.fixture(autouse=True)
def _sdk_clients_are_closed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    made: list[Any] = []
    for cls in (openai.OpenAI, anthropic.Anthropic):
        original = cls.__init__

        def init(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> None:
            _original(self, *args, **kwargs)
            made.append(self)

        monkeypatch.setattr(cls, "__init__", init)
    yield
    for client in made:
        client.close()
