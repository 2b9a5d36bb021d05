"""Writing a request: the head and a bytes body in one write, or a streamed body in its own task."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable

from .connection import Connection
from .response import EngineResponse

#: Request headers as they go on the wire: latin-1 bytes, names in lower case.
Headers = list[tuple[bytes, bytes]]
Body = bytes | AsyncIterable[bytes] | None

# Methods whose requests mean nothing by a body, so an absent one needs no "content-length: 0".
_BODILESS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})


async def send_request(
    conn: Connection,
    response: EngineResponse,
    method: str,
    target: str,
    host: str,
    headers: Headers,
    body: Body,
    timeout: float,
) -> None:
    """Write the request line (``target`` as it goes on it), Host, ``headers`` and ``body``.

    A bytes body goes out with the head in one write, with its Content-Length. A streamed body keeps the
    caller's Content-Length if it gave one and is chunked otherwise; it is sent by its own task, so an early
    answer (a 413, a 401) is seen while the upload is still running, and this returns at the first of: the
    body sent, or the response headers in.
    """
    lines = [f"{method} {target} HTTP/1.1\r\nhost: {host}".encode("latin-1")]
    has_length = False
    for name, value in headers:
        has_length = has_length or name == b"content-length"
        lines.append(name + b": " + value)
    parts = [b"\r\n".join(lines), b"\r\n"]
    if body is None or isinstance(body, bytes):
        if body or (not has_length and method not in _BODILESS):
            parts.append(b"content-length: %d\r\n" % len(body or b""))
        parts.append(b"\r\n")
        if body:
            parts.append(body)
        conn.write(b"".join(parts))
        return
    await _send_streamed(conn, response, parts, body, chunked=not has_length, timeout=timeout)


async def _send_streamed(
    conn: Connection,
    response: EngineResponse,
    parts: list[bytes],
    body: AsyncIterable[bytes],
    *,
    chunked: bool,
    timeout: float,
) -> None:
    if chunked:
        parts.append(b"transfer-encoding: chunked\r\n")
    parts.append(b"\r\n")
    conn.write(b"".join(parts))
    sender = conn.loop.create_task(_send_body(conn, body, chunked=chunked, timeout=timeout))
    response.watch_upload(sender)
    # No overall deadline here: a slow client upload is not BPOC's fault. Each write to BPOC is bounded by
    # the drain in _send_body, and the wait for the headers by the caller once the body is out.
    await asyncio.wait([sender, response.headers_arrived], return_when=asyncio.FIRST_COMPLETED)
    if sender.done() and (error := sender.exception()) is not None:
        raise error


async def _send_body(conn: Connection, body: AsyncIterable[bytes], *, chunked: bool, timeout: float) -> None:
    async for chunk in body:
        if not chunk:
            continue
        if chunked:
            conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        else:
            conn.write(chunk)
        await conn.drain(timeout)
    if chunked:
        conn.write(b"0\r\n\r\n")
