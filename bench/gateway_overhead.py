"""What a gateway adds: the same requests direct to a stub upstream, through cortex (once per
upstream transport), and through LiteLLM's proxy, side by side in one run.

Processes (all on loopback, started and stopped by this script):
* `bench/stub_upstream.py` — a fast OpenAI-compatible stub that also answers the neuron contract,
  so that model time hides nothing;
* `cortex serve --config` with one `[[neurons]]` = the stub, the stub's model in models.toml, no
  metrics listener and a 60 s poll interval: one gateway per `--transports` entry, each with that
  `[gateway] upstream_transport` (paths `cortex-aiohttp`, `cortex-httpx`; `default` runs a path
  `cortex` that sets none, e.g. for a `--cortex-src` revision that predates the key);
* `litellm --config` (the `litellm[proxy]` package, installed by this script on first use into
  the git-ignored `bench/.litellm-venv`) with one model_list entry `openai/stub` whose api_base is
  the stub; no master key, no database, the bundled model cost map (nothing is fetched).

One client for all three paths: a small raw-asyncio HTTP/1.1 keep-alive client on uvloop with
httptools' parser (both come with Sanic), so the client costs little next to what is measured.
Phases, each after a warm-up:
1. latency — small non-streaming chat requests, one in flight. The paths take turns in blocks
   of --block requests (their order rotating from pass to pass), so that drift hits all of them
   alike while each gateway serves back-to-back requests as it would under steady traffic (with
   --block 1 every request finds a gateway whose caches the others' work has just evicted, which
   adds 0.2-0.8 ms to each gateway here). Reported: p50/p99 per path, and *added* latency =
   path − direct as the difference of the p50s (and of the p99s); the median of the paired
   differences (the i-th request of a path against the i-th direct one) is reported beside it;
2. streams — one in flight, taking turns likewise; TTFT (request written → first chunk with
   content) and the delays between consecutive content chunks (the stub sends 20, 5 ms apart);
3. throughput — non-streaming requests/s with 16 concurrent keep-alive clients, each path alone
   for a fixed time.
Each gateway's own CPU time per request over phase 1 (from /proc/PID/task/*/schedstat) is
reported too. `--breakdown` adds four reference gateways to phases 1 and 3 to show where
cortex's time goes: `sanic-fixed` (Sanic set up as cortex is, answering by itself), `sanic-httpx`
(the same plus the upstream call exactly as `cortex-httpx` makes it, without routing or metrics)
and `sanic-httptools` (likewise on cortex's bare connections, and in phase 2 too: streams relayed
piece by piece, unparsed — the floor under cortex-httptools); and `asyncio-httptools`, the same
relay with no web framework (an asyncio protocol parsing with httptools and writing straight to
the socket), in phase 2 too. `--nginx` adds nginx (a reverse
proxy in C: one worker, keep-alive upstream, no buffering) to every phase: what any relay costs
on this machine, whatever its language.

The machine may be shared: the script first waits (up to --load-wait-s) until the 1-minute load
average is at most --max-load and at most --max-busy cores are in use, and it reports, per phase,
the cores that processes other than its own used meanwhile.

    python bench/gateway_overhead.py [--skip-litellm] [--breakdown] [--nginx] [--json out.json]
                                     [--cortex-src DIR] [--requests 2000]
                                     [--transports httptools,aiohttp,httpx]

Exit status is 0 whether or not the targets (cortex added p50 ≤ 1 ms, and ≤ 1/3 of LiteLLM's)
are met; the verdict is printed as PASS/MISS for each cortex path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httptools
import httpx
import uvloop

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
LITELLM_VENV = BENCH / ".litellm-venv"
MODEL = "stub"
TARGET_ADDED_P50_MS = 1.0
TARGET_FRACTION_OF_LITELLM = 1 / 3
SMALL = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}
STREAM = {**SMALL, "stream": True, "stream_options": {"include_usage": True}}
# `--transports` entries: cortex's `[gateway] upstream_transport` values, and "default" (no key).
TRANSPORTS = ("httptools", "aiohttp", "httpx", "default")


def cortex_path(transport: str) -> str:
    """The path (lane) name of the cortex gateway running `transport`."""
    return "cortex" if transport == "default" else f"cortex-{transport}"


# --------------------------------------------------------------------------- client


class Response:
    __slots__ = ("body", "pieces", "status")

    def __init__(self) -> None:
        self.status = 0
        self.body: list[bytes] = []
        self.pieces: list[tuple[float, bytes]] = []  # (perf_counter at arrival, data); streams


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[Response] | None = None
        self.response = Response()
        self.stream = False

    @classmethod
    async def open(cls, port: int) -> Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(cls, "127.0.0.1", port)
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(exc or ConnectionResetError("connection closed by the server"))

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    def on_body(self, body: bytes) -> None:
        if self.stream:
            self.response.pieces.append((time.perf_counter(), body))
        else:
            self.response.body.append(body)

    def on_message_complete(self) -> None:
        self.response.status = self.parser.get_status_code()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(self.response)

    async def send(self, request: bytes, stream: bool = False) -> Response:
        if self.transport is None:
            raise ConnectionResetError("connection is closed")
        self.response = Response()
        self.stream = stream
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def http_request(port: int, path: str, body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Accept: */*\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


def content_times(pieces: list[tuple[float, bytes]]) -> list[float]:
    """Arrival time of each SSE event whose first choice carries non-empty delta content."""
    times: list[float] = []
    buffer = b""
    for stamp, data in pieces:
        buffer = (buffer + data).replace(b"\r\n", b"\n")
        *events, buffer = buffer.split(b"\n\n")
        for event in events:
            for line in event.split(b"\n"):
                if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
                    continue
                choices = json.loads(line[5:]).get("choices") or [{}]
                if (choices[0].get("delta") or {}).get("content"):
                    times.append(stamp)
    return times


# --------------------------------------------------------------------------- statistics


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0–100), linear between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary_ms(values_s: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    return {
        "n": len(ms),
        "p50": pct(ms, 50),
        "p99": pct(ms, 99),
        "mean": statistics.fmean(ms) if ms else float("nan"),
    }


# --------------------------------------------------------------------------- machine load


def _ticks_busy() -> int:
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    values = [int(v) for v in fields[:8]]
    return sum(values) - values[3] - values[4]  # all but idle and iowait


def _our_ticks() -> int:
    """CPU ticks used so far by this process and every live descendant of it."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        rest = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry.name)] = int(rest[1])
        ticks[int(entry.name)] = int(rest[11]) + int(rest[12])
    ours = {os.getpid()}
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in ours and pid not in ours:
                ours.add(pid)
                grew = True
    return sum(ticks.get(pid, 0) for pid in ours)


