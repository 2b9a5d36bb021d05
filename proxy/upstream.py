"""The connection to BPOC: the outgoing header set, the agency key, sending, and the engine's errors converted.

This is the only module that knows the forwarding engine (``proxy/engine/``), our own lean HTTP/1.1 client chosen
by measurement: on this project's benchmark httpx.AsyncClient forwarded ~350 requests/s, aiohttp ~5,000-7,000,
the engine more than twice aiohttp (README, "Performance"). httpx stays where it is not the bottleneck: the portal
and the recruiter directory. The engine raises its own EngineErrors; they become the proxy's errors here, once,
with ``raise ... from``. The pipeline sees an UpstreamResponse inside ``async with upstream.request(...)``, and
never releases or closes a connection itself.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

from .engine import Engine, EngineError, EngineResponse, EngineTimeout, PoolTimeout
from .environ import IPNetwork, read_secret_file
from .errors import BadGateway, ConfigError, GatewayTimeout, ProxyError, UpstreamBusy
from .settings import Settings

# RFC 9110 section 7.6.1, plus the Proxy-* family and the legacy Keep-Alive. Never forwarded in either direction.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Headers the proxy owns on the way to BPOC: recomputed, replaced, or not the client's to send.
_REQUEST_OWNED = frozenset(
    {b"host", b"content-length", b"x-api-key", b"expect", b"x-request-id", b"x-forwarded-for"}
    | {b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port", b"forwarded", b"x-real-ip"}
)
_FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"})

RawHeaders = Iterable[tuple[bytes, bytes]]
#: Headers as they go to BPOC and come back: latin-1 bytes, names in lower case.
Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Client:
    """Who is on the other end of the client connection, as the proxy may trust it."""

    host: str | None
    scheme: str


def connection_tokens(values: Iterable[bytes]) -> frozenset[bytes]:
    """Header names listed in Connection headers' values, which are hop-by-hop too (RFC 9110 section 7.6.1)."""
    return frozenset(
        token.strip().lower() for value in values for token in value.split(b",") if token.strip()
    )


def is_trusted(host: str | None, trusted: tuple[IPNetwork, ...]) -> bool:
    if not trusted or host is None:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in trusted)


@functools.lru_cache(maxsize=8)
def _request_skip(drop: frozenset[bytes]) -> frozenset[bytes]:
    return HOP_BY_HOP | _REQUEST_OWNED | drop


def request_headers(
    raw: RawHeaders,
    *,
    client: Client,
    trusted: bool,
    drop: frozenset[bytes],
    session_cookie: bytes | None,
    request_id: str,
) -> Headers:
    """The headers to send to BPOC, less the agency key (added by Upstream.send).

    ``raw`` are ASGI headers (names in lower case). ``drop`` names further headers to remove, such as the
    session header. X-Forwarded-* and Forwarded from the client are kept only when the client's address is in
    PROXY_TRUSTED_PROXIES; otherwise they are replaced.
    """
    skip = _request_skip(drop)
    out: Headers = []
    connection: list[bytes] = []
    forwarded_for = forwarded_proto = forwarded_host = server_host = None
    for name, value in raw:
        if name not in skip and name != b"cookie":
            out.append((name, value))
        elif name == b"host":
            server_host = value  # the host the client asked for: X-Forwarded-Host, unless a proxy set one
        elif name == b"connection":
            connection.append(value)
        elif name == b"cookie":
            kept = _without_cookie(value, session_cookie) if session_cookie else value
            if kept:
                out.append((name, kept))
        elif trusted and name in _FORWARDED:
            if name == b"x-forwarded-for":
                forwarded_for = forwarded_for + b", " + value if forwarded_for else value
            elif name == b"x-forwarded-proto":
                forwarded_proto = value
            elif name == b"x-forwarded-host":
                forwarded_host = value
            else:
                out.append((name, value))
    if connection:  # rare over HTTP/1.1: a client naming more headers as hop-by-hop
        tokens = connection_tokens(connection)
        out = [(name, value) for name, value in out if name not in tokens]
    if client.host:
        host = client.host.encode("latin-1")
        forwarded_for = forwarded_for + b", " + host if forwarded_for else host
    if forwarded_for:
        out.append((b"x-forwarded-for", forwarded_for))
    out.append((b"x-forwarded-proto", forwarded_proto or client.scheme.encode("latin-1")))
    if forwarded_host or server_host:
        out.append((b"x-forwarded-host", forwarded_host or server_host or b""))
    out.append((b"x-request-id", request_id.encode("latin-1")))
    return out


