"""uvicorn's httptools protocol, with a response's head and the start of its body sent in one write.

uvicorn writes the status line and headers on ``http.response.start`` and the body on ``http.response.body``: two
send() calls for every response, and a send() on a TCP socket is one of the dearest steps of a proxied request
(README, "Performance"). The transport given to uvicorn holds a write that looks like a response head until the
next write on the connection, or until the event loop's next turn, whichever comes first. Bytes never change
order and a head is never held back for longer than one turn of the loop, so a streamed response whose body is
slow to come still sends its head at once.

``SERVER_OPTIONS`` are the uvicorn options the proxy is served with, wherever it runs.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeadHoldingTransport:
    """A transport that delays a response head (``HTTP/1.x ...\\r\\n\\r\\n``) until the write after it."""

    __slots__ = ("_transport", "_loop", "_held")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif data[:7] == b"HTTP/1." and data[-4:] == b"\r\n\r\n":
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def writelines(self, lines: Any) -> None:
        self.write(b"".join(lines))

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held or b"")

    def __getattr__(self, name: str) -> Any:
        # Everything else (pause_reading, get_extra_info, is_closing, ...) is the real transport's.
        return getattr(self._transport, name)


class ProxyHttpProtocol(HttpToolsProtocol):
    """The proxy's HTTP/1.1 protocol: uvicorn's, writing through a HeadHoldingTransport."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn
        wrapped: Any = HeadHoldingTransport(transport, self.loop)
        super().connection_made(wrapped)

    def _unsupported_upgrade_warning(self) -> None:
        # Served with ws="none", an upgrade request reaches the app as plain HTTP, and the pipeline refuses a
        # WebSocket handshake with its own JSON error. uvicorn's warning (which blames a missing WebSocket
        # library) would only mislead.
        pass


#: How uvicorn serves the proxy, wherever it runs (``serve``, ``demo``, the tests), as uvicorn.Config options.
SERVER_OPTIONS: dict[str, Any] = {
    "http": ProxyHttpProtocol,
    "ws": "none",  # WebSocket handshakes are refused by the pipeline (README "Forwarding")
    "access_log": False,  # the pipeline logs each request itself, with the request id and the user
    "proxy_headers": False,  # X-Forwarded-* are trusted only from PROXY_TRUSTED_PROXIES, by the pipeline
    "server_header": False,
    "date_header": False,  # BPOC's Date passes through; two Date headers would be wrong
}