@dataclass
class CpuWatch:
    """Cores used by processes other than ours between start() and stop()."""

    hz: int = os.sysconf("SC_CLK_TCK")
    _t: float = 0.0
    _busy: int = 0
    _ours: int = 0

    def start(self) -> CpuWatch:
        self._t, self._busy, self._ours = time.monotonic(), _ticks_busy(), _our_ticks()
        return self

    def stop(self) -> dict[str, float]:
        elapsed = time.monotonic() - self._t
        busy = (_ticks_busy() - self._busy) / self.hz
        ours = (_our_ticks() - self._ours) / self.hz
        return {
            "seconds": elapsed,
            "ours_cores": ours / elapsed,
            "foreign_cores": max(0.0, busy - ours) / elapsed,
            "load1_after": os.getloadavg()[0],
        }


def busy_cores(seconds: float = 3.0) -> float:
    """Cores in use on the machine right now (all processes), over `seconds`."""
    hz, before = os.sysconf("SC_CLK_TCK"), _ticks_busy()
    time.sleep(seconds)
    return (_ticks_busy() - before) / hz / seconds


def wait_for_quiet(max_load: float, max_busy: float, wait_s: float) -> tuple[float, float]:
    """Wait until the 1-minute load average and the cores in use now are both low enough."""
    deadline = time.monotonic() + wait_s
    while True:
        load, busy = os.getloadavg()[0], busy_cores()
        if load <= max_load and busy <= max_busy:
            return load, busy
        if time.monotonic() > deadline:
            print(f"load {load:.2f}, {busy:.2f} cores busy; measuring anyway", file=sys.stderr)
            return load, busy
        print(
            f"load {load:.2f} (max {max_load}), {busy:.2f} cores busy (max {max_busy}): waiting",
            file=sys.stderr,
            flush=True,
        )
        time.sleep(5)


# --------------------------------------------------------------------------- reference gateways