def _without_cookie(header: bytes, name: bytes) -> bytes:
    pairs = [pair.strip() for pair in header.split(b";")]
    return b"; ".join(p for p in pairs if p and p.split(b"=", 1)[0].strip() != name)


def response_headers(raw: RawHeaders, *, drop_cors: bool = False) -> list[tuple[bytes, bytes]]:
    """BPOC's response headers (names in lower case) as the client should see them: hop-by-hop removed, and
    BPOC's CORS headers when the proxy answers CORS itself; nothing else touched."""
    kept: list[tuple[bytes, bytes]] = []
    connection: list[bytes] = []
    for name, value in raw:
        if name not in HOP_BY_HOP:
            kept.append((name, value))
        elif name == b"connection":
            connection.append(value)
    if connection and (tokens := connection_tokens(connection) - HOP_BY_HOP):
        kept = [(name, value) for name, value in kept if name not in tokens]
    if drop_cors:
        kept = [(name, value) for name, value in kept if not name.startswith(b"access-control-")]
    return kept


class ApiKey:
    """The agency key: fixed, or read from a mounted secret file and re-read when the file changes.

    Kubernetes rotates a mounted secret by swapping a symlink, so the file is stat()ed (following links) at most
    once a second; a changed inode, size or mtime means read it again.
    """

    def __init__(self, settings: Settings) -> None:
        self._path: Path | None = settings.api_key_file
        self._value = settings.api_key or ""
        self._signature: tuple[int, int, int] | None = None
        self._checked = 0.0
        if self._path is not None:
            self._reload()

    def __repr__(self) -> str:
        return "ApiKey(***)"

    def get(self) -> str:
        if self._path is not None:
            now = time.monotonic()
            if now - self._checked >= 1.0:
                self._checked = now
                self._reload()
        return self._value

    def _reload(self) -> None:
        assert self._path is not None
        try:
            stat = os.stat(self._path)
        except OSError:
            return  # keep the last good key while a rotation is in flight
        signature = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if signature != self._signature:
            try:
                self._value = read_secret_file(self._path, "BPOC_API_KEY_FILE")
                self._signature = signature
            except ConfigError:
                pass  # a half-written file: keep the previous key and try again next second


class Upstream:
    """The pool of connections to BPOC for one worker (bounded by PROXY_UPSTREAM_MAX_CONNECTIONS, README
    "Connections to BPOC"), with the proxy's timeout and no client-side magic."""

    def __init__(self, settings: Settings, api_key: ApiKey) -> None:
        parts = urlsplit(settings.bpoc_base_url)
        self._scheme = parts.scheme
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._api_key = api_key
        self._proxy = settings.upstream_proxy
        self._timeout = settings.upstream_timeout
        self._max_connections = settings.upstream_max_connections
        self._queue_timeout = settings.upstream_queue_timeout
        self._ssl: ssl.SSLContext | None = None
        if parts.scheme == "https":
            cafile = str(settings.ssl_cert_file) if settings.ssl_cert_file else None
            self._ssl = ssl.create_default_context(cafile=cafile)
        self._engine: Engine | None = None

    async def start(self) -> None:
        self._engine = Engine(
            self._scheme,
            self._host,
            self._port,
            ssl_context=self._ssl,
            proxy=self._proxy,
            max_connections=self._max_connections,
            queue_timeout=self._queue_timeout,
        )

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.aclose()

    # The pool's state, for metrics (0 before start()).

    @property
    def open_connections(self) -> int:
        """Connections to BPOC open now: in use, idle, or just closing."""
        return self._engine.open_connections if self._engine is not None else 0

    @property
    def idle_connections(self) -> int:
        """Open connections to BPOC waiting for a request."""
        return self._engine.idle_connections if self._engine is not None else 0

    @property
    def waiting(self) -> int:
        """Requests queued for a connection to BPOC now."""
        return self._engine.waiting if self._engine is not None else 0

    @property
    def queue_timeouts(self) -> int:
        """Requests refused with upstream_busy so far: no connection came free within the queue timeout."""
        return self._engine.queue_timeouts if self._engine is not None else 0

    def request(
        self, method: str, target: str, headers: Headers, body: bytes | AsyncIterable[bytes] | None
    ) -> AbstractAsyncContextManager[UpstreamResponse]:
        """One request to BPOC, sent on entering the ``async with``, which gives the response with its body
        unread. Never retries, never follows a redirect.

        The agency key is added to ``headers``. A bytes body gets its Content-Length from the engine; a streamed
        one keeps the client's, if it had one. Leaving the block gives the connection back to the pool when the
        body was read to the end on a keep-alive connection, and closes it otherwise.
        """
        assert self._engine is not None, "Upstream.start() was not awaited"
        headers.append((b"x-api-key", self._api_key.get().encode("latin-1")))
        return UpstreamResponse(self._engine, self._timeout, method, target, headers, body)


