"""A recording HTTP proxy for the agent tests: every request a client sends, and how it ended.

The agents (Claude Code, Codex CLI, opencode) are pointed at the proxy, which forwards each
request to the gateway unchanged and relays the answer as it arrives (streams stay streams),
recording method, path, request body, status and, for error answers, the body. A test then
asserts on what the client really sent and what it really got.

Threads and the standard library only: the proxy must not share an event loop or an HTTP client
with what it observes.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

# Hop-by-hop headers (RFC 9110 7.6.1) and the ones the proxy recomputes.
_NOT_FORWARDED = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
    "content-length",
}


@dataclass
class Recorded:
    """One request as the client sent it and the answer as the gateway gave it."""

    method: str
    path: str
    body: Any
    status: int = 0
    content_type: str = ""
    error_body: Any = None
    stream_tail: str = ""  # the last 256 KiB of a 2xx stream (a last event may repeat a lot)
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def model(self) -> str | None:
        return self.body.get("model") if isinstance(self.body, dict) else None


class RecordingProxy:
    """Forwards to `target` on a loopback port of its own; `records` grows as clients call."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.records: list[Recorded] = []
        self._lock = threading.Lock()
        self._http = httpx.Client(timeout=httpx.Timeout(None, connect=5))
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _forward(self) -> None:
                proxy._relay(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = do_PATCH = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._http.close()

    def _relay(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("content-length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw[:200]
        record = Recorded(handler.command, handler.path, body, headers=dict(handler.headers))
        with self._lock:
            self.records.append(record)
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in _NOT_FORWARDED}
        request = self._http.build_request(
            handler.command, self.target + handler.path, content=raw, headers=headers
        )
        try:
            response = self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            record.status = 599
            record.error_body = f"proxy could not reach the gateway: {exc!r}"
            handler.send_error(502)
            return
        try:
            record.status = response.status_code
            record.content_type = response.headers.get("content-type", "")
            handler.send_response(response.status_code)
            for name, value in response.headers.items():
                if name.lower() not in _NOT_FORWARDED and name.lower() != "content-encoding":
                    handler.send_header(name, value)
            handler.send_header("Transfer-Encoding", "chunked")
            handler.end_headers()
            seen = bytearray()
            try:
                for chunk in response.iter_bytes():
                    if not chunk:
                        continue
                    seen += chunk
                    handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    handler.wfile.flush()
                handler.wfile.write(b"0\r\n\r\n")
                handler.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                record.stream_tail = "(client went away)"
            if response.status_code >= 400:
                try:
                    record.error_body = json.loads(bytes(seen))
                except ValueError:
                    record.error_body = bytes(seen[:500])
            elif "event-stream" in record.content_type:
                record.stream_tail = bytes(seen[-262144:]).decode(errors="replace")
        finally:
            response.close()