REFERENCES = ("sanic-fixed", "sanic-httpx", "sanic-httptools", "asyncio-httptools")
# The references that relay streams too.
STREAMING_REFERENCES = ("sanic-httptools", "asyncio-httptools")


def nginx_config(workdir: Path, port: int, upstream: int) -> Path:
    """An nginx.conf for `--nginx`: one worker in the foreground, a keep-alive upstream pool,
    nothing buffered either way (each streamed piece goes on as it arrives), no access log —
    a reverse proxy written in C, for the floor that any relay has on this machine."""
    path = workdir / "nginx.conf"
    temp = workdir / "nginx-temp"
    temp.mkdir(exist_ok=True)
    path.write_text(
        "daemon off;\nmaster_process off;\nworker_processes 1;\n"
        f"pid {workdir}/nginx.pid;\nerror_log {workdir}/nginx-error.log warn;\n"
        "events { worker_connections 1024; }\n"
        "http {\n  access_log off;\n"
        f"  client_body_temp_path {temp}/body;\n  proxy_temp_path {temp}/proxy;\n"
        f"  fastcgi_temp_path {temp}/fastcgi;\n  uwsgi_temp_path {temp}/uwsgi;\n"
        f"  scgi_temp_path {temp}/scgi;\n"
        f"  upstream stub {{ server 127.0.0.1:{upstream}; keepalive 128; }}\n"
        f"  server {{\n    listen 127.0.0.1:{port};\n    keepalive_requests 1000000;\n"
        "    location / {\n      proxy_pass http://stub;\n      proxy_http_version 1.1;\n"
        '      proxy_set_header Connection "";\n      proxy_buffering off;\n'
        "      proxy_request_buffering off;\n      tcp_nodelay on;\n    }\n  }\n}\n"
    )
    return path


def reference_gateway(kind: str, port: int, upstream: int) -> None:
    """`--breakdown` helpers, run as `gateway_overhead.py _reference KIND PORT UPSTREAM`.

    sanic-fixed: a Sanic app set up as cortex's (single process, no access log) that parses the
    body and answers a fixed completion — the floor of any Sanic gateway. sanic-httpx: the same
    plus the upstream call exactly as cortex-httpx makes it (one shared httpx.AsyncClient, same
    limits, `send(stream=True)`, `aread`, `aclose`) but no routing, registry or dispatcher.
    sanic-httptools: the same on cortex's own bare connections (`cortex.nodes.wire`, as
    cortex-httptools), and streams too: each piece relayed as it arrives, unparsed — the floor
    of a Sanic gateway on that client.
    """
    if kind == "asyncio-httptools":
        bare_relay(port, upstream)
        return
    from sanic import Request, Sanic
    from sanic.response import HTTPResponse, raw

    app = Sanic(kind.replace("-", "_"))
    app.config.RESPONSE_TIMEOUT = 24 * 3600
    app.config.KEEP_ALIVE_TIMEOUT = 75
    url = f"http://127.0.0.1:{upstream}/v1/chat/completions"
    headers = {"Content-Type": "application/json"}
    fixed = httpx.post(url, json=SMALL).content

    @app.before_server_start
    async def start(app: Sanic) -> None:
        from cortex.nodes.wire import WireStreams

        app.ctx.wire = WireStreams(3.0)
        app.ctx.http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=128),
            timeout=httpx.Timeout(30.0, connect=3.0),
        )

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> HTTPResponse:
        json.loads(request.body)
        if kind == "sanic-fixed":
            return raw(fixed, content_type="application/json")
        if kind == "sanic-httptools":
            answer = await request.app.ctx.wire.send(url, request.body, headers)
            try:
                if answer.headers.get("content-type") != "text/event-stream":
                    content = await answer.aread()
                    return raw(content, status=answer.status_code, content_type="application/json")
                relayed = await request.respond(content_type="text/event-stream")
                async for piece in answer.aiter_raw():
                    await relayed.send(piece)
                await relayed.eof()
                return relayed
            finally:
                await answer.aclose()
        http: httpx.AsyncClient = request.app.ctx.http
        outgoing = http.build_request(
            "POST",
            url,
            content=request.body,
            headers=headers,
            timeout=httpx.Timeout(None, connect=3),
        )
        response = await http.send(outgoing, stream=True)
        try:
            content = await response.aread()
        finally:
            await response.aclose()
        return raw(content, status=response.status_code, content_type="application/json")

    app.run(host="127.0.0.1", port=port, single_process=True, motd=False, access_log=False)


