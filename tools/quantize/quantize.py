"""One GGUF → one quantized GGUF through ``llama_cpp.llama_model_quantize``.

Job: fill llama.cpp's ``llama_model_quantize_params`` (ftype, threads, ``allow_requantize``, the
importance matrix as a NULL-terminated ``llama_model_imatrix_data`` array, and the
``quantize.imatrix.*`` metadata llama-quantize records, as ``kv_overrides``), run the quantizer
on a worker thread, and report per-tensor progress from llama.cpp's log lines
(``[  12/ 272] blk.0.attn_q.weight …``); the C API has no progress callback.

Invariants:
* The output is written as ``NAME.part`` and renamed into place only on success; a failure or
  an interruption leaves no partial file behind under the final name.
* A failure raises `RunError` carrying llama.cpp's own reason (from its log).
* Every ctypes buffer handed to llama.cpp (names, float arrays, override structs) stays
  referenced until the call returns.
* ``allow_requantize`` is passed as given; the caller decides (the CLI sets it for quantized
  sources it accepted).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import RunError
from .imatrix import Imatrix
from .llama_log import LlamaLog, capture_llama_log
from .quant_types import QUANT_TYPES, QuantType

__all__ = ["QuantizeOutcome", "available_type_names", "library_version", "quantize_file"]

_TENSOR_LINE = re.compile(r"^\[\s*(\d+)/\s*(\d+)\]\s+(\S+)")
_FALLBACK_LINE = re.compile(r"(\d+) of (\d+) tensor\(s\) required fallback quantization")


@dataclass(frozen=True)
class QuantizeOutcome:
    """One finished quantization: the output file (already under its final name), the seconds it
    took, and how many tensors llama.cpp had to store in a fallback type."""

    path: Path
    seconds: float
    fallback_tensors: int  # tensors llama.cpp put in another type (row length not a block multiple)


def library_version() -> str:
    import llama_cpp

    return getattr(llama_cpp, "__version__", "unknown")


def available_type_names() -> list[str]:
    """The `QUANT_TYPES` this llama-cpp-python has a ``LLAMA_FTYPE_MOSTLY_*`` constant for."""
    import llama_cpp

    return [t.name for t in QUANT_TYPES if isinstance(getattr(llama_cpp, t.ftype_const, None), int)]


def quantize_file(
    source: Path,
    output: Path,
    qtype: QuantType,
    *,
    threads: int,
    allow_requantize: bool,
    imatrix: Imatrix | None = None,
    on_tensor: Callable[[int, int, str], None] | None = None,
) -> QuantizeOutcome:
    """``on_tensor(i, n, name)``: llama.cpp started tensor ``i`` of ``n`` (1-based); called on
    the worker thread. The calling thread only waits, so Ctrl-C reaches it at once (llama.cpp
    cannot be stopped: its partial output is deleted and the worker is abandoned)."""
    import llama_cpp

    ftype = getattr(llama_cpp, qtype.ftype_const, None)
    if not isinstance(ftype, int):
        raise RunError(f"{qtype.name} is not supported by this llama-cpp-python")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    params.allow_requantize = allow_requantize
    keep_alive: list[Any] = []
    if imatrix is not None:
        params.imatrix = _imatrix_array(imatrix, keep_alive)
        params.kv_overrides = _imatrix_overrides(imatrix, keep_alive)

    part = output.with_name(output.name + ".part")
    with contextlib.suppress(FileNotFoundError):
        part.unlink()
    log = LlamaLog()
    fallback = 0

    def listen(text: str) -> None:
        nonlocal fallback
        match = _TENSOR_LINE.match(text)
        if match and on_tensor is not None:
            on_tensor(int(match[1]), int(match[2]), match[3])
        found = _FALLBACK_LINE.search(text)
        if found:
            fallback = int(found[1])

    log.listener = listen
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            result["rc"] = llama_cpp.llama_model_quantize(
                os.fsencode(source), os.fsencode(part), ctypes.byref(params)
            )
        except BaseException as exc:  # reported on the calling thread
            result["exc"] = exc

    started = time.monotonic()
    with capture_llama_log(log):
        worker = threading.Thread(target=work, name=f"quantize-{qtype.name}", daemon=True)
        worker.start()
        try:
            while worker.is_alive():
                worker.join(0.1)
        except BaseException:
            # Interrupted: llama.cpp cannot be stopped; drop what it writes.
            with contextlib.suppress(OSError):
                part.unlink()
            raise
    seconds = time.monotonic() - started
    del keep_alive
    if "exc" in result:
        _discard(part)
        raise RunError(f"{qtype.name}: llama_model_quantize raised {result['exc']!r}")
    if result.get("rc") != 0 or not part.is_file():
        _discard(part)
        reason = log.failure() or f"llama_model_quantize returned {result.get('rc')}"
        raise RunError(f"{qtype.name}: llama.cpp failed to quantize: {reason}")
    os.replace(part, output)
    return QuantizeOutcome(path=output, seconds=seconds, fallback_tensors=fallback)


def _discard(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _imatrix_array(imatrix: Imatrix, keep_alive: list[Any]) -> Any:
    import llama_cpp

    entries = list(imatrix.entries.items())
    array = (llama_cpp.llama_model_imatrix_data * (len(entries) + 1))()  # zeroed: terminator
    float_p = ctypes.POINTER(ctypes.c_float)
    for slot, (name, values) in zip(array, entries, strict=False):
        encoded = name.encode("utf-8")
        keep_alive.append(encoded)
        keep_alive.append(values)
        slot.name = encoded
        slot.data = values.ctypes.data_as(float_p)
        slot.size = values.size
    keep_alive.append(array)
    return ctypes.cast(array, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))


def _imatrix_overrides(imatrix: Imatrix, keep_alive: list[Any]) -> Any:
    """The metadata llama-quantize writes when it used an importance matrix."""
    import llama_cpp

    items: list[tuple[str, int | str]] = [
        ("quantize.imatrix.file", imatrix.path.name),
        ("quantize.imatrix.entries_count", len(imatrix.entries)),
    ]
    if imatrix.datasets:
        items.append(("quantize.imatrix.dataset", imatrix.datasets[0]))
    if imatrix.chunk_count > 0:
        items.append(("quantize.imatrix.chunks_count", imatrix.chunk_count))
    array = (llama_cpp.llama_model_kv_override * (len(items) + 1))()  # zeroed: terminator
    for slot, (key, value) in zip(array, items, strict=False):
        slot.key = key.encode("utf-8")[:127]
        if isinstance(value, int):
            slot.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
            slot.value.val_i64 = value
        else:
            slot.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
            slot.value.val_str = _truncate_utf8(value, 127)
    keep_alive.append(array)
    return ctypes.cast(array, ctypes.POINTER(llama_cpp.llama_model_kv_override))


def _truncate_utf8(text: str, limit: int) -> bytes:
    encoded = text.encode("utf-8")[:limit]
    return encoded.decode("utf-8", "ignore").encode("utf-8")
