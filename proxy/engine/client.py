"""The Engine: requests to one origin over pooled HTTP/1.1 connections."""

from __future__ import annotations

import asyncio
import ssl

from .connection import Connection
from .deadlines import Clock, Deadlines
from .errors import ConnectError, ConnectTimeout
from .pool import Pool
from .response import EngineResponse
from .tunnel import ForwardProxy, open_tunnel
from .wire import Body, Headers, send_request


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
        clock: Clock | None = None,
    ) -> None:
        """``proxy`` is an ``http://[user:pass@]host:port`` forward proxy: https origins are reached through a
        CONNECT tunnel, http origins by sending it absolute-form targets (RFC 9112 section 3.2.2).

        Idle connections older than ``keepalive_expiry`` seconds are closed rather than reused: a server that
        times out its idle connections (uvicorn after 5 s by default) may close one just as a request goes out,
        and without retries that request would fail. Keep it below BPOC's keep-alive timeout.

        ``clock`` measures time limits and idle ages (the event loop's clock by default; tests move their own).
        """
        if scheme not in ("http", "https"):
            raise ValueError(f"scheme must be http or https, not {scheme!r}")
        self._host = host
        self._port = port
        self._ssl = (ssl_context or ssl.create_default_context()) if scheme == "https" else None
        default_port = 443 if scheme == "https" else 80
        self._host_header = host if port == default_port else f"{host}:{port}"
        self._proxy = ForwardProxy.parse(proxy) if proxy else None
        self._target_prefix = f"http://{self._host_header}" if self._proxy and not self._ssl else ""
        self._loop = asyncio.get_running_loop()
        clock = clock or self._loop.time
        self.deadlines = Deadlines(self._loop, clock=clock)
        self._pool = Pool(clock, keepalive_expiry)
        self._release = self._pool.release
        self._open: set[Connection] = set()
        #: Connections opened so far, for tests and metrics.
        self.connections_opened = 0

    @property
    def open_connections(self) -> int:
        """Connections to the origin whose sockets are not closed yet: in use or idle."""
        return len(self._open)

    @property
    def idle_connections(self) -> int:
        """Open connections waiting in the pool for a request."""
        return self._pool.idle

    async def request(
        self, method: str, target: str, headers: Headers, body: Body, timeout: float
    ) -> EngineResponse:
        """Send one request; return when the response headers are in. Never retries.

        Raises an EngineError: ConnectError, ConnectTimeout, WriteTimeout, ReadTimeout, RemoteClosed or
        ProtocolError. The response's body is then read with ``read()`` or ``iter_body()``, and the response
        given back with ``release()`` or ``close()``.
        """
        conn = await self._acquire(timeout)
        response = EngineResponse(conn, method, timeout, self.deadlines, self._release)
        conn.start(response)
        try:
            target = self._target_prefix + target
            await send_request(conn, response, method, target, self._host_header, headers, body, timeout)
            await response.wait_headers("BPOC did not answer")
        except BaseException:
            response.close()
            raise
        return response

    async def aclose(self, grace: float = 1.0) -> None:
        """Close the idle connections and wait until their sockets are closed, at most ``grace`` seconds: a TLS
        connection closes only after its close_notify exchange, which a stopping event loop would cut short."""
        self.deadlines.close()
        pending = [conn for conn in self._pool.clear() if not conn.lost.done()]
        if pending:
            await asyncio.wait([conn.lost for conn in pending], timeout=grace)
        for conn in pending:
            if not conn.lost.done():
                conn.abort()

    async def _acquire(self, timeout: float) -> Connection:
        conn = self._pool.take()
        if conn is not None:
            return conn
        try:
            async with asyncio.timeout(timeout):
                conn = await self._connect(timeout)
        except TimeoutError as exc:
            raise ConnectTimeout(f"connecting to BPOC took longer than {timeout:g} s", timeout) from exc
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(f"cannot connect to BPOC at {self._host}:{self._port}: {exc}") from exc
        return conn

    async def _connect(self, timeout: float) -> Connection:
        if self._proxy is None:
            host, port, ssl_context = self._host, self._port, self._ssl
        else:
            host, port, ssl_context = self._proxy.host, self._proxy.port, None
        _, conn = await self._loop.create_connection(
            lambda: Connection(self._loop, self.deadlines, self._lost),
            host,
            port,
            ssl=ssl_context,
            server_hostname=host if ssl_context is not None else None,
        )
        self._open.add(conn)
        self.connections_opened += 1
        if self._proxy is not None and self._ssl is not None:
            try:
                await open_tunnel(
                    conn, self._proxy, (self._host, self._port), self._ssl, self.deadlines, timeout
                )
            except BaseException:
                conn.close()
                raise
        return conn

    def _lost(self, conn: Connection) -> None:
        self._open.discard(conn)
        self._pool.forget(conn)
