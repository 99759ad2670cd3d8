"""What the neuron asks of the process around llama.cpp: memory hygiene and the GPU backend.

glibc keeps freed pages unless told otherwise. Without the settings here, RSS grows over
load/unload cycles although nothing leaks:

* every engine gets a fresh thread, and glibc gives new threads new malloc arenas (up to 8 per
  core) that keep what was freed;
* glibc's mmap threshold is dynamic: once a large mmapped block (a KV cache, a compute buffer)
  is freed, the threshold rises to its size (up to 32 MiB), so the next model's buffers come
  from the heap instead. Their holes then fill with small allocations of requests in flight and
  can no longer be given back. Under four clients with a model unloaded every 3 s that was
  3–5 MiB a minute without end; a fixed 1 MiB threshold (which also stops the dynamic rule)
  held it flat;
* freed heap pages stay mapped until trimmed.
"""

from __future__ import annotations

import contextlib
import ctypes

# glibc's mallopt parameter numbers
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 1 << 20


def tune_malloc(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas and fix its mmap threshold at 1 MiB (see the module docstring).

    Call once at startup, before any worker thread; a no-op where libc is not glibc.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_ARENA_MAX, arenas)
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


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
