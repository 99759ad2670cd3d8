"""What the neuron asks of the process around llama.cpp: memory hygiene and the GPU backend.

glibc keeps freed pages unless told otherwise.

Without these, RSS grows over load/unload cycles although nothing leaks: every engine gets a
fresh thread, glibc gives new threads new malloc arenas (up to 8 per core) that keep what was
freed, and freed heap pages stay mapped until trimmed.
"""

from __future__ import annotations

import contextlib
import ctypes

_M_ARENA_MAX = -8  # glibc's mallopt parameter number


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's per-thread malloc arenas; call once at startup, before worker threads."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, arenas)


def return_freed_memory() -> None:
    """Hand freed heap pages back to the OS (after a model is freed)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def supports_gpu_offload() -> bool:
    """Whether the installed llama.cpp was built with a GPU backend (False without llama_cpp)."""
    try:
        import llama_cpp
    except ImportError:
        return False
    return bool(llama_cpp.llama_supports_gpu_offload())