class UpstreamResponse:
    """BPOC's answer as the pipeline sees it: status, headers (names in lower case), Content-Length, the body.

    It is its own context manager (one object per request on the hot path, and cheaper than
    ``@asynccontextmanager``): ``__aenter__`` sends the request and waits for the headers. Every engine error
    leaves it as a ProxyError: 504 when BPOC is too slow, 502 when it cannot be reached or breaks the exchange.
    """

    __slots__ = (
        "status",
        "raw_headers",
        "content_length",
        "elapsed",
        "_engine",
        "_timeout",
        "_request",
        "_response",
    )

    def __init__(
        self,
        engine: Engine,
        timeout: float,
        method: str,
        target: str,
        headers: Headers,
        body: bytes | AsyncIterable[bytes] | None,
    ) -> None:
        self.status = 0
        self.raw_headers: Headers = []
        self.content_length: int | None = None
        #: BPOC's time to response headers, in seconds (the wait for a free connection left out).
        self.elapsed = 0.0
        self._engine = engine
        self._timeout = timeout
        self._request = (method, target, headers, body)
        self._response: EngineResponse | None = None

    async def __aenter__(self) -> UpstreamResponse:
        method, target, headers, body = self._request
        try:
            response = await self._engine.request(method, target, headers, body, self._timeout)
        except EngineError as exc:
            raise _sending_failed(exc) from exc
        self._response = response
        self.status = response.status
        self.raw_headers = response.raw_headers
        self.content_length = response.content_length
        self.elapsed = response.elapsed
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._response is not None:
            if kind is None:
                self._response.release()  # pooled if the body was read to the end, closed otherwise
            else:
                self._response.close()

    async def read(self) -> bytes:
        """The whole body."""
        assert self._response is not None, "read() outside the async with block"
        try:
            return await self._response.read()
        except EngineTimeout as exc:
            raise GatewayTimeout(
                f"BPOC did not send the response body within PROXY_UPSTREAM_TIMEOUT ({self._timeout:g} s)"
            ) from exc
        except EngineError as exc:
            raise BadGateway(str(exc)) from exc

    async def stream(self) -> AsyncIterator[bytes]:
        """The body as it arrives, raw; a failure mid-body is a GatewayTimeout or a BadGateway."""
        assert self._response is not None, "stream() outside the async with block"
        try:
            async for chunk in self._response.iter_body():
                yield chunk
        except EngineTimeout as exc:
            raise GatewayTimeout("BPOC stopped sending the response body") from exc
        except EngineError as exc:
            raise BadGateway(str(exc)) from exc

    def __repr__(self) -> str:
        method, target, _, _ = self._request
        return f"<UpstreamResponse {method} {target} {self.status or 'not sent'}>"


def _sending_failed(exc: EngineError) -> ProxyError:
    """The client-facing error for an exchange that failed before BPOC's response headers were in."""
    if isinstance(exc, PoolTimeout):
        return UpstreamBusy(
            "Every connection to BPOC (PROXY_UPSTREAM_MAX_CONNECTIONS) stayed busy for "
            f"PROXY_UPSTREAM_QUEUE_TIMEOUT ({exc.timeout:g} s); nothing was sent, try again shortly"
        )
    if isinstance(exc, EngineTimeout):
        return GatewayTimeout(f"BPOC did not answer within PROXY_UPSTREAM_TIMEOUT ({exc.timeout:g} s)")
    return BadGateway(f"BPOC could not be reached: {exc}")
