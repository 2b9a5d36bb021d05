"""The connection to BPOC: the outgoing header set, the agency key, sending, and mapping client errors.

The forwarding engine is our own lean HTTP/1.1 client (``engine.py``), chosen by measurement: on this project's
benchmark httpx.AsyncClient forwarded ~350 requests/s, aiohttp ~5,000-7,000, the engine more than twice aiohttp
(README, "Performance"). httpx stays where it is not the bottleneck: the portal and the recruiter directory.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .engine import Engine, EngineResponse, Headers
from .errors import BadGateway, ConfigError, GatewayTimeout
from .settings import IPNetwork, Settings, read_secret_file

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
    """The connection pool to BPOC for one worker, with the proxy's timeout and no client-side magic."""

    def __init__(self, settings: Settings, api_key: ApiKey) -> None:
        parts = urlsplit(settings.bpoc_base_url)
        self._scheme = parts.scheme
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._api_key = api_key
        self._proxy = settings.upstream_proxy
        self._timeout = settings.upstream_timeout
        self._ssl: ssl.SSLContext | None = None
        if parts.scheme == "https":
            cafile = str(settings.ssl_cert_file) if settings.ssl_cert_file else None
            self._ssl = ssl.create_default_context(cafile=cafile)
        self._engine: Engine | None = None

    async def start(self) -> None:
        self._engine = Engine(self._scheme, self._host, self._port, ssl_context=self._ssl, proxy=self._proxy)

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.aclose()

    async def send(
        self,
        method: str,
        target: str,
        headers: Headers,
        body: bytes | AsyncIterable[bytes] | None,
    ) -> EngineResponse:
        """Send one request to BPOC and return the response with its body unread. Never retries, never follows.

        A bytes body gets its Content-Length from the engine; a streamed one keeps the client's, if it had one.
        """
        assert self._engine is not None, "Upstream.start() was not awaited"
        headers.append((b"x-api-key", self._api_key.get().encode("latin-1")))
        try:
            return await self._engine.request(method, target, headers, body, self._timeout)
        except GatewayTimeout as exc:
            raise GatewayTimeout(
                f"BPOC did not answer within PROXY_UPSTREAM_TIMEOUT ({self._timeout:g} s)"
            ) from exc
        except BadGateway as exc:
            raise BadGateway(f"BPOC could not be reached: {exc.message}") from exc

    async def stream(self, response: EngineResponse) -> AsyncIterator[bytes]:
        """The response body as it arrives, raw; a failure mid-body is re-raised as BadGateway/GatewayTimeout."""
        try:
            async for chunk in response.iter_body():
                yield chunk
        except GatewayTimeout as exc:
            raise GatewayTimeout("BPOC stopped sending the response body") from exc

    async def read(self, response: EngineResponse) -> bytes:
        return await response.read()
