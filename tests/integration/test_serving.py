"""`synapse.serving.serve`, the runner both programs use, in a process of its own.

A stop signal must stop the process at any moment after it answers (Sanic's own runner lost a
SIGTERM that came right after the gateway's first answer, one start in about fifteen), and a
request in flight when the signal comes must still get its whole answer.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.slow  # real gateway processes

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"

APP = """
import asyncio, sys
from sanic import Sanic, response
from synapse.serving import serve

app = Sanic("serving_probe")

@app.get("/ping")
async def ping(request):
    return response.text("pong")

@app.get("/slow")
async def slow(request):
    stream = await request.respond(content_type="text/plain")
    for n in range(5):
        await stream.send(f"{n}\\n")
        await asyncio.sleep(0.2)
    await stream.eof()

@app.after_server_stop
async def stopped(app):
    print("after_server_stop ran", flush=True)

serve(app, "127.0.0.1", int(sys.argv[1]))
"""


def _start(tmp_path: Path) -> tuple[subprocess.Popen[str], str]:
    script = tmp_path / "probe_app.py"
    script.write_text(APP)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(script), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    _wait_for(proc, url + "/ping")
    return proc, url


def _wait_for(proc: subprocess.Popen[str], url: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, proc.communicate()[0]
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.TransportError:
            assert time.monotonic() < deadline, f"{url} did not answer"
            time.sleep(0.2)


def test_the_gateway_stops_on_a_signal_right_after_its_first_answer(tmp_path: Path) -> None:
    """The race as the packaged gateway met it: SIGTERM as soon as /v1/models has answered."""
    config = (CONF / "cortex.example.toml").read_text()
    config = config.replace('"0.0.0.0:31314"', '""')
    config = config.replace('"http://127.0.0.1:13131"', f'"http://127.0.0.1:{free_port()}"')
    shutil.copy(CONF / "models.example.toml", tmp_path / "models.toml")
    for attempt in range(20):
        port = free_port()
        (tmp_path / "cortex.toml").write_text(
            config.replace('"0.0.0.0:31313"', f'"127.0.0.1:{port}"')
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "cortex.cli", "serve", "--config", tmp_path / "cortex.toml"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
        )
        _wait_for(proc, f"http://127.0.0.1:{port}/v1/models")
        proc.send_signal(signal.SIGTERM if attempt % 2 else signal.SIGINT)
        try:
            output, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"start {attempt}: the signal was lost; the gateway kept running")
        assert proc.returncode == 0, output


def test_a_request_in_flight_gets_its_whole_answer(tmp_path: Path) -> None:
    proc, url = _start(tmp_path)
    try:
        with httpx.stream("GET", url + "/slow", timeout=10) as answer:
            lines = answer.iter_lines()
            assert next(lines) == "0"
            proc.send_signal(signal.SIGTERM)
            assert list(lines) == ["1", "2", "3", "4"]
        output, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0, output
        with pytest.raises(httpx.TransportError):
            httpx.get(url + "/ping", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