def bare_relay(port: int, upstream: int) -> None:
    """The `asyncio-httptools` reference: sanic-httptools's relay with no web framework at all —
    an asyncio protocol on uvloop parsing requests with httptools and writing the answer, whole
    or as chunked pieces as they arrive, straight to the socket. What a Python relay costs here
    below Sanic's request and response machinery."""
    from collections.abc import Coroutine

    from cortex.nodes.wire import WireStreams

    url = f"http://127.0.0.1:{upstream}/v1/chat/completions"
    headers = {"Content-Type": "application/json"}
    wire = WireStreams(3.0)

    class Relay(asyncio.Protocol):
        def __init__(self) -> None:
            self.parser = httptools.HttpRequestParser(self)
            self.transport: asyncio.Transport | None = None
            self.body: list[bytes] = []
            self.turn: asyncio.Task[None] | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_message_begin(self) -> None:
            self.body = []

        def on_body(self, body: bytes) -> None:
            self.body.append(body)

        def on_message_complete(self) -> None:
            method = self.parser.get_method()
            work = self.answer(b"".join(self.body)) if method == b"POST" else self.refuse()
            self.turn = asyncio.get_running_loop().create_task(self.after(self.turn, work))

        async def after(self, previous: asyncio.Task[None] | None, work: Coroutine) -> None:
            if previous is not None:
                await previous  # pipelined requests are answered in order
            await work

        async def refuse(self) -> None:
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")

        async def answer(self, body: bytes) -> None:
            transport = self.transport
            assert transport is not None
            json.loads(body)
            answer = await wire.send(url, body, headers)
            try:
                if answer.headers.get("content-type") != "text/event-stream":
                    content = await answer.aread()
                    head = b"HTTP/1.1 %d OK\r\ncontent-type: application/json\r\n" % (
                        answer.status_code
                    )
                    transport.write(head + b"content-length: %d\r\n\r\n" % len(content) + content)
                    return
                transport.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                    b"transfer-encoding: chunked\r\n\r\n"
                )
                async for piece in answer.aiter_raw():
                    transport.write(b"%x\r\n%b\r\n" % (len(piece), piece))
                transport.write(b"0\r\n\r\n")
            finally:
                await answer.aclose()

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(Relay, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve())


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    name: str
    port: int
    path: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def cpu_s(self) -> float:
        """On-CPU time of the process's live threads so far (schedstat: ns resolution)."""
        total = 0
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
        return total / 1e9

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def spawn(
    name: str, argv: list[str], workdir: Path, port: int, path: str, env=None, cwd: Path = ROOT
) -> Server:
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True,
        )
    return Server(name, port, path, proc, log_path)


def wait_ready(server: Server, probe: str, ok: Callable[[httpx.Response], bool], timeout: float):
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{server.port}"
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited early:\n{server.log()}")
        try:
            if ok(httpx.get(url + probe, timeout=2)):
                answer = httpx.post(url + server.path, json=SMALL, timeout=10)
                if answer.status_code == 200:
                    return
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{server.name} did not come up:\n{server.log()}")


def ensure_litellm(spec: str) -> Path:
    binary = LITELLM_VENV / "bin" / "litellm"
    if binary.exists():
        return binary
    print(f"one-time install of {spec!r} into {LITELLM_VENV} …", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
    pip = [str(LITELLM_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, spec], check=True)
    return binary


def litellm_version() -> str:
    python = LITELLM_VENV / "bin" / "python"
    code = "import importlib.metadata as m; print(m.version('litellm'))"
    return subprocess.run([python, "-c", code], capture_output=True, text=True).stdout.strip()


def git_describe(src: Path) -> str:
    """The commit of `src` and whether its cortex/ has uncommitted changes ("" outside git)."""
    git = ["git", "-C", str(src)]
    rev = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if rev.returncode:
        return ""
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "cortex"], capture_output=True, text=True
    )
    return rev.stdout.strip() + (" + uncommitted changes in cortex/" if dirty.stdout else "")


LITELLM_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # use the bundled cost map; fetch nothing
    "LITELLM_LOG": "ERROR",
    "LITELLM_DONT_SHOW_FEEDBACK_BOX": "True",
    "NO_PROXY": "*",
}


