"""cortex.local.LocalNeuron.wait_ready against a stub HTTP server: it polls `/health` at a
steady pace whatever the answer, and gives up at its deadline."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cortex.local import HEALTH_RETRY_S, LocalNeuron


class _Running:
    """Stands in for the child process: still running."""

    returncode = None

    def poll(self) -> None:
        return None


@pytest.fixture
def unhealthy() -> Iterator[tuple[str, list[str]]]:
    """A server that answers every /health with 503 and logs each request."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(503)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_a_health_answer_other_than_200_is_asked_again_at_a_steady_pace(
    unhealthy: tuple[str, list[str]],
) -> None:
    endpoint, seen = unhealthy
    neuron = object.__new__(LocalNeuron)  # no child process: the stub plays the neuron
    neuron.endpoint = endpoint
    neuron.proc = _Running()  # type: ignore[assignment]
    window_s = 0.5
    with pytest.raises(TimeoutError):
        neuron.wait_ready(timeout_s=window_s)
    # At one probe per HEALTH_RETRY_S about ten fit in the window; without the pause after a
    # 503 the loop asks as fast as the server answers (11 times in 0.5 s here, a core spinning).
    assert 3 <= len(seen) <= window_s / HEALTH_RETRY_S + 2
    assert set(seen) == {"/health"}
