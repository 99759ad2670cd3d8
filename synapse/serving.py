"""Run a Sanic app in this process until SIGTERM or SIGINT, whenever the signal comes.

Why not `app.run(single_process=True)`: Sanic drives its loop with several `run_until_complete`
calls (the before-start listeners, opening the socket, the after-start listeners) before
`run_forever`, and installs its signal handlers between them, while the loop is not running. A
SIGTERM sent right after the first answer was lost there about one start in fifteen: no
handler ran, the process kept serving until a second signal, and systemd would have waited out
`TimeoutStopSec` and killed the service.

`serve` owns the loop instead: one `asyncio.Runner` on uvloop, with its signal handlers
installed before the socket is bound, through Sanic's documented low-level server API. The
order matches Sanic's own: start-up, before-start listeners, accept connections, after-start
listeners; on a signal, before-stop listeners, stop accepting, let the open requests finish
for up to `GRACEFUL_SHUTDOWN_TIMEOUT`, drop what is left, after-stop listeners.

Sanic's `app.add_task` needs Sanic's own runner and does nothing here: apps start plain
asyncio tasks in their listeners and cancel them in their stop listeners.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

from sanic import Sanic

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_DRAIN_POLL_S = 0.1


def serve(app: Sanic, host: str, port: int) -> None:
    """Serve `app` on host:port in this process; returns once a stop signal has shut it down.

    Raises OSError when the address cannot be bound (after the before-start listeners ran).
    """
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_serve(app, host, port))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # Sanic installs uvloop on Linux; plain asyncio elsewhere
        return None
    return uvloop.new_event_loop


async def _serve(app: Sanic, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    app.config.MOTD = False
    asked = asyncio.Event()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, asked.set)
    server = await app.create_server(
        host=host,
        port=port,
        access_log=False,
        asyncio_server_kwargs={"start_serving": False},
    )
    if server is None:  # Sanic returns None only when it is told not to serve
        return
    await server.startup()
    await server.before_start()
    await server.start_serving()
    await server.after_start()
    await asked.wait()
    await server.before_stop()
    await server.close()
    await _drain(server.connections, app.config.GRACEFUL_SHUTDOWN_TIMEOUT)
    await server.after_stop()


async def _drain(connections: set, grace_s: float) -> None:
    """Close idle connections now, busy ones when they finish, and abort any left after grace."""
    deadline = time.monotonic() + grace_s
    while connections and time.monotonic() < deadline:
        for connection in list(connections):
            connection.close_if_idle()  # a keep-alive connection goes once its answer is sent
        await asyncio.sleep(_DRAIN_POLL_S)
    for connection in list(connections):
        connection.abort()