def litellm_config(stub_port: int) -> str:
    return (
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: http://127.0.0.1:{stub_port}/v1\n"
        "      api_key: x\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "  turn_off_message_logging: true\n"
        "  callbacks: []\n"
        "general_settings:\n"
        "  dangerously_permit_weak_or_unset_master_key: true\n"
        "  disable_spend_logs: true\n"
    )


def cortex_config(workdir: Path, port: int, stub_port: int, transport: str) -> Path:
    """A cortex.toml for one gateway in front of the stub; `transport` "default" sets none."""
    (workdir / "models.toml").write_text(f'[[models]]\nid = "{MODEL}"\n')
    path = workdir / f"{cortex_path(transport)}.toml"
    chosen = "" if transport == "default" else f'upstream_transport = "{transport}"\n'
    path.write_text(
        'models_config = "models.toml"\n'
        f'[gateway]\nlisten = "127.0.0.1:{port}"\nmetrics_listen = ""\npoll_interval_s = 60\n'
        f"{chosen}"
        f'[[neurons]]\nname = "stub"\nendpoint = "http://127.0.0.1:{stub_port}"\n'
    )
    return path


@contextmanager
def servers(args: argparse.Namespace, workdir: Path) -> Iterator[dict[str, Server]]:
    started: dict[str, Server] = {}
    py = sys.executable
    try:
        stub_port = free_port()
        stub_argv = [py, str(BENCH / "stub_upstream.py"), "--port", str(stub_port)]
        stub_argv += ["--model", MODEL, "--chunks", str(args.chunks)]
        stub_argv += ["--chunk-delay-ms", str(args.chunk_delay_ms)]
        started["direct"] = spawn("direct", stub_argv, workdir, stub_port, "/v1/chat/completions")
        src = args.cortex_src.resolve()
        for transport in args.transports:
            name = cortex_path(transport)
            cortex_port = free_port()
            config = cortex_config(workdir, cortex_port, stub_port, transport)
            cortex_argv = [py, "-m", "cortex.cli", "serve", "--config", str(config)]
            cortex_argv += ["--log-level", "WARNING"]
            started[name] = spawn(
                name,
                cortex_argv,
                workdir,
                cortex_port,
                "/v1/chat/completions",
                {"PYTHONPATH": str(src)},
                cwd=src,
            )
        if args.nginx:
            nginx_port = free_port()
            config = nginx_config(workdir, nginx_port, stub_port)
            argv = [args.nginx, "-p", str(workdir), "-c", str(config)]
            started["nginx"] = spawn("nginx", argv, workdir, nginx_port, "/v1/chat/completions")
        if not args.skip_litellm:
            binary = ensure_litellm(args.litellm_spec)
            ll_port = free_port()
            ll_config = workdir / "litellm.yaml"
            ll_config.write_text(litellm_config(stub_port))
            ll_argv = [str(binary), "--config", str(ll_config), "--host", "127.0.0.1"]
            ll_argv += ["--port", str(ll_port), "--num_workers", "1"]
            started["litellm"] = spawn(
                "litellm", ll_argv, workdir, ll_port, "/v1/chat/completions", LITELLM_ENV
            )
        wait_ready(started["direct"], "/health", lambda r: r.status_code == 200, 20)
        for kind in REFERENCES if args.breakdown else ():
            port = free_port()
            argv = [py, __file__, "_reference", kind, str(port), str(stub_port)]
            started[kind] = spawn(kind, argv, workdir, port, "/v1/chat/completions")
        for transport in args.transports:
            wait_ready(
                started[cortex_path(transport)], "/health", lambda r: r.json()["nodes_up"] == 1, 30
            )
        for kind in REFERENCES if args.breakdown else ():
            wait_ready(started[kind], "/v1/chat/completions", lambda r: True, 30)
        if "nginx" in started:
            wait_ready(started["nginx"], "/health", lambda r: r.status_code == 200, 20)
        if "litellm" in started:
            wait_ready(started["litellm"], "/health/readiness", lambda r: r.is_success, 120)
        yield started
    finally:
        for server in reversed(started.values()):
            server.stop()


# --------------------------------------------------------------------------- phases


