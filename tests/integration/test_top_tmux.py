"""`cortex top` on a real terminal: tmux runs it and `capture-pane` reads the screen.

* Against a live fleet (one real neuron with a fake 8 GiB GPU behind a real gateway, SmolLM2
  loaded): the node, the model, a VRAM bar and the event feed show; `q` exits 0.
* Against a stub gateway on a fixed port that goes away and comes back: "disconnected —
  retrying" shows over the last fleet, fresh data replaces it on reconnect, and the key is sent.
* Ctrl-C exits 130. Every exit must leave the terminal modes as they were (cbreak undone).

Sessions run on a private tmux socket, never the user's server, and the server is killed
afterwards. tmux is a test requirement: a missing tmux fails loudly instead of skipping.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from cortex.top.view import FREE_CHAR, MODEL_CHARS
from tests.conftest import ROOT, CortexProcess, free_port

pytestmark = pytest.mark.slow  # real neurons, real models

MODELS_TOML = """
[[models]]
id = "smol"
source = "smollm2-135m-instruct"
n_ctx = 1024
"""
SESSION = "cortex-top-test"


@pytest.fixture
def tmux() -> Iterator[list[str]]:
    """The tmux command prefix for a private server, killed afterwards whatever happened."""
    binary = shutil.which("tmux")
    if binary is None:
        pytest.fail("tmux is not installed: this test needs it (apt-get install -y tmux)")
    # -L: a named socket in tmux's own short directory (-S under tmp_path can pass the 108-byte
    # limit of a socket path); the server may leave the socket file behind, so remove it.
    name = f"cortex-top-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    socket = Path(os.environ.get("TMUX_TMPDIR", "/tmp"), f"tmux-{os.getuid()}", name)
    prefix = [binary, "-L", name]
    try:
        yield prefix
    finally:
        subprocess.run([*prefix, "kill-server"], capture_output=True, timeout=10)
        socket.unlink(missing_ok=True)


@pytest.fixture
def live_fleet(start_neuron, tmp_path: Path) -> Iterator[CortexProcess]:
    neuron = start_neuron("vram_headroom_mb = 0\n", env={"NEURON_FAKE_GPUS": "0:8GiB"})
    cortex = CortexProcess(tmp_path, {"gpu-box": neuron}, MODELS_TOML)
    try:
        cortex.wait_ready()
        loaded = httpx.post(f"{cortex.url}/admin/models/smol/load", timeout=120)
        assert loaded.status_code == 200, loaded.text
        yield cortex
    finally:
        cortex.stop()


def capture(tmux: list[str]) -> str:
    done = subprocess.run(
        [*tmux, "capture-pane", "-p", "-t", SESSION], capture_output=True, text=True, timeout=10
    )
    return done.stdout


def alive(tmux: list[str]) -> bool:
    done = subprocess.run([*tmux, "has-session", "-t", SESSION], capture_output=True, timeout=10)
    return done.returncode == 0


def start_top(tmux: list[str], url: str, key: str | None, tmp_path: Path) -> Path:
    """Run `run_top` in a 120×40 tmux session; returns the file its exit status lands in."""
    rc_file = tmp_path / "top.rc"
    program = f"import sys; from cortex.top.run import run_top; sys.exit(run_top({url!r}, {key!r}))"
    err, tty_file = shlex.quote(str(tmp_path / "top.err")), shlex.quote(str(tmp_path / "tty"))
    # The exit status goes to rc_file; "restored" to tty_file when the terminal modes after the
    # program equal those before it (cbreak undone).
    shell = (
        f"cd {shlex.quote(str(ROOT))} && before=$(stty -g) && "
        f"{shlex.quote(sys.executable)} -c {shlex.quote(program)} 2>{err}; "
        f'rc=$?; [ "$(stty -g)" = "$before" ] && echo restored > {tty_file}; '
        f"echo $rc > {shlex.quote(str(rc_file))}"
    )
    subprocess.run(
        [*tmux, "new-session", "-d", "-s", SESSION, "-x", "120", "-y", "40", shell],
        check=True,
        timeout=10,
    )
    return rc_file


def wait_screen(tmux: list[str], tmp_path: Path, *wanted: str, absent: str = "") -> str:
    """Capture the pane until every `wanted` text shows (and `absent` does not); the screen."""
    deadline = time.monotonic() + 30
    screen = ""
    while time.monotonic() < deadline:
        screen = capture(tmux)
        if all(text in screen for text in wanted) and not (absent and absent in screen):
            return screen
        time.sleep(0.25)
    err = tmp_path / "top.err"
    errors = err.read_text() if err.exists() else ""
    pytest.fail(f"cortex top never showed {wanted} (without {absent!r}):\n{screen}\n{errors}")


def quit_top(tmux: list[str], rc_file: Path, key: str = "q", status: int = 0) -> None:
    """Press `key`: the program must exit with `status`, leave the terminal modes as it found
    them, and the session close within a few seconds."""
    subprocess.run([*tmux, "send-keys", "-t", SESSION, key], check=True, timeout=10)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (alive(tmux) or not rc_file.exists()):
        time.sleep(0.1)
    assert rc_file.exists(), f"cortex top did not exit on {key}:\n{capture(tmux)}"
    assert rc_file.read_text().strip() == str(status)
    assert (rc_file.parent / "tty").exists(), "the terminal was left in cbreak mode"
    assert not alive(tmux)


def test_top_shows_the_fleet_and_quits_on_q(
    live_fleet: CortexProcess, tmux: list[str], tmp_path: Path
) -> None:
    rc_file = start_top(tmux, live_fleet.url, None, tmp_path)
    bar = f"{MODEL_CHARS[0]}{FREE_CHAR}"  # smol's segment runs straight into free memory
    screen = wait_screen(tmux, tmp_path, "gpu-box", "smol", bar)
    lines = screen.splitlines()
    assert len(lines) <= 40 and all(len(line) <= 120 for line in lines)
    assert "1/1 nodes" in screen and "GPU0" in screen and "8.0G" in screen
    assert "loaded smol on gpu-box" in screen  # the event feed
    quit_top(tmux, rc_file)


# -- a stub gateway that can vanish and come back on the same port ------------------------------


def stub_fleet(model: str) -> dict:
    gpu = {"index": 0, "name": "Fake", "vram_total_mb": 8192, "vram_free_mb": 4096}
    slot = {"model_id": model, "node": "stub-node", "state": "ready", "vram_used_mb": 2048}
    node = {"name": "stub-node", "endpoint": "-", "up": True, "gpus": [gpu], "models": [slot]}
    return {"now": time.time(), "nodes": [node], "events": []}


def serve(port: int, document: dict, key: str) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.path == "/admin/fleet" and self.headers["Authorization"] == f"Bearer {key}"
            body = json.dumps(document if ok else {"error": "no"}).encode()
            self.send_response(200 if ok else 401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def stop(server: ThreadingHTTPServer) -> None:
    server.shutdown()
    server.server_close()


def test_top_survives_the_gateway_going_away(tmux: list[str], tmp_path: Path) -> None:
    port = free_port()
    server = serve(port, stub_fleet("first-model"), key="s3cret")
    try:
        rc_file = start_top(tmux, f"http://127.0.0.1:{port}", "s3cret", tmp_path)
        wait_screen(tmux, tmp_path, "stub-node", "first-model", absent="disconnected")
        stop(server)
        wait_screen(tmux, tmp_path, "disconnected — retrying", "first-model")
        server = serve(port, stub_fleet("second-model"), key="s3cret")
        wait_screen(tmux, tmp_path, "second-model", absent="disconnected")
        stop(server)
        server = serve(port, stub_fleet("third-model"), key="another key")
        wait_screen(tmux, tmp_path, "HTTP 401", "--key", "second-model")
        quit_top(tmux, rc_file)
    finally:
        stop(server)


def test_ctrl_c_ends_top_and_restores_the_terminal(tmux: list[str], tmp_path: Path) -> None:
    rc_file = start_top(tmux, f"http://127.0.0.1:{free_port()}", None, tmp_path)
    wait_screen(tmux, tmp_path, "disconnected — retrying: cannot connect")
    quit_top(tmux, rc_file, key="C-c", status=130)
