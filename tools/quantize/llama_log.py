"""Route llama.cpp's log into Python while the tool calls into it, then hand it back.

llama.cpp logs through one process-wide callback (``llama_log_set``). `capture_llama_log`
installs ours — it keeps the last lines (for error messages) and passes every raw fragment to an
optional listener (the per-tensor progress bar) — and on exit reinstalls llama-cpp-python's own
callback, quietened. Fragments are not always whole lines (llama.cpp prints a tensor's header,
then later its size), so lines are assembled before they are kept.

The callback runs on whichever thread is inside llama.cpp, holding the GIL; it never raises
(an exception inside a ctypes callback would only be printed).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import threading
from collections import deque
from collections.abc import Callable, Iterator

__all__ = ["LlamaLog", "capture_llama_log"]

# ggml_log_level of the llama.cpp this llama-cpp-python vendors (its _logger.py still documents
# the older order): 0 none, 1 debug, 2 info, 3 warn, 4 error, 5 continue the previous message.
_LEVEL_ERROR = 4
_LEVEL_CONT = 5


class LlamaLog:
    """What llama.cpp logged while captured: the last `keep` whole lines with their levels, and
    every raw fragment handed to `listener` as it arrives.

    `feed` runs on whichever thread is inside llama.cpp; the lines are kept under a lock, and
    `listener` is called outside it, on that thread.
    """

    def __init__(self, keep: int = 400) -> None:
        self.lines: deque[tuple[int, str]] = deque(maxlen=keep)
        self.listener: Callable[[str], None] | None = None
        self._partial = ""
        self._partial_level = 1
        self._lock = threading.Lock()

    def feed(self, level: int, text: str) -> None:
        with self._lock:
            if level != _LEVEL_CONT and (not self._partial or level > self._partial_level):
                self._partial_level = level
            self._partial += text
            while "\n" in self._partial:
                line, self._partial = self._partial.split("\n", 1)
                if line.strip():
                    self.lines.append((self._partial_level, line))
        listener = self.listener
        if listener is not None:
            listener(text)

    def clear(self) -> None:
        with self._lock:
            self.lines.clear()
            self._partial = ""

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def failure(self) -> str | None:
        """llama.cpp's own reason for the last failure, if it logged one."""
        for _, line in reversed(self.lines):
            for marker in ("failed to quantize:", "failed to load model", "error loading model:"):
                if marker in line:
                    return line.split(marker, 1)[1].strip(" :") or line.strip()
        errors = [line.strip() for level, line in self.lines if level == _LEVEL_ERROR]
        return errors[-1] if errors else None


@contextlib.contextmanager
def capture_llama_log(log: LlamaLog | None = None) -> Iterator[LlamaLog]:
    """Send llama.cpp's log to ``log`` (and Python-side prints of llama-cpp-python to a
    throw-away buffer) for the duration."""
    import llama_cpp

    log = log or LlamaLog()

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        with contextlib.suppress(BaseException):  # nothing may escape into C
            log.feed(level, text.decode("utf-8", "replace") if text else "")

    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield log
    finally:
        _restore_default_log()
        del callback


def _restore_default_log() -> None:
    import llama_cpp

    try:
        from llama_cpp import _logger

        _logger.set_verbose(False)
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
    except Exception:
        llama_cpp.llama_log_set(None, ctypes.c_void_p(0))
