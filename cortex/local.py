"""Local mode: `cortex serve` with no config anywhere.

Starts one neuron as a child process on loopback and builds a catalogue of the demo models
(when their packages are installed) and every GGUF in the neuron's default model dir. The
child is stopped (SIGTERM: it drains) when the gateway stops.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from cortex.config import GatewayConfig, NeuronEndpoint
from cortex.fleet.state import CatalogueEntry

log = logging.getLogger("cortex.local")

LOCAL_NEURON_PORT = 13131
_SPLIT_PART = re.compile(r"-(\d{5})-of-\d{5}$")


def local_catalogue(model_dirs: list[Path]) -> list[CatalogueEntry]:
    entries = []
    try:
        from neuron.sources import demo_models
    except ImportError:  # gateway-only install: no neuron, no demo models
        demo = {}
    else:
        demo = demo_models()
    for name in demo:
        entries.append(CatalogueEntry(id=name, n_ctx=4096))
    for directory in model_dirs:
        for path in sorted(directory.glob("*.gguf")) if directory.is_dir() else ():
            split = _SPLIT_PART.search(path.stem)
            if split and split.group(1) != "00001":
                continue  # later parts of a split GGUF: the first part stands for the model
            model_id = path.stem[: split.start()] if split else path.stem
            entries.append(CatalogueEntry(id=model_id, source=path.name))
    return entries


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _any_free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


HEALTH_RETRY_S = 0.1  # between two /health probes while the local neuron starts


class LocalNeuron:
    """The neuron child process of local mode."""

    def __init__(self) -> None:
        port = LOCAL_NEURON_PORT if _port_free(LOCAL_NEURON_PORT) else _any_free_port()
        self.endpoint = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "neuron.cli", "--listen", f"127.0.0.1:{port}"],
            # Own process group: Ctrl-C reaches the gateway, which stops the child in order.
            start_new_session=True,
            env=os.environ.copy(),
        )

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the local neuron exited with status {self.proc.returncode}")
            try:
                if httpx.get(self.endpoint + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass  # not listening yet
            # Also after an answer that is not 200 (a neuron still starting, or another
            # program on the port): asking again at once would spin a core.
            time.sleep(HEALTH_RETRY_S)
        raise TimeoutError("the local neuron did not start")

    def stop(self, timeout_s: float = 30) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def local_config(neuron: LocalNeuron, listen: str) -> GatewayConfig:
    from neuron.config import default_model_dirs

    return GatewayConfig(
        listen=listen,
        metrics_listen=None,
        neurons=(NeuronEndpoint(name="local", endpoint=neuron.endpoint),),
        models=tuple(local_catalogue(list(default_model_dirs()))),
        poll_interval_s=1.0,
    )
