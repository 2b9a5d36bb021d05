"""The Engine: requests to one origin over pooled HTTP/1.1 connections."""

from __future__ import annotations

import asyncio
import ssl
import time

from .connection import Connection
from .deadlines import Clock, Deadlines
from .errors import ConnectError, ConnectTimeout
from .pool import Pool
from .response import EngineResponse
from .tunnel import ForwardProxy, open_tunnel
from .wire import Body, Headers, send_request


class Engine:
    """Requests to one origin over pooled HTTP/1.1 connections. Call ``aclose()`` when finished.

    ``proxy`` is an ``http://[user:pass@]host:port`` forward proxy: https origins are reached through a CONNECT
    tunnel, http origins by sending it absolute-form targets (RFC 9112 section 3.2.2).

    Idle connections are closed once idle for ``keepalive_expiry`` seconds, used or not: a server that times out
    its idle connections (uvicorn after 5 s by default) may close one just as a request goes out, and without
    retries that request would fail. Keep it below BPOC's keep-alive timeout.

    At most ``max_connections`` are open at once; a request that finds none free waits its turn (first come,
    first served) for at most ``queue_timeout`` seconds, then fails with PoolTimeout, having sent nothing. The
    wait does not count toward the request's own ``timeout``.

    ``clock`` measures time limits and idle ages (the event loop's clock by default; tests move their own).
    """

    def __init__(
        self,
        scheme: str,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        proxy: str | None = None,
        keepalive_expiry: float = 4.0,
        max_connections: int = 100,
        queue_timeout: float = 5.0,
        clock: Clock | None = None,
    ) -> None:
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
        self._pool = Pool(
            self._connect,
            self.deadlines,
            clock,
            limit=max_connections,
            expiry=keepalive_expiry,
            queue_timeout=queue_timeout,
        )
        self._release = self._pool.release
        self._open: set[Connection] = set()
        #: Connections opened so far, for tests and metrics.
        self.connections_opened = 0

    # The pool's state, for metrics: read-only.

    @property
    def open_connections(self) -> int:
        """Connections to the origin whose sockets are not closed yet: in use, idle, or just closing."""
        return len(self._open)

    @property
    def idle_connections(self) -> int:
        """Open connections waiting in the pool for a request."""
        return self._pool.idle

    @property
    def waiting(self) -> int:
        """Requests queued for a connection now."""
        return self._pool.waiting

    @property
    def queue_timeouts(self) -> int:
        """Requests that waited the whole queue timeout for a connection in vain, so far."""
        return self._pool.queue_timeouts

    async def request(
        self, method: str, target: str, headers: Headers, body: Body, timeout: float
    ) -> EngineResponse:
        """Send one request; return when the response headers are in. Never retries.

        Raises an EngineError: PoolTimeout, ConnectError, ConnectTimeout, WriteTimeout, ReadTimeout,
        RemoteClosed or ProtocolError. The response's body is then read with ``read()`` or ``iter_body()``,
        and the response given back with ``release()`` or ``close()``.
        """
        conn = await self._pool.acquire(timeout)
        response = EngineResponse(conn, method, timeout, self.deadlines, self._release)
        conn.start(response)
        sent = time.perf_counter()  # the wait for a connection is the pool's, not the origin's
        try:
            target = self._target_prefix + target
            await send_request(conn, response, method, target, self._host_header, headers, body, timeout)
            await response.wait_headers("BPOC did not answer")
        except BaseException:
            response.close()
            raise
        response.elapsed = time.perf_counter() - sent
        return response

    def reap(self) -> None:
        """Close the connections idle for ``keepalive_expiry`` seconds. A timer calls this as each expires;
        a test that moves an injected clock calls it itself."""
        self._pool.reap()

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

    async def _connect(self, timeout: float) -> Connection:
        """A new connection, opened within ``timeout`` (the pool calls this with a slot taken)."""
        try:
            async with asyncio.timeout(timeout):
                return await self._open_socket(timeout)
        except TimeoutError as exc:
            raise ConnectTimeout(f"connecting to BPOC took longer than {timeout:g} s", timeout) from exc
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(f"cannot connect to BPOC at {self._host}:{self._port}: {exc}") from exc

    async def _open_socket(self, timeout: float) -> Connection:
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
