"""A response from the origin: its status and headers, then its body as the connection delivers it."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable

from .connection import Connection
from .deadlines import Deadlines
from .errors import ProtocolError, ReadTimeout, RemoteClosed

RawHeaders = list[tuple[bytes, bytes]]
#: What becomes of a connection when its response is done with: ``release(conn, reusable)``.
Release = Callable[[Connection, bool], None]

# Read-side flow control: stop reading the socket while this much body is queued and not yet consumed.
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024
# Responses that never carry a body (RFC 9112 section 6.3): llhttp knows 1xx/204/304 but not that a HEAD
# response's Content-Length describes a body that is not sent, and httptools gives no way to tell it.
_NO_BODY_STATUS = frozenset({204, 304})


def _only_chunked(value: bytes) -> bool:
    # "gzip, chunked", chunked twice, "xchunked": a coding the engine does not undo would reach the client as if
    # it were the body, Transfer-Encoding being hop-by-hop (dropped). h11 refuses the same, 1xx answers included.
    return value.strip().lower() == b"chunked"


def _coding_refused() -> ProtocolError:
    return ProtocolError("BPOC sent a Transfer-Encoding other than chunked")


class EngineResponse:
    """A response whose headers have arrived; the body is read with ``iter_body()`` or ``read()``.

    Call ``release()`` (or ``close()``) when done: a fully read keep-alive response gives its connection back
    to the pool, anything else closes it. The connection feeds it through ``headers_complete()``,
    ``body_received()``, ``complete()``, ``eof()`` and ``fail()``.
    """

    def __init__(
        self, conn: Connection, method: str, timeout: float, deadlines: Deadlines, release: Release
    ) -> None:
        self._conn = conn
        self._timeout = timeout
        self._deadlines = deadlines
        self._release = release
        # A CONNECT answer's headers are followed by the tunnel, not a body; a HEAD answer's by nothing.
        self._head = method in ("HEAD", "CONNECT")
        self.status = 0
        #: The response headers as received, names in lower case.
        self.raw_headers: RawHeaders = []
        self.content_length: int | None = None
        #: Seconds from sending the request to its response headers (set by the Engine).
        self.elapsed = 0.0
        self._headers: asyncio.Future[None] = conn.loop.create_future()
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

    # fed by the connection

    def headers_complete(self, status: int, keep_alive: bool) -> None:
        self.status = status
        chunked = False
        for name, value in self.raw_headers:
            if name == b"content-length":
                self.content_length = int(value)
            elif name == b"transfer-encoding":
                if chunked or not _only_chunked(value):
                    self.fail(_coding_refused())
                    return
                chunked = True
        if self._head or status in _NO_BODY_STATUS:
            self.content_length = 0 if status in _NO_BODY_STATUS else self.content_length
            self.complete(keep_alive)
        else:
            self._until_close = self.content_length is None and not chunked
        if not self._headers.done():
            self._headers.set_result(None)

    def interim_complete(self) -> None:
        """An interim (1xx) response's headers are in: skipped, unless they name a coding that is refused."""
        if any(n == b"transfer-encoding" and not _only_chunked(v) for n, v in self.raw_headers):
            self.fail(_coding_refused())

    def body_received(self, data: bytes) -> None:
        if self._done:
            self._keep_alive = False  # a body on a HEAD response: the stream is out of step
            return
        self._chunks.append(data)
        self._queued += len(data)
        if self._queued > _HIGH_WATER and not self._read_paused:
            self._read_paused = True
            self._conn.pause_reading()
        self._wake()

    def complete(self, keep_alive: bool) -> None:
        if not self._done:
            self._done = True
            self._keep_alive = keep_alive
            self._wake()

    def eof(self) -> None:
        if self._headers.done() and self._until_close:
            self.complete(False)  # no Content-Length, not chunked: the body ends with the connection
        elif not self._done:
            self.fail(RemoteClosed("BPOC closed the connection before the response was complete"))

    def fail(self, error: BaseException) -> None:
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

    # used by the engine while sending

    @property
    def headers_arrived(self) -> asyncio.Future[None]:
        """Done when the final response's headers are in (or failed with the reason they never will be)."""
        return self._headers

    async def wait_headers(self, what: str) -> None:
        """Wait for the headers, at most the timeout (ReadTimeout "{what} within N s")."""
        await self._deadlines.wait(self._headers, self._timeout, ReadTimeout, what)

    def watch_upload(self, sender: asyncio.Task[None]) -> None:
        """The task sending the request body: stopped if the response is done with before it finishes."""
        self._sender = sender

    # public

    async def iter_body(self) -> AsyncIterator[bytes]:
        """The body bytes as they arrive; raises RemoteClosed, ProtocolError or ReadTimeout if it breaks off."""
        while True:
            if self._chunks:
                yield self._take()
            elif self._done:
                return
            elif self._error is not None:
                raise self._error
            else:
                self._waiter = self._conn.loop.create_future()
                await self._deadlines.wait(
                    self._waiter, self._timeout, ReadTimeout, "BPOC did not send the response body"
                )

    def _take(self) -> bytes:
        # Whatever arrived while the consumer was busy goes out as one piece: fewer, larger sends.
        if len(self._chunks) == 1:
            data = self._chunks.popleft()
        else:
            data = b"".join(self._chunks)
            self._chunks.clear()
        self._queued -= len(data)
        if self._read_paused and self._queued <= _LOW_WATER:
            self._read_paused = False
            self._conn.resume_reading()
        return data

    async def read(self) -> bytes:
        """The whole body; the common case, a body that came in one segment, costs no join."""
        if self._done and len(self._chunks) == 1 and not self._read_paused:
            self._queued = 0
            return self._chunks.popleft()
        return b"".join([chunk async for chunk in self.iter_body()])

    @property
    def reading_paused(self) -> bool:
        """Whether the socket is paused because too much unread body is queued."""
        return self._read_paused

    @property
    def buffered(self) -> int:
        """Body bytes received and not yet read."""
        return self._queued

    def release(self) -> None:
        """Give the connection back to the pool if the response was read to the end, else close it."""
        if self._released:
            return
        self._released = True
        sender = self._sender
        sent = sender is None or (sender.done() and not sender.cancelled() and sender.exception() is None)
        reusable = sent and self._done and self._keep_alive and not self._chunks and not self._read_paused
        self._conn.finish(reuse_parser=reusable and not self._head)
        if not reusable:
            self._stop_sender()
        self._release(self._conn, reusable)

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
