"""One socket to the origin: an asyncio Protocol that feeds httptools' response parser into the response in
flight, and writes the request."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import httptools

from .deadlines import Deadlines
from .errors import ProtocolError, RemoteClosed, WriteTimeout

if TYPE_CHECKING:
    from .response import EngineResponse


class Connection(asyncio.Protocol):
    """One connection, one request at a time (no pipelining). The response to the request in flight is given
    with ``start()`` and taken back with ``finish()``; parser events go to it as they come."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        deadlines: Deadlines,
        on_lost: Callable[[Connection], None] = lambda conn: None,
    ) -> None:
        """``on_lost`` is called once the socket is closed, whoever closed it."""
        self.loop = loop
        self._deadlines = deadlines
        self._on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.response: EngineResponse | None = None
        self._parser: httptools.HttpResponseParser | None = None
        # The parser of the last response, kept for the next one on this keep-alive connection.
        self._spare: httptools.HttpResponseParser | None = None
        self._drain: asyncio.Future[None] | None = None
        self._write_paused = False
        self._trailers = False  # past the headers of the message being parsed
        #: Done when the socket is closed, whoever closed it.
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
                RemoteClosed("BPOC closed the connection while the request was being sent")
            )
        if self.response is not None:
            self.response.eof()
        self._on_lost(self)

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
        except httptools.HttpParserUpgrade:  # after a 101, failed in on_headers_complete
            self.close()
        except httptools.HttpParserError as exc:
            self.response.fail(ProtocolError(f"BPOC sent a response that is not valid HTTP/1.1: {exc}"))
            self.close()

    # httptools callbacks

    def on_message_begin(self) -> None:
        assert self.response is not None
        if self.response.status:
            # A second response to one request: the stream is out of step. Raising stops the parser.
            raise ProtocolError("BPOC sent more than one response to a request")
        self.response.raw_headers = []
        self._trailers = False

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        if self._trailers:
            # llhttp reports a chunked body's trailer fields as headers. They are dropped: a trailer field must
            # not become a header (RFC 9110 section 6.5.1), and uvicorn cannot send trailers on.
            return
        self.response.raw_headers.append((name.lower(), value))  # lowered once, here, as ASGI wants them

    def on_headers_complete(self) -> None:
        assert self.response is not None and self._parser is not None
        self._trailers = True  # until the next message begins, header callbacks are trailers
        status = self._parser.get_status_code()
        if status == 101:
            # Switching Protocols: the proxy never asks for an upgrade, so there is nothing to switch to.
            self.response.fail(ProtocolError("BPOC switched protocols, which the proxy does not support"))
        elif status >= 200:  # 100 Continue, 103 Early Hints are interim: the real response follows
            self.response.headers_complete(status, self._parser.should_keep_alive())
        else:
            self.response.interim_complete()

    def on_body(self, body: bytes) -> None:
        assert self.response is not None
        self.response.body_received(body)

    def on_message_complete(self) -> None:
        assert self.response is not None and self._parser is not None
        if self.response.status:  # the final response, not an interim one
            self.response.complete(self._parser.should_keep_alive())

    # used by the engine and the response

    def start(self, response: EngineResponse) -> None:
        """``response`` is the answer to the request about to be written."""
        self.response = response
        self._parser, self._spare = self._spare or httptools.HttpResponseParser(self), None

    def finish(self, *, reuse_parser: bool = False) -> None:
        """The response is done with; ``reuse_parser`` when it ended cleanly and the parser agrees on where
        (not after a HEAD: llhttp would wait for the body its Content-Length announced)."""
        self.response = None
        self._spare = self._parser if reuse_parser else None
        self._parser = None

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def drain(self, timeout: float) -> None:
        """Wait until the socket takes more, at most ``timeout`` seconds (WriteTimeout)."""
        if self.closed:
            raise RemoteClosed("BPOC closed the connection while the request was being sent")
        if not self._write_paused:
            return
        self._drain = self.loop.create_future()
        await self._deadlines.wait(self._drain, timeout, WriteTimeout, "BPOC did not read the request body")

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    @property
    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Close without waiting for anything (a TLS close_notify that never comes)."""
        if self.transport is not None:
            self.transport.abort()
