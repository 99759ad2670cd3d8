"""A real cortex gateway in front of `bench/stub_upstream.py`, a fast fake neuron.

For gateway tests that need routing, validation and relaying but no real inference: the stub
reports one model ("stub", ready and idle) and answers chat, completions, embeddings and
tokenize at once with fixed bodies.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.conftest import ROOT, CortexProcess, free_port

STUB_MODELS = """
[[models]]
id = "stub"
n_ctx = 2048
aliases = ["stub-alias"]

[[models]]
id = "cold"
n_ctx = 512
"""


class StubNeuron:
    """`bench/stub_upstream.py` in a child process; quacks enough like a neuron for cortex."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                *(sys.executable, str(ROOT / "bench" / "stub_upstream.py")),
                *("--port", str(self.port), "--chunks", "3", "--chunk-delay-ms", "1", *args),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url + "/discovery", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise TimeoutError("the stub upstream did not come up")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@contextmanager
def stub_gateway(
    workdir: Path,
    *,
    gateway_toml: str = "",
    stub_args: tuple[str, ...] = (),
    stub: StubNeuron | None = None,
    tokens: dict[str, str] | None = None,
    metrics: bool = False,
) -> Iterator[CortexProcess]:
    """A gateway in front of `stub` (one started with `stub_args` when None), both stopped after."""
    stub = stub or StubNeuron(*stub_args)
    cortex = CortexProcess(
        workdir,
        {"stub": stub},  # type: ignore[dict-item]  # CortexProcess needs only `.url`
        STUB_MODELS,
        gateway_toml=gateway_toml,
        tokens=tokens,
        metrics=metrics,
    )
    try:
        cortex.wait_ready()
        yield cortex
    finally:
        cortex.stop()
        stub.stop()
