"""Shared fixtures: the two demo GGUFs, free loopback ports, and real neuron processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def smollm_path() -> Path:
    from neuron.sources import resolve_source

    return resolve_source("smollm2-135m-instruct", model_dirs=(), hf_cache=None).primary


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    from neuron.sources import resolve_source

    return resolve_source("gemma3-270m", model_dirs=(), hf_cache=None).primary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class NeuronProcess:
    """A real `neuron` daemon in a child process, on a loopback port."""

    def __init__(self, workdir: Path, toml: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / f"neuron-{self.port}.toml"
        self.config_path.write_text(f'listen = "127.0.0.1:{self.port}"\n' + toml)
        self.log_path = workdir / f"neuron-{self.port}.log"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self._log = self.log_path.open("ab")
        self.proc = self._spawn()

    def _spawn(self) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "neuron.cli", "--config", str(self.config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=ROOT,
        )

    def restart(self) -> None:
        """Start the daemon again on the same port with the same config (after a kill)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc = self._spawn()
        self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"neuron exited early:\n{self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"neuron did not come up:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")


def _neuron_starter(workdir: Path) -> Iterator:
    started: list[NeuronProcess] = []

    def start(toml: str = "", env: dict[str, str] | None = None, wait: bool = True):
        neuron = NeuronProcess(workdir, toml, env)
        started.append(neuron)
        if wait:
            neuron.wait_ready()
        return neuron

    yield start
    for neuron in started:
        neuron.stop()


@pytest.fixture
def start_neuron(tmp_path: Path) -> Iterator:
    """Start neurons that live for one test."""
    yield from _neuron_starter(tmp_path)


@pytest.fixture(scope="module")
def start_module_neuron(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Start neurons shared by the tests of one module."""
    yield from _neuron_starter(tmp_path_factory.mktemp("neurons"))


class CortexProcess:
    """A real `cortex serve` gateway in a child process, in front of the given neurons."""

    def __init__(
        self,
        workdir: Path,
        neurons: dict[str, NeuronProcess],
        models_toml: str,
        gateway_toml: str = "",
        eviction_toml: str = "",
        tokens: dict[str, str] | None = None,
        metrics: bool = False,
        poll_interval_s: float = 0.5,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics_port = free_port() if metrics else None
        metrics_listen = f"127.0.0.1:{self.metrics_port}" if metrics else ""
        self.models_path = workdir / f"models-{self.port}.toml"
        self.models_path.write_text(models_toml)
        blocks = [
            f'[[neurons]]\nname = "{name}"\nendpoint = "{neuron.url}"\n'
            + (f'token = "{tokens[name]}"\n' if tokens and name in tokens else "")
            for name, neuron in neurons.items()
        ]
        self.config_path = workdir / f"cortex-{self.port}.toml"
        self.config_path.write_text(
            f'models_config = "{self.models_path.name}"\n'
            f'[gateway]\nlisten = "127.0.0.1:{self.port}"\nmetrics_listen = "{metrics_listen}"\n'
            f"poll_interval_s = {poll_interval_s}\ndown_after_misses = 2\n"
            "keepalive_interval_s = 0.2\n"
            + gateway_toml
            + "\n[eviction]\n"
            + eviction_toml
            + "\n"
            + "\n".join(blocks)
        )
        self.log_path = workdir / f"cortex-{self.port}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cortex.cli", "serve", "--config", str(self.config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            cwd=ROOT,
        )
        self.expected_nodes = len(neurons)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cortex exited early:\n{self.log()}")
            try:
                health = httpx.get(self.url + "/health", timeout=1).json()
                if health["nodes_up"] == self.expected_nodes:
                    return
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"cortex did not come up:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def fleet(self, headers: dict[str, str] | None = None) -> dict:
        return httpx.get(self.url + "/admin/fleet", headers=headers, timeout=10).json()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def write_split_gguf(source: Path, dest: Path, max_tensors: int = 100) -> list[Path]:
    """Rewrite a GGUF as a split GGUF (`name-0000k-of-0000n.gguf`), tensors kept byte for byte,
    the way llama.cpp's gguf-split writes one. Returns the parts in order."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    reader = GGUFReader(source)
    arch = str(reader.fields["general.architecture"].contents())
    writer = GGUFWriter(dest, arch=arch, split_max_tensors=max_tensors)
    for name, field in reader.fields.items():
        if name.startswith(("GGUF.", "split.")) or name == "general.architecture":
            continue
        sub_type = field.types[-1] if field.types[0] == GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), field.types[0], sub_type=sub_type)
    for tensor in reader.tensors:
        writer.add_tensor(
            tensor.name, tensor.data, raw_shape=tensor.data.shape, raw_dtype=tensor.tensor_type
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return sorted(dest.parent.glob(f"{dest.stem}-*-of-*.gguf"))