@dataclass
class Lane:
    name: str
    port: int
    small: bytes
    stream: bytes
    conn: Connection | None = None
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    by_round: list[float | None] = field(default_factory=list)  # None: that request failed
    ttfts: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)

    async def call(self, stream: bool = False) -> tuple[float, Response]:
        for attempt in range(2):
            if self.conn is None or self.conn.transport is None:
                self.conn = await Connection.open(self.port)
            started = time.perf_counter()
            try:
                response = await self.conn.send(self.stream if stream else self.small, stream)
            except (ConnectionError, httptools.HttpParserError):
                self.conn = None
                if attempt:
                    raise
                continue
            return started, response
        raise AssertionError("unreachable")


async def sequential(
    lanes: list[Lane], rounds: int, op: Callable[[Lane], Awaitable[None]], block: int = 1
) -> None:
    """`rounds` calls of `op` per lane, one at a time: `block` in a row on each lane, then the
    next lane, the lanes' order rotating from one pass to the next."""
    for i, start in enumerate(range(0, rounds, block)):
        k = i % len(lanes)
        for lane in lanes[k:] + lanes[:k]:
            for _ in range(min(block, rounds - start)):
                await op(lane)


async def measure_latency(lane: Lane, record: bool = True) -> None:
    started, response = await lane.call()
    elapsed = time.perf_counter() - started
    if response.status != 200:
        lane.errors += 1
    if record:
        ok = response.status == 200
        lane.by_round.append(elapsed if ok else None)
        if ok:
            lane.latencies.append(elapsed)


async def measure_stream(lane: Lane, record: bool = True) -> None:
    started, response = await lane.call(stream=True)
    times = content_times(response.pieces)
    if response.status != 200 or not times:
        lane.errors += 1
    elif record:
        lane.ttfts.append(times[0] - started)
        lane.gaps.extend(b - a for a, b in itertools.pairwise(times))


async def throughput(lane: Lane, clients: int, warmup_s: float, duration_s: float) -> dict:
    loop = asyncio.get_running_loop()
    begin = loop.time() + warmup_s
    end = begin + duration_s
    done = errors = 0

    async def client() -> None:
        nonlocal done, errors
        conn = await Connection.open(lane.port)
        try:
            while loop.time() < end:
                response = await conn.send(lane.small)
                if begin <= loop.time() < end:
                    if response.status == 200:
                        done += 1
                    else:
                        errors += 1
        finally:
            conn.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return {"requests": done, "errors": errors, "rps": done / duration_s, "clients": clients}


async def run_phases(args: argparse.Namespace, started: dict[str, Server]) -> dict[str, Any]:
    lanes = [
        Lane(
            name,
            server.port,
            http_request(server.port, server.path, SMALL),
            http_request(server.port, server.path, STREAM),
        )
        for name, server in started.items()
    ]
    result: dict[str, Any] = {"phases": {}}

    async def latency(lane: Lane) -> None:
        await measure_latency(lane, record=True)

    async def warm(lane: Lane) -> None:
        await measure_latency(lane, record=False)

    async def stream(lane: Lane) -> None:
        await measure_stream(lane, record=True)

    await sequential(lanes, args.warmup, warm, args.block)
    watch = CpuWatch().start()
    cpu_before = {name: server.cpu_s() for name, server in started.items()}
    await sequential(lanes, args.requests, latency, args.block)
    cpu_used = {name: server.cpu_s() - cpu_before[name] for name, server in started.items()}
    result["phases"]["latency"] = watch.stop()
    # Each lane's server served args.requests requests; the stub served one per lane but the
    # one that answers by itself (sanic-fixed).
    upstream_calls = sum(1 for lane in lanes if lane.name != "sanic-fixed") * args.requests
    served = {lane.name: args.requests for lane in lanes} | {"direct": upstream_calls}

    streaming = [
        lane for lane in lanes if lane.name not in REFERENCES or lane.name in STREAMING_REFERENCES
    ]
    await sequential(streaming, 3, lambda p: measure_stream(p, record=False))
    watch = CpuWatch().start()
    await sequential(streaming, args.streams, stream, args.block)
    result["phases"]["streams"] = watch.stop()
    for lane in lanes:
        if lane.conn is not None:
            lane.conn.close()
            lane.conn = None

    rps: dict[str, Any] = {}
    watch = CpuWatch().start()
    for lane in lanes:
        rps[lane.name] = await throughput(lane, args.clients, 1.0, args.throughput_s)
    result["phases"]["throughput"] = watch.stop()

    direct = lanes[0]
    for lane in lanes:
        pairs = zip(lane.by_round, direct.by_round, strict=True)
        paired = [a - b for a, b in pairs if a is not None and b is not None]
        result[lane.name] = {
            "latency_ms": summary_ms(lane.latencies),
            "paired_added_ms": summary_ms(paired),
            "ttft_ms": summary_ms(lane.ttfts),
            "inter_chunk_ms": summary_ms(lane.gaps),
            "throughput": rps[lane.name],
            "server_cpu_us_per_request": cpu_used[lane.name] / served[lane.name] * 1e6,
            "errors": lane.errors,
            "raw_latency_s": lane.latencies,
        }
    return result


