"""Reaching the origin through an HTTP forward proxy (``HTTPS_PROXY`` / ``HTTP_PROXY``)."""

from __future__ import annotations

import base64
import ssl
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from .connection import Connection
from .deadlines import Deadlines
from .errors import ConnectError
from .response import EngineResponse
from .wire import send_request


@dataclass(frozen=True, slots=True)
class ForwardProxy:
    """An ``http://[user:pass@]host:port`` forward proxy; its credentials go in Proxy-Authorization."""

    host: str
    port: int
    authorization: str | None

    @classmethod
    def parse(cls, url: str) -> ForwardProxy:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the proxy must be an http:// URL with a host, not {url!r}")
        authorization = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            authorization = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        return cls(parts.hostname, parts.port or 80, authorization)


async def open_tunnel(
    conn: Connection,
    proxy: ForwardProxy,
    authority: tuple[str, int],
    context: ssl.SSLContext,
    deadlines: Deadlines,
    timeout: float,
) -> None:
    """CONNECT through the proxy (RFC 9110 section 9.3.6), then TLS to the origin inside the tunnel."""
    host, port = authority
    target = f"{host}:{port}"
    headers = [(b"proxy-authorization", proxy.authorization.encode())] if proxy.authorization else []
    response = EngineResponse(conn, "CONNECT", timeout, deadlines, _never_released)
    conn.start(response)
    await send_request(conn, response, "CONNECT", target, target, headers, None, timeout)
    await response.wait_headers("the proxy did not answer CONNECT")
    conn.finish()
    if not 200 <= response.status < 300:
        raise ConnectError(f"the proxy refused to tunnel to {target}: {response.status}")
    assert conn.transport is not None
    tls = await conn.loop.start_tls(conn.transport, conn, context, server_hostname=host)
    if tls is None:
        raise ConnectError(f"TLS through the proxy to {target} failed")
    conn.transport = tls


def _never_released(conn: Connection, reusable: bool) -> None:
    """The CONNECT answer is finished with by open_tunnel itself: its connection becomes the tunnel."""
