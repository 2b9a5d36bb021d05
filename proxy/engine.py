"""A lean HTTP/1.1 client for one origin: asyncio Protocols, httptools' response parser, a keep-alive pool.

An experiment against aiohttp's per-request cost on the forwarding path. It does only what the proxy needs:
one request per connection at a time (no pipelining), bodies passed through as bytes (Content-Encoding
untouched, chunked framing removed by the parser), no redirects, no cookies, and never a retry — a pooled
connection that the server has closed is noticed when taken from the pool and thrown away instead.

Errors leave as the proxy's own: GatewayTimeout when connecting, waiting for the headers, writing a body chunk
or reading one takes longer than ``timeout``; BadGateway when the connection is refused, reset or closed
before the response is complete, or the response is not HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import httptools

from .errors import BadGateway, GatewayTimeout

#: Request headers as they go on the wire: latin-1 bytes, names in lower case.
Headers = list[tuple[bytes, bytes]]
RawHeaders = list[tuple[bytes, bytes]]
Body = bytes | AsyncIterable[bytes] | None

# Read-side flow control: stop reading the socket while this much body is queued and not yet consumed.
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024
# Responses that never carry a body (RFC 9112 section 6.3): llhttp knows 1xx/204/304 but not that a HEAD
# response's Content-Length describes a body that is not sent, and httptools gives no way to tell it.
_NO_BODY_STATUS = frozenset({204, 304})


class _Connection(asyncio.Protocol):
    """One socket to the origin; it parses the response to the request in flight into ``self.response``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, deadlines: Deadlines) -> None:
        self._loop = loop
        self._deadlines = deadlines
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.response: EngineResponse | None = None
        self._parser: httptools.HttpResponseParser | None = None
        # The parser of the last response, kept for the next one on this keep-alive connection.
        self._spare: httptools.HttpResponseParser | None = None
        self._drain: asyncio.Future[None] | None = None
        self._write_paused = False
        self.lost: asyncio.Future[None] = loop.create_future()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, so this is a cast, not an isinstance check.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.lost.done():
            self.lost.set_result(None)
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(
                BadGateway("BPOC closed the connection while the request was being sent")
            )
        if self.response is not None:
            self.response._eof()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._parser is None or self.response is None:
            self.close()  # bytes nobody asked for: the connection is out of step, never reuse it
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.response._fail(BadGateway(f"BPOC sent a response that is not valid HTTP/1.1: {exc}"))
            self.close()
        except httptools.HttpParserUpgrade:
            # 101 Switching Protocols: the proxy never asks for an upgrade, so there is nothing to switch to.
            self.response._fail(BadGateway("BPOC switched protocols, which the proxy does not support"))
            self.close()

    # httptools callbacks

    def on_message_begin(self) -> None:
        assert self.response is not None
        if self.response.status:
            # A second response to one request: the stream is out of step. Raising stops the parser.
            raise BadGateway("BPOC sent more than one response to a request")
        self.response.raw_headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        self.response.raw_headers.append((name.lower(), value))  # lowered once, here, as ASGI wants them

    def on_headers_complete(self) -> None:
        assert self.response is not None and self._parser is not None
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            return  # 100 Continue, 103 Early Hints: interim, the real response follows on the same parser
        self.response._headers_complete(status, self._parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        assert self.response is not None
        self.response._body(body)

    def on_message_complete(self) -> None:
        assert self.response is not None and self._parser is not None
        if self.response.status >= 200 or self.response.status == 101:
            self.response._complete(self._parser.should_keep_alive())

    # used by Engine and EngineResponse

    def start(self, response: EngineResponse) -> None:
        self.response = response
        self._parser, self._spare = self._spare or httptools.HttpResponseParser(self), None

    def finish(self, *, reuse_parser: bool = False) -> None:
        """The response is done with; ``reuse_parser`` when it ended cleanly and the parser agrees on where
        (not after a HEAD: llhttp would wait for the body its Content-Length announced)."""
        self.response = None
        self._spare = self._parser if reuse_parser else None
        self._parser = None

    async def drain(self, timeout: float) -> None:
        if self.closed:
            raise BadGateway("BPOC closed the connection while the request was being sent")
        if not self._write_paused:
            return
        self._drain = self._loop.create_future()
        await self._deadlines.wait(self._drain, timeout, "BPOC did not read the request body")

    @property
    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Deadlines:
    """Time limits for many waits, kept by one timer instead of one each: arming and cancelling a libuv timer for
    every request costs more than the request's whole HTTP/1.1 framing. A wait that runs out fails with
    GatewayTimeout at most ``tick`` seconds after its limit."""

    def __init__(self, loop: asyncio.AbstractEventLoop, tick: float = 0.1) -> None:
        self._loop = loop
        self._tick = tick
        self._waits: dict[asyncio.Future[Any], tuple[float, str]] = {}
        self._timer: asyncio.TimerHandle | None = None

    async def wait(self, future: asyncio.Future[Any], timeout: float, what: str) -> Any:
        """``await future``, or GatewayTimeout("{what} within the upstream timeout") after ``timeout`` s."""
        if future.done():
            return future.result()
        self._waits[future] = (self._loop.time() + timeout, what)
        if self._timer is None:
            self._timer = self._loop.call_later(self._tick, self._check)
        try:
            return await future
        finally:
            self._waits.pop(future, None)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        now = self._loop.time()
        for future, (limit, what) in list(self._waits.items()):
            if limit <= now:
                del self._waits[future]
                if not future.done():
                    future.set_exception(GatewayTimeout(f"{what} within the upstream timeout"))
        self._timer = self._loop.call_later(self._tick, self._check) if self._waits else None


class EngineResponse:
    """A response whose headers have arrived; the body is read with ``iter_body()`` or ``read()``.

    Call ``release()`` (or ``close()``) when done: a fully read keep-alive response gives its connection back
    to the pool, anything else closes it.
    """

    def __init__(self, engine: Engine, conn: _Connection, method: str, timeout: float) -> None:
        self._engine = engine
        self._conn = conn
        self._loop = engine._loop
        self._timeout = timeout
        # A CONNECT answer's headers are followed by the tunnel, not a body; a HEAD answer's by nothing.
        self._head = method in ("HEAD", "CONNECT")
        self.status = 0
        #: The response headers as received, names in lower case.
        self.raw_headers: RawHeaders = []
        self.content_length: int | None = None
        self._headers: asyncio.Future[None] = self._loop.create_future()
        self._chunks: deque[bytes] = deque()
        self._queued = 0
        self._read_paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._done = False
        self._keep_alive = False
        self._error: BaseException | None = None
        self._until_close = False
        self._released = False
        self._sender: asyncio.Task[None] | None = None

    # fed by _Connection

    def _headers_complete(self, status: int, keep_alive: bool) -> None:
        self.status = status
        chunked = False
        for name, value in self.raw_headers:
            if name == b"content-length":
                self.content_length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
        if self._head or status in _NO_BODY_STATUS:
            self.content_length = 0 if status in _NO_BODY_STATUS else self.content_length
            self._complete(keep_alive)
        else:
            self._until_close = self.content_length is None and not chunked
        if not self._headers.done():
            self._headers.set_result(None)

    def _body(self, data: bytes) -> None:
        if self._done:
            self._keep_alive = False  # a body on a HEAD response: the stream is out of step
            return
        self._chunks.append(data)
        self._queued += len(data)
        if self._queued > _HIGH_WATER and not self._read_paused and self._conn.transport is not None:
            self._read_paused = True
            self._conn.transport.pause_reading()
        self._wake()

    def _complete(self, keep_alive: bool) -> None:
        if not self._done:
            self._done = True
            self._keep_alive = keep_alive
            self._wake()

    def _eof(self) -> None:
        if self._headers.done() and self._until_close:
            self._complete(False)  # no Content-Length, not chunked: the body ends with the connection
        elif not self._done:
            self._fail(BadGateway("BPOC closed the connection before the response was complete"))

    def _fail(self, error: BaseException) -> None:
        if self._error is None and not self._done:
            self._error = error
            if not self._headers.done():
                self._headers.set_exception(error)
            self._wake(error)

    def _wake(self, error: BaseException | None = None) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)

    # public

    async def iter_body(self) -> AsyncIterator[bytes]:
        """The body bytes as they arrive; raises BadGateway or GatewayTimeout if the body breaks off."""
        while True:
            if self._chunks:
                # Whatever arrived while the consumer was busy goes out as one piece: fewer, larger sends.
                if len(self._chunks) == 1:
                    data = self._chunks.popleft()
                else:
                    data = b"".join(self._chunks)
                    self._chunks.clear()
                self._queued -= len(data)
                if self._read_paused and self._queued <= _LOW_WATER and self._conn.transport is not None:
                    self._read_paused = False
                    self._conn.transport.resume_reading()
                yield data
            elif self._done:
                return
            elif self._error is not None:
                raise self._error
            else:
                self._waiter = self._loop.create_future()
                await self._engine.deadlines.wait(
                    self._waiter, self._timeout, "BPOC did not send the response body"
                )

    async def read(self) -> bytes:
        """The whole body; the common case, a body that came in one segment, costs no join."""
        if self._done and len(self._chunks) == 1 and not self._read_paused:
            self._queued = 0
            return self._chunks.popleft()
        return b"".join([chunk async for chunk in self.iter_body()])

    def release(self) -> None:
        """Give the connection back to the pool if the response was read to the end, else close it."""
        if self._released:
            return
        self._released = True
        conn = self._conn
        sender = self._sender
        sent = sender is None or (sender.done() and not sender.cancelled() and sender.exception() is None)
        if sent and self._done and self._keep_alive and not self._chunks and not self._read_paused:
            conn.finish(reuse_parser=not self._head)
            self._engine._put(conn)
        else:
            conn.finish()
            self._stop_sender()
            conn.close()

    def close(self) -> None:
        """Close the connection whatever the state of the response."""
        self._done = False
        self.release()

    def _stop_sender(self) -> None:
        if self._sender is None:
            return
        if not self._sender.done():
            self._sender.cancel()
        elif not self._sender.cancelled():
            self._sender.exception()  # retrieved, so asyncio does not log it as never retrieved


