"""`cortex top`'s loop: poll `GET /admin/fleet`, draw `view.render` full-screen, read keys.

Invariants:
* One frame per `refresh_s`: poll, render at the console's current size, then wait for a key
  for what is left of the period (select() on stdin), so `q` answers within one frame.
* The gateway going away never ends the loop: the last good fleet stays on screen (dimmed under
  a "disconnected — retrying" banner) and every frame tries again, so it reconnects by itself.
* The terminal is restored on every exit path (q, Ctrl-C, an exception): cbreak mode is undone
  by a `finally`, and rich's `Live(screen=True)` leaves the alternate screen on exit.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator
from typing import Any

import httpx
from rich.console import Console
from rich.live import Live

from cortex.top.view import render

QUIT_KEYS = frozenset("qQ")
# Short timeouts: a frame waits at most this long for a hung gateway before saying so.
TIMEOUT = httpx.Timeout(2.0, connect=1.0)


def run_top(url: str, key: str | None, refresh_s: float = 1.0) -> int:
    """Run the live view until `q` (returns 0) or Ctrl-C (returns 130)."""
    console = Console()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    source = url.rstrip("/")
    fleet: dict[str, Any] | None = None
    last_ok: float | None = None
    try:
        with (
            httpx.Client(base_url=source, headers=headers, timeout=TIMEOUT) as client,
            _cbreak(sys.stdin) as keys,
            Live(console=console, screen=True, auto_refresh=False) as live,
        ):
            while True:
                started = time.monotonic()
                fresh, error = _poll(client)
                if fresh is not None:
                    fleet, last_ok = fresh, started
                elif last_ok is not None:
                    error = f"{error} · last update {time.monotonic() - last_ok:.0f}s ago"
                width, height = console.size
                frame = render(fleet, width=width, height=height, error=error, source=source)
                live.update(frame, refresh=True)
                wait = max(0.0, refresh_s - (time.monotonic() - started))
                if QUIT_KEYS & set(keys(wait)):
                    return 0
    except KeyboardInterrupt:
        return 130


def _poll(client: httpx.Client) -> tuple[dict[str, Any] | None, str | None]:
    """(fleet, None) on success, (None, why) otherwise; never raises for network trouble."""
    try:
        response = client.get("/admin/fleet")
    except httpx.HTTPError as exc:
        return None, _why(exc)
    if response.status_code in (401, 403):
        return None, f"HTTP {response.status_code}: the gateway wants an admin key (--key)"
    if response.status_code != 200:
        return None, f"HTTP {response.status_code} from /admin/fleet"
    try:
        body = response.json()
    except ValueError:
        return None, "/admin/fleet did not answer JSON"
    if not isinstance(body, dict):
        return None, "/admin/fleet did not answer a JSON object"
    return body, None


def _why(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "cannot connect"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return type(exc).__name__


@contextlib.contextmanager
def _cbreak(stream: Any) -> Iterator[Callable[[float], str]]:
    """Yields `keys(timeout) -> str`: what was typed within `timeout` seconds, unbuffered.

    cbreak (not raw) keeps ISIG, so Ctrl-C still raises KeyboardInterrupt. Without a terminal
    on stdin (piped, CI) keys are never read and `keys` just sleeps out the timeout. A resize
    does not wake the wait; the next frame (at most `timeout` later) picks up the new size.
    """
    try:
        fd = stream.fileno()
        saved = termios.tcgetattr(fd)
    except (AttributeError, OSError, ValueError, termios.error):
        saved = None
    if saved is None:
        yield _sleep
        return

    def keys(timeout: float) -> str:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return ""
        data = os.read(fd, 64)
        if not data:  # EOF on stdin: nothing more will come, keep the cadence anyway
            time.sleep(timeout)
        return data.decode(errors="replace")

    try:
        tty.setcbreak(fd)
        yield keys
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _sleep(timeout: float) -> str:
    time.sleep(timeout)
    return ""
