"""Inference streams on bare keep-alive connections: asyncio protocols and httptools' parser.

`WireStreams` is the `transport.Streams` of `[gateway] upstream_transport = "httptools"`: each
inference request to a neuron is written in one write on a pooled HTTP/1.1 connection, and the
answer is parsed by httptools (llhttp, the parser Sanic itself serves with). No client library
sits between the relay and the socket; that is the whole point (bench/README.md, gateway_overhead:
aiohttp's client alone costs more than the rest of a request's relay).

What it is for, and what not: POST requests to neurons, whose answers have a `Content-Length` or
a chunked body (Sanic's), or end with the connection; http and https. No redirects, cookies,
proxies, compression (the body is relayed as the neuron sent it), `Expect`, or HTTP/2.

Invariants:
* Failures are httpx's errors, as on the other transports: refused or unresolvable is
  `httpx.ConnectError`, a connect that outlasts `connect_s` `httpx.ConnectTimeout`, a reset
  `httpx.ReadError`, a malformed answer or one cut short `httpx.RemoteProtocolError`.
* `send` returns once the status and headers have arrived; the body then comes through
  `aiter_raw` as it arrives (pieces that arrived together are joined), with no timeout of its
  own: the relay times it. A caller cancelled during `send` closes that connection.
* A response read to its end returns its connection to the pool when both sides keep it alive;
  one closed before its end closes its connection, so the neuron sees the client go.
* A pooled connection is used once at a time, newest first, and dropped when the neuron closed
  it or it has been idle longer than `keepalive_s`. A request on a reused connection that breaks
  before a single byte of answer (the neuron closed it as it was taken) is sent once more on a
  new connection; a new connection's failure is the caller's.
* Reading pauses while more than `_HIGH_WATER` bytes wait for a slow consumer.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping
from urllib.parse import urlsplit

import httptools
import httpx

_HIGH_WATER = 1 << 20
_Key = tuple[str, str, int]  # scheme, host, port


class WireHeaders(Mapping[str, str]):
    """A response's headers; names are matched case-insensitively (a repeated one: the last)."""

    def __init__(self) -> None:
        self._fields: dict[str, str] = {}

    def __getitem__(self, name: str) -> str:
        return self._fields[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def _set(self, name: bytes, value: bytes) -> None:
        self._fields[name.decode("latin-1").lower()] = value.decode("latin-1")


class WireResponse:
    """One answer on one connection, as a `transport.UpstreamResponse` (see the module rules)."""

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection
        self.status_code = 0
        self.headers = WireHeaders()
        self.head: asyncio.Future[None] = connection.loop.create_future()
        self.received = False  # any byte of the answer has arrived
        self.complete = False
        self._pieces: deque[bytes] = deque()
        self._buffered = 0
        self._error: httpx.TransportError | None = None
        self._waiter: asyncio.Future[None] | None = None

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        while True:
            if self._pieces:
                piece = self._pieces[0] if len(self._pieces) == 1 else b"".join(self._pieces)
                self._pieces.clear()
                self._buffered = 0
                self._connection.drained()
                yield piece
            elif self._error is not None:
                raise self._error
            elif self.complete:
                return
            else:
                self._waiter = self._connection.loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None

    async def aread(self) -> bytes:
        return b"".join([piece async for piece in self.aiter_raw()])

    async def aclose(self) -> None:
        self._connection.finished(self)

    # -- called by the connection ------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self._pieces.append(data)
        self._buffered += len(data)
        if self._buffered > _HIGH_WATER:
            self._connection.pause()
        self._wake()

    def end(self) -> None:
        self.complete = True
        self._wake()

    def fail(self, error: httpx.TransportError) -> None:
        if self.complete or self._error is not None:
            return
        self._error = error
        if not self.head.done():
            self.head.set_exception(error)
            self.head.exception()  # read here: nobody awaits a head that came too late
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class _Connection(asyncio.Protocol):
    """One keep-alive connection to one neuron; at most one response on it at a time."""

    def __init__(self, pool: WireStreams, key: _Key, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.key = key
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: WireResponse | None = None
        self.idle_since = 0.0
        self._keep_alive = False
        self._paused = False
        self._until_close = False

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # bytes nobody asked for: the connection cannot be trusted
            self.close()
            return
        response.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            response.fail(httpx.RemoteProtocolError(f"malformed answer: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.pool.forget(self)
        response = self.response
        if response is None or response.complete:
            return
        if self._until_close and response.head.done():
            response.end()  # a body delimited by the end of the connection
        elif exc is not None:
            response.fail(httpx.ReadError(f"connection broken: {exc}"))
        else:
            response.fail(httpx.RemoteProtocolError("the neuron closed the connection mid-answer"))

    # -- httptools callbacks -------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        self.response.headers._set(name, value)

    def on_headers_complete(self) -> None:
        response = self.response
        assert response is not None
        response.status_code = self.parser.get_status_code()
        headers = response.headers
        self._until_close = "content-length" not in headers and "chunked" not in headers.get(
            "transfer-encoding", ""
        )
        if not response.head.done():
            response.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        assert self.response is not None
        self.response.feed(bytes(body))

    def on_message_complete(self) -> None:
        assert self.response is not None
        self._keep_alive = self.parser.should_keep_alive()
        self.response.end()

    # -- pool side -----------------------------------------------------------------------------

    def start(self, request: bytes) -> WireResponse:
        assert self.transport is not None
        self.response = WireResponse(self)
        self.transport.write(request)
        return self.response

    def finished(self, response: WireResponse) -> None:
        if response is not self.response:
            return
        self.response = None
        if response.complete and self._keep_alive and self.transport is not None:
            self._keep_alive = False
            self.drained()
            self.pool.release(self)
        else:
            self.close()

    def pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def drained(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class WireStreams:
    """`transport.Streams` on pooled bare connections (see the module docstring).

    Owns its connections: `aclose` closes every one, in use or idle. One event loop only."""

    def __init__(
        self, connect_s: float, keepalive_s: float | None = 5.0, max_idle_per_node: int = 128
    ) -> None:
        self._connect_s = connect_s
        self._keepalive_s = keepalive_s
        self._max_idle = max_idle_per_node
        self._idle: dict[_Key, list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._targets: dict[str, tuple[_Key, str, str]] = {}
        self._ssl: ssl.SSLContext | None = None

    async def send(self, url: str, body: bytes, headers: dict[str, str]) -> WireResponse:
        key, host, path = self._target(url)
        head = [f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"]
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise httpx.LocalProtocolError(f"header {name!r} holds a line break")
            head.append(f"{name}: {value}\r\n")
        head.append("\r\n")
        request = "".join(head).encode("latin-1") + body
        connection = self._take(key)
        if connection is not None:
            response = connection.start(request)
            try:
                await _head_of(response, connection)
            except httpx.TransportError:
                if response.received:
                    raise
                # The neuron closed this idle connection as it was taken: it never read the
                # request, so it goes once more on a new one.
            else:
                return response
        connection = await self._connect(key)
        response = connection.start(request)
        await _head_of(response, connection)
        return response

    async def aclose(self) -> None:
        for connection in list(self._open):
            connection.close()
        self._idle.clear()

    # -- connections ---------------------------------------------------------------------------

    def _target(self, url: str) -> tuple[_Key, str, str]:
        """The pool key, Host header and request target of `url`, parsed once per URL (a
        neuron's few inference paths)."""
        known = self._targets.get(url)
        if known is None:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            known = ((parts.scheme, parts.hostname or "", port), parts.netloc, path)
            if len(self._targets) >= 1024:
                self._targets.clear()
            self._targets[url] = known
        return known

    def _take(self, key: _Key) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            expired = self._keepalive_s is not None and (
                connection.loop.time() - connection.idle_since > self._keepalive_s
            )
            if connection.transport is None or connection.transport.is_closing() or expired:
                connection.close()
                continue
            return connection
        return None

    async def _connect(self, key: _Key) -> _Connection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        context = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = httpx.create_ssl_context()  # as httpx verifies: certifi, SSL_CERT_FILE
            context = self._ssl
        try:
            async with asyncio.timeout(self._connect_s):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self, key, loop), host, port, ssl=context
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"no connection to {host}:{port} in time") from None
        except OSError as exc:  # refused, unreachable, unresolvable, a bad certificate
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        self._open.add(connection)
        return connection

    def release(self, connection: _Connection) -> None:
        idle = self._idle.setdefault(connection.key, [])
        if len(idle) >= self._max_idle:
            connection.close()
            return
        connection.idle_since = connection.loop.time()
        idle.append(connection)

    def forget(self, connection: _Connection) -> None:
        self._open.discard(connection)
        idle = self._idle.get(connection.key)
        if idle and connection in idle:
            idle.remove(connection)


async def _head_of(response: WireResponse, connection: _Connection) -> None:
    """Wait for the status and headers; a caller cancelled meanwhile closes the connection."""
    try:
        await response.head
    except BaseException:
        connection.response = None
        connection.close()
        raise
