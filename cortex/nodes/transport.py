"""The gateway's one HTTP client towards the neurons, and the transport it runs on.

`make_http_client(config)` builds the app's single `httpx.AsyncClient` (opened at server start,
closed at stop; every `NeuronClient` shares it). The rest of cortex sees httpx's client API only,
whichever transport carries it (`[gateway] upstream_transport`):
* "httptools" (the default) and "aiohttp": aiohttp's connection pool under httpx's API (the
  `httpx-aiohttp` package), several times the requests/s of httpcore's pool under concurrency
  and less latency per request (bench/README.md, gateway_overhead);
* "httpx": httpx's own transport (httpcore).

Invariants, whichever transport:
* An explicit `transport` (tests pass an `httpx.MockTransport`) wins over the config.
* The client's `timeout.connect` is `connect_timeout_s`; each call sets its own read timeout
  (`NeuronClient._timeout`), None on inference, where the relay times the body itself. Over
  aiohttp, connect is the socket connect, read the longest wait for the next bytes of the head or
  the body, pool the wait for a connection from the pool; there is no total timeout.
* Every failure of the transport, while the request is sent or its answer read (refused, reset,
  timed out, a malformed answer, a body cut short), is an `httpx.TransportError` (refused is
  `httpx.ConnectError`, a read timeout `httpx.ReadTimeout`); nothing from aiohttp escapes.
* A streamed body (`send(stream=True)`, `aiter_raw`) yields each piece as it arrives; closing a
  response before its end closes its connection, so the neuron sees the client go.
* Over aiohttp the session keeps no cookie jar of its own (httpx's client-level one applies, as
  with httpx's transport) and no proxy from the environment is used: neurons are reached
  directly, where httpx's transport honours HTTP(S)_PROXY/NO_PROXY as httpx does.

Inference streams (`NeuronClient.open_stream`) go through `make_streams`: over "httptools"
bare keep-alive connections of their own (`wire.WireStreams`, no client library at all, the
fastest by bench/README.md); over "aiohttp" a bare aiohttp session (`AiohttpStreams`), without
httpx's client layer, which costs ~0.2 ms a request; over "httpx", or with an explicit transport
(tests), the same httpx client as every other call (`HttpxStreams`). Each returns an
`UpstreamResponse`: the status, the headers, the body as it arrives (`aiter_raw`), all of it
(`aread`), `aclose`.
Closing a response before its end closes its connection (the neuron sees the client go); a
response read to its end returns the connection to the pool.

`UpstreamResponse` and `TransportError` name what `NeuronClient.open_stream` returns and what
reading its body raises when the connection breaks, so that the relay need not import httpx.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from typing import Protocol

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from cortex.config import GatewayConfig
from cortex.nodes.wire import WireStreams

Transport = httpx.AsyncBaseTransport
TransportError = httpx.TransportError


class UpstreamResponse(Protocol):
    """A neuron's streamed answer, whichever client carries it (see the module docstring)."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    def aiter_raw(self) -> AsyncIterator[bytes]: ...

    async def aread(self) -> bytes: ...

    async def aclose(self) -> None: ...


class Streams(Protocol):
    """Sends one inference request and returns its answer once the head has arrived."""

    async def send(self, url: str, body: bytes, headers: dict[str, str]) -> UpstreamResponse: ...

    async def aclose(self) -> None: ...


LIMITS = httpx.Limits(max_connections=512, max_keepalive_connections=128)
# A call's read timeout when it sets none (every NeuronClient call sets its own).
DEFAULT_READ_S = 30.0