# --------------------------------------------------------------------------- report


def verdicts(result: dict[str, Any], cortex_paths: list[str]) -> dict[str, dict[str, Any]]:
    """The targets, for each cortex path."""
    d = result["direct"]["latency_ms"]["p50"]
    out: dict[str, dict[str, Any]] = {}
    for name in cortex_paths:
        cortex_added = result[name]["latency_ms"]["p50"] - d
        v: dict[str, Any] = {
            "cortex_added_p50_ms": cortex_added,
            "added_p50_target_ms": TARGET_ADDED_P50_MS,
            "added_p50_pass": cortex_added <= TARGET_ADDED_P50_MS,
        }
        if "litellm" in result:
            litellm_added = result["litellm"]["latency_ms"]["p50"] - d
            v["litellm_added_p50_ms"] = litellm_added
            v["fraction_of_litellm"] = cortex_added / litellm_added if litellm_added > 0 else None
            v["fraction_pass"] = cortex_added <= litellm_added * TARGET_FRACTION_OF_LITELLM
        out[name] = v
    return out


def table(result: dict[str, Any], names: list[str]) -> str:
    d = result["direct"]

    def row(label: str, cell: Callable[[dict[str, Any]], str]) -> str:
        cells = []
        for name in names:
            try:
                text = cell(result[name])
            except (KeyError, TypeError, ValueError):
                text = "—"
            cells.append("—" if text == "nan" else text)
        return "| " + label + " | " + " | ".join(cells) + " |"

    def added(key: str, q: str) -> Callable[[dict[str, Any]], str]:
        def cell(r: dict[str, Any]) -> str:
            value = r[key][q] - d[key][q]
            return "—" if r is d or value != value else f"{value:+.3f}"

        return cell

    lines = [
        "| metric | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
        row(
            "latency p50, ms (sequential, non-streaming)", lambda r: f"{r['latency_ms']['p50']:.3f}"
        ),
        row("latency p99, ms", lambda r: f"{r['latency_ms']['p99']:.3f}"),
        row("**added p50, ms** (p50 − direct p50)", added("latency_ms", "p50")),
        row("added p99, ms (p99 − direct p99)", added("latency_ms", "p99")),
        row(
            "added, median of paired differences, ms",
            lambda r: "—" if r is d else f"{r['paired_added_ms']['p50']:+.3f}",
        ),
        row("stream TTFT p50, ms", lambda r: f"{r['ttft_ms']['p50']:.3f}"),
        row("stream TTFT p99, ms", lambda r: f"{r['ttft_ms']['p99']:.3f}"),
        row("added TTFT p50, ms", added("ttft_ms", "p50")),
        row("inter-chunk mean, ms", lambda r: f"{r['inter_chunk_ms']['mean']:.3f}"),
        row("inter-chunk p99, ms", lambda r: f"{r['inter_chunk_ms']['p99']:.3f}"),
        row(
            f"requests/s, {d['throughput']['clients']} concurrent clients",
            lambda r: f"{r['throughput']['rps']:.0f}",
        ),
        row(
            "gateway CPU per request, µs (latency phase)",
            lambda r: "—" if r is d else f"{r['server_cpu_us_per_request']:.0f}",
        ),
        row("errors (non-200 / broken)", lambda r: str(r["errors"] + r["throughput"]["errors"])),
    ]
    lines.append("")
    for name, v in result["verdicts"].items():
        state = "PASS" if v["added_p50_pass"] else "MISS"
        lines.append(
            f"* target {name} added p50 ≤ {TARGET_ADDED_P50_MS:g} ms: "
            f"{v['cortex_added_p50_ms']:.3f} ms — **{state}**"
        )
        if "fraction_pass" in v:
            state = "PASS" if v["fraction_pass"] else "MISS"
            frac = v["fraction_of_litellm"]
            shown = f"{frac:.2f}" if frac is not None else "n/a"
            lines.append(
                f"* target {name} added ≤ 1/3 of LiteLLM's ({v['litellm_added_p50_ms']:.3f} ms): "
                f"ratio {shown} — **{state}**"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="sequential rounds (per path)")
    parser.add_argument(
        "--block", type=int, default=20, help="sequential requests in a row on one path"
    )
    parser.add_argument("--warmup", type=int, default=300, help="warm-up rounds (per path)")
    parser.add_argument("--streams", type=int, default=60, help="streams per path")
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per stream")
    parser.add_argument("--chunk-delay-ms", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--throughput-s", type=float, default=8.0, help="seconds per path")
    parser.add_argument("--skip-litellm", action="store_true")
    parser.add_argument("--litellm-spec", default="litellm[proxy]", help="pip spec, first use")
    parser.add_argument("--max-load", type=float, default=1.5, help="1-minute load average")
    parser.add_argument("--max-busy", type=float, default=0.5, help="cores busy before starting")
    parser.add_argument("--load-wait-s", type=float, default=300)
    parser.add_argument("--json", type=Path, help="write the raw numbers here")
    parser.add_argument(
        "--cortex-src",
        type=Path,
        default=ROOT,
        help="directory holding the cortex package to measure (e.g. a `git worktree` of a "
        "revision); default: this checkout",
    )
    parser.add_argument(
        "--transports",
        type=_transports,
        default=["httptools", "aiohttp", "httpx"],
        help="comma-separated cortex upstream transports, one cortex path each: httptools, "
        "aiohttp, httpx, or default (the revision's own default, no key written); default: "
        "httptools,aiohttp,httpx",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep and print the log dir")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also measure the reference gateways (bare Sanic, Sanic + each client, a bare relay)",
    )
    parser.add_argument(
        "--nginx",
        nargs="?",
        const=shutil.which("nginx") or "/usr/sbin/nginx",
        help="also relay through nginx (a reverse proxy in C, no buffering) as a reference path "
        "in every phase; the binary defaults to the one on PATH",
    )
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_reference"]:
        reference_gateway(argv[1], int(argv[2]), int(argv[3]))
        return 0
    args = parser.parse_args(argv)

    load_before, busy_before = wait_for_quiet(args.max_load, args.max_busy, args.load_wait_s)
    t0 = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="gateway-overhead-"))
    with servers(args, workdir) as started:
        startup_s = time.monotonic() - t0
        result = uvloop.run(run_phases(args, started))
    names = list(started)
    result["verdicts"] = verdicts(result, [cortex_path(t) for t in args.transports])
    result["meta"] = {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "litellm": litellm_version() if "litellm" in names else None,
        "cortex_src": str(args.cortex_src.resolve()),
        "cortex_rev": git_describe(args.cortex_src),
        "load1_before": load_before,
        "busy_cores_before": busy_before,
        "startup_s": startup_s,
        "run_s": time.monotonic() - t0,
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    print(table(result, names))
    meta = result["meta"]
    print()
    print(
        f"machine: {meta['machine']}; before: load average {load_before:.2f}, "
        f"{busy_before:.2f} cores busy; "
        f"litellm {meta['litellm']}; cortex {meta['cortex_src']} {meta['cortex_rev']}; "
        f"run {meta['run_s']:.0f} s (startup {startup_s:.1f} s)"
    )
    for phase, cpu in result["phases"].items():
        print(
            f"  {phase}: {cpu['seconds']:.1f} s, our processes {cpu['ours_cores']:.2f} cores, "
            f"others {cpu['foreign_cores']:.2f} cores, load after {cpu['load1_after']:.2f}"
        )
    if args.keep_logs:
        print(f"server logs: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


def _transports(value: str) -> list[str]:
    chosen = [t.strip() for t in value.split(",") if t.strip()]
    unknown = sorted(set(chosen) - set(TRANSPORTS))
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        raise argparse.ArgumentTypeError(f"a comma-separated list of distinct {TRANSPORTS}")
    return chosen


if __name__ == "__main__":
    sys.exit(main())