@dataclass(frozen=True, slots=True)
class _Proxy:
    host: str
    port: int
    authorization: str | None

    @classmethod
    def parse(cls, url: str) -> _Proxy:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the proxy must be an http:// URL with a host, not {url!r}")
        authorization = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            authorization = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        return cls(parts.hostname, parts.port or 80, authorization)


class Engine:
    """Requests to one origin over pooled HTTP/1.1 connections. Call ``aclose()`` when finished."""

    def __init__(
        self,
        scheme: str,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        proxy: str | None = None,
        keepalive_expiry: float = 4.0,
    ) -> None:
        """``proxy`` is an ``http://[user:pass@]host:port`` forward proxy: https origins are reached through a
        CONNECT tunnel, http origins by sending it absolute-form targets (RFC 9112 section 3.2.2).

        Idle connections older than ``keepalive_expiry`` seconds are closed rather than reused: a server that
        times out its idle connections (uvicorn after 5 s by default) may close one just as a request goes out,
        and without retries that request would fail. Keep it below BPOC's keep-alive timeout.
        """
        if scheme not in ("http", "https"):
            raise ValueError(f"scheme must be http or https, not {scheme!r}")
        self._host = host
        self._port = port
        self._ssl = (ssl_context or ssl.create_default_context()) if scheme == "https" else None
        default_port = 443 if scheme == "https" else 80
        self._host_header = host if port == default_port else f"{host}:{port}"
        self._proxy = _Proxy.parse(proxy) if proxy else None
        self._target_prefix = f"http://{self._host_header}" if self._proxy and not self._ssl else ""
        self._expiry = keepalive_expiry
        self._idle: list[tuple[float, _Connection]] = []
        self._loop = asyncio.get_running_loop()
        self.deadlines = Deadlines(self._loop)
        #: Connections opened so far, for tests and metrics.
        self.connections_opened = 0

    async def request(
        self, method: str, target: str, headers: Headers, body: Body, timeout: float
    ) -> EngineResponse:
        """Send one request; return when the response headers are in. Never retries."""
        conn = await self._acquire(timeout)
        response = EngineResponse(self, conn, method, timeout)
        conn.start(response)
        try:
            await self._send(conn, response, method, target, headers, body, timeout)
            await self.deadlines.wait(response._headers, timeout, "BPOC did not answer")
        except BaseException:
            response.close()
            raise
        return response

    async def aclose(self, grace: float = 1.0) -> None:
        """Close the idle connections and wait until their sockets are closed, at most ``grace`` seconds: a TLS
        connection closes only after its close_notify exchange, which a stopping event loop would cut short."""
        self.deadlines.close()
        idle, self._idle = self._idle, []
        for _, conn in idle:
            conn.close()
        pending = [conn for _, conn in idle if not conn.lost.done()]
        if pending:
            await asyncio.wait([conn.lost for conn in pending], timeout=grace)
        for conn in pending:
            if not conn.lost.done() and conn.transport is not None:
                conn.transport.abort()

    # the pool

    async def _acquire(self, timeout: float) -> _Connection:
        fresh_after = self._loop.time() - self._expiry
        while self._idle:
            since, conn = (
                self._idle.pop()
            )  # LIFO: the most recently used connection is the least likely stale
            if conn.usable and since >= fresh_after:
                return conn
            conn.close()
        try:
            async with asyncio.timeout(timeout):
                conn = await self._connect(timeout)
        except TimeoutError as exc:
            raise GatewayTimeout(f"connecting to BPOC took longer than {timeout:g}s") from exc
        except (OSError, ssl.SSLError) as exc:
            raise BadGateway(f"cannot connect to BPOC at {self._host}:{self._port}: {exc}") from exc
        self.connections_opened += 1
        return conn

    async def _connect(self, timeout: float) -> _Connection:
        if self._proxy is None:
            host, port, ssl_context = self._host, self._port, self._ssl
        else:
            host, port, ssl_context = self._proxy.host, self._proxy.port, None
        _, conn = await self._loop.create_connection(
            lambda: _Connection(self._loop, self.deadlines),
            host,
            port,
            ssl=ssl_context,
            server_hostname=host if ssl_context is not None else None,
        )
        if self._proxy is not None and self._ssl is not None:
            try:
                await self._tunnel(conn, self._proxy, self._ssl, timeout)
            except BaseException:
                conn.close()
                raise
        return conn

    async def _tunnel(
        self, conn: _Connection, proxy: _Proxy, context: ssl.SSLContext, timeout: float
    ) -> None:
        """CONNECT through the proxy (RFC 9110 section 9.3.6), then TLS to the origin inside the tunnel."""
        authority = f"{self._host}:{self._port}"
        headers = [(b"proxy-authorization", proxy.authorization.encode())] if proxy.authorization else []
        response = EngineResponse(self, conn, "CONNECT", timeout)
        conn.start(response)
        await self._send(conn, response, "CONNECT", authority, headers, None, timeout, host=authority)
        await self.deadlines.wait(response._headers, timeout, "the proxy did not answer CONNECT")
        conn.finish()
        if not 200 <= response.status < 300:
            raise BadGateway(f"the proxy refused to tunnel to {authority}: {response.status}")
        assert conn.transport is not None
        tls = await self._loop.start_tls(conn.transport, conn, context, server_hostname=self._host)
        if tls is None:
            raise BadGateway(f"TLS through the proxy to {authority} failed")
        conn.transport = tls

    def _put(self, conn: _Connection) -> None:
        if conn.usable:
            self._idle.append((self._loop.time(), conn))
        else:
            conn.close()

    # sending

    async def _send(
        self,
        conn: _Connection,
        response: EngineResponse,
        method: str,
        target: str,
        headers: Headers,
        body: Body,
        timeout: float,
        *,
        host: str | None = None,
    ) -> None:
        target = target if host else self._target_prefix + target
        head = [f"{method} {target} HTTP/1.1\r\nhost: {host or self._host_header}".encode("latin-1")]
        has_length = False
        for name, value in headers:
            has_length = has_length or name == b"content-length"
            head.append(name + b": " + value)
        lines = [b"\r\n".join(head), b"\r\n"]
        transport = conn.transport
        assert transport is not None
        if body is None or isinstance(body, bytes):
            if body or (not has_length and method not in ("GET", "HEAD", "DELETE", "OPTIONS")):
                lines.append(b"content-length: %d\r\n" % len(body or b""))
            lines.append(b"\r\n")
            if body:
                lines.append(body)
            transport.write(b"".join(lines))
            return
        if not has_length:
            lines.append(b"transfer-encoding: chunked\r\n")
        lines.append(b"\r\n")
        transport.write(b"".join(lines))
        # The body goes out in its own task so an early answer (413, 401) is seen while the upload is still running.
        sender = self._loop.create_task(_send_body(conn, body, chunked=not has_length, timeout=timeout))
        response._sender = sender
        # No overall deadline here: a slow client upload is not BPOC's fault. Each write to BPOC is bounded by
        # the drain in _send_body, and the wait for the headers by request() once the body is out.
        await asyncio.wait([sender, response._headers], return_when=asyncio.FIRST_COMPLETED)
        if sender.done() and (error := sender.exception()) is not None:
            raise error


async def _send_body(conn: _Connection, body: AsyncIterable[bytes], *, chunked: bool, timeout: float) -> None:
    transport = conn.transport
    assert transport is not None
    async for chunk in body:
        if not chunk:
            continue
        if chunked:
            transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        else:
            transport.write(chunk)
        await conn.drain(timeout)
    if chunked:
        transport.write(b"0\r\n\r\n")