def make_http_client(
    config: GatewayConfig, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """The app's client for neuron calls: `transport` if given, else the configured one."""
    if transport is None and config.upstream_transport in ("httptools", "aiohttp"):
        transport = AiohttpUpstream(LIMITS)
    return httpx.AsyncClient(
        transport=transport,
        limits=LIMITS,
        timeout=httpx.Timeout(DEFAULT_READ_S, connect=config.connect_timeout_s),
    )


def make_streams(
    config: GatewayConfig,
    http: httpx.AsyncClient,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Streams:
    """What inference streams go through: bare connections (`wire.WireStreams`) or a bare
    aiohttp session when the configured transport says so and none is given explicitly, else
    `http` itself."""
    if transport is None and config.upstream_transport == "httptools":
        return WireStreams(config.connect_timeout_s, LIMITS.keepalive_expiry)
    if transport is None and config.upstream_transport == "aiohttp":
        return AiohttpStreams(LIMITS, config.connect_timeout_s)
    return HttpxStreams(http)


class HttpxStreams:
    """Inference streams on the app's httpx client (no read timeout: the relay times the body)."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def send(self, url: str, body: bytes, headers: dict[str, str]) -> UpstreamResponse:
        request = self.http.build_request(
            "POST",
            url,
            content=body,
            headers=headers,
            timeout=httpx.Timeout(None, connect=self.http.timeout.connect),
        )
        return await self.http.send(request, stream=True)

    async def aclose(self) -> None:
        """Nothing of its own to close: the app closes the client."""


class AiohttpStreams:
    """Inference streams on a bare aiohttp session: connect bounded by `connect_s`, no total or
    read timeout (the relay times the body); failures are raised as httpx's errors."""

    def __init__(self, limits: httpx.Limits, connect_s: float) -> None:
        self._limits = limits
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_s)
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:  # inside the running loop, on first use
            connector = aiohttp.TCPConnector(
                limit=self._limits.max_connections or 0,
                keepalive_timeout=self._limits.keepalive_expiry,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=self._timeout,
                auto_decompress=False,  # relayed as the neuron sent it
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def send(self, url: str, body: bytes, headers: dict[str, str]) -> UpstreamResponse:
        with _httpx_errors():
            response = await self._open().post(url, data=body, headers=headers)
        return AiohttpResponse(response)

    async def aclose(self) -> None:
        if self._session is not None:
            with _httpx_errors():
                await self._session.close()


class AiohttpResponse:
    """An aiohttp response as an `UpstreamResponse`; its failures are httpx's errors."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    @property
    def status_code(self) -> int:
        return self._response.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        with _httpx_errors():
            async for chunk in self._response.content.iter_any():
                yield chunk

    async def aread(self) -> bytes:
        with _httpx_errors():
            return await self._response.read()

    async def aclose(self) -> None:
        if self._response.content.at_eof():
            self._response.release()  # read to its end: the connection goes back to the pool
        else:
            self._response.close()  # cut short: close it, so the neuron sees the client go


# Most specific first: the first class `exc` is an instance of decides.
_MAP: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    (aiohttp.ClientProxyConnectionError, httpx.ProxyError),
    (aiohttp.ClientHttpProxyError, httpx.ProxyError),
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.SocketTimeoutError, httpx.ReadTimeout),
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.RemoteProtocolError),
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),
    (aiohttp.NonHttpUrlClientError, httpx.UnsupportedProtocol),
    (aiohttp.InvalidUrlClientError, httpx.UnsupportedProtocol),
    (aiohttp.ClientOSError, httpx.ReadError),
    (aiohttp.ClientConnectionError, httpx.ReadError),
    (aiohttp.ClientError, httpx.TransportError),
)


class AiohttpUpstream(httpx.AsyncBaseTransport):
    """httpx-aiohttp's `AiohttpTransport` with every aiohttp failure as an httpx one.

    The package maps most aiohttp errors already but leaves some out (a malformed answer escapes
    as `aiohttp.ClientResponseError`) and names others oddly (a refused connection becomes
    `ConnectTimeout`, a dropped one too); here each failure is raised as the httpx error httpx's
    own transport raises for it, during the request and while its body is read. `limits`:
    `max_connections` bounds the pool (None: no bound), `keepalive_expiry` how long an idle
    connection is kept (None: until the neuron closes it); aiohttp keeps every idle connection,
    so `max_keepalive_connections` has no effect. The aiohttp session is made on first use
    (inside the running loop) and closed by `aclose`.
    """

    def __init__(self, limits: httpx.Limits) -> None:
        self._limits = limits
        self._inner = AiohttpTransport(limits=limits, client=self._session)

    def _session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._limits.max_connections or 0,  # aiohttp's 0 is httpx's None: no bound
            keepalive_timeout=self._limits.keepalive_expiry,
            ssl=self._inner.ssl_context,  # httpx's default context (certifi, SSL_CERT_FILE)
        )
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        with _httpx_errors():
            response = await self._inner.handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)  # an async transport's body
        response.stream = _MappedStream(response.stream)
        return response

    async def aclose(self) -> None:
        with _httpx_errors():
            await self._inner.aclose()


class _MappedStream(httpx.AsyncByteStream):
    """A response body whose aiohttp failures surface as httpx ones."""

    def __init__(self, inner: httpx.AsyncByteStream) -> None:
        self._inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors():
            async for chunk in self._inner:
                yield chunk

    async def aclose(self) -> None:
        with _httpx_errors():
            await self._inner.aclose()


@contextmanager
def _httpx_errors() -> Iterator[None]:
    """Raise the httpx error for an aiohttp one; anything else passes as it is."""
    try:
        yield
    except Exception as exc:
        origin = _origin(exc)
        for aiohttp_class, httpx_class in _MAP:
            if isinstance(origin, aiohttp_class):
                raise httpx_class(str(origin) or type(origin).__name__) from origin
        raise


def _origin(exc: Exception) -> BaseException:
    """The aiohttp error behind `exc` (httpx-aiohttp raises its own mapping `from` it)."""
    cause = exc.__cause__
    if isinstance(exc, httpx.TransportError) and isinstance(cause, aiohttp.ClientError):
        return cause
    return exc
