"""uvicorn's httptools protocol, with two changes: the proxy's framing rules and refusals, and a response's head
sent in one write with the start of its body.

Framing. A request whose framing is ambiguous or oversized (``framing.py``), or which the HTTP parser refuses, is
answered here, before the app sees it, with the proxy's JSON refusal (``errors.refusal``), ``X-Request-Id`` and
``Connection: close``, and logged in one line like any request (``logs.request_done``). Pipelined requests before
it on the connection are answered first, in order. Then the connection is closed, after reading and dropping
what the client still sends for up to ``LINGER_SECONDS`` (so the client reads the refusal, not a reset). A head
still growing past the limit is refused as it grows, never buffered whole. On the hot path this costs a few
attribute updates per request: the head's size is only added up when the chunks it came in could exceed the
limit, and its headers are only checked when a Transfer-Encoding is among them.

Head holding. uvicorn writes the status line and headers on ``http.response.start`` and the body on
``http.response.body``: two send() calls for every response, and a send() on a TCP socket is one of the dearest
steps of a proxied request (README, "Performance"). The transport given to uvicorn holds a write that looks like a
response head until the next write on the connection, or until the event loop's next turn, whichever comes
first. Bytes never change order and a head is never held back for longer than one turn of the loop, so a
streamed response whose body is slow to come still sends its head at once. The framing code does not depend on
it: taking it out is deleting ``HeadHoldingTransport`` and ``ProxyHttpProtocol.connection_made``.

The uvicorn internals this builds on are listed, and checked, in tests/test_protocol.py (uvicorn is pinned below
0.55). ``SERVER_OPTIONS`` are the uvicorn options the proxy is served with, wherever it runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from http import HTTPStatus
from operator import itemgetter
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from . import logs
from .errors import ProxyError, refusal
from .exchange import request_id as pipeline_request_id
from .framing import MAX_HEAD_BYTES, head_too_large, malformed, transfer_coding_error
from .metrics import UNLISTED, Metrics

log = logging.getLogger("proxy.protocol")

#: After a refusal, how long the client may go on sending (dropped) before the connection is closed.
LINGER_SECONDS = 5.0
_LOGGED_PATH = 256  # characters of a refused request's path in its log line
_NAME = itemgetter(0)
_TRANSFER_ENCODING = b"transfer-encoding"


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


class _Refused(Exception):
    """Raised in a parser callback to stop the parser at a request the protocol has refused."""


class ProxyHttpProtocol(HttpToolsProtocol):
    """The proxy's HTTP/1.1 protocol: uvicorn's, holding requests to the framing rules (``framing.py``),
    refusing in the proxy's JSON, and writing through a HeadHoldingTransport."""

    # Per connection: the size of the chunk being parsed; the refusal the connection ends with, once decided.
    _chunk = 0
    _refusal: ProxyError | None = None
    _refusal_sent = False
    # Per request: is its head still being read; the size of the chunk it began in and of the chunks after it
    # (the head's bytes are at most their sum, and at least the second while the head is open); when it began.
    _head_open = False
    _head_first = 0
    _head_later = 0
    _started = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn
        wrapped: Any = HeadHoldingTransport(transport, self.loop)
        super().connection_made(wrapped)

    def data_received(self, data: bytes) -> None:
        # uvicorn's, with the parser's refusals in JSON and a bound on a head that has not ended yet.
        if self._refusal is not None:
            return  # the connection is ending: what the client still sends is dropped
        self._chunk = len(data)
        if self._head_open:
            self._head_later += self._chunk
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError as exc:
            if self._refusal is None:  # else a callback below refused, and stopped the parser
                self._refuse(_parser_refusal(exc))
        else:
            if self._head_open and self._head_later > MAX_HEAD_BYTES:
                self._refuse(head_too_large())  # refused while it grows: never buffered whole

    # The per-request callbacks below call uvicorn's by name: super() would cost a lookup on every request.

    def on_message_begin(self) -> None:
        HttpToolsProtocol.on_message_begin(self)
        self._head_open = True
        self._head_first, self._head_later = self._chunk, 0
        self._started = time.perf_counter()

    def on_headers_complete(self) -> None:
        self._head_open = False
        # Most heads come in under 64 KiB of chunks, without Transfer-Encoding: two comparisons, nothing counted.
        if self._head_first + self._head_later > MAX_HEAD_BYTES or _TRANSFER_ENCODING in map(
            _NAME, self.headers
        ):
            error = self._framing_error()
            if error is not None:
                self._refuse(error)
                raise _Refused()  # the request never reaches the app
        HttpToolsProtocol.on_headers_complete(self)

    def on_response_complete(self) -> None:
        queued = len(self.pipeline)
        HttpToolsProtocol.on_response_complete(self)
        if self._refusal is not None and not queued:
            self._send_refusal()  # every request before the refused one is answered: its turn

    def _unsupported_upgrade_warning(self) -> None:
        # Served with ws="none", an upgrade request reaches the app as plain HTTP, and the pipeline refuses a
        # WebSocket handshake with its own JSON error. uvicorn's warning (which blames a missing WebSocket
        # library) would only mislead.
        pass

    def _framing_error(self) -> ProxyError | None:
        if self._head_first + self._head_later > MAX_HEAD_BYTES and self._head_size() > MAX_HEAD_BYTES:
            return head_too_large()
        return transfer_coding_error(self.headers, self.parser.get_http_version())

    def _head_size(self) -> int:
        """The request line's and headers' bytes, as parsed (optional whitespace left out)."""
        line = len(self.parser.get_method()) + 1 + len(self.url) + len(b" HTTP/1.1\r\n")
        return line + sum(len(name) + len(b": \r\n") + len(value) for name, value in self.headers)

    def _refuse(self, error: ProxyError) -> None:
        """End the connection with ``error``, answered in its turn: after the requests before it."""
        self._refusal = error
        cycle = self.cycle
        if cycle is not None and cycle.more_body:
            # The refused bytes are the body of a request already handed to the app: the app is told the client
            # is gone, and the refusal answers in its place, unless its answer has begun.
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:
                self.transport.close()
                return
            if self._unqueue(cycle):
                return  # it was waiting behind an earlier request; on_response_complete sends the refusal
        elif cycle is not None and not cycle.response_complete:
            return  # an earlier request is still being answered; on_response_complete sends the refusal
        self._send_refusal()

    def _unqueue(self, cycle: RequestResponseCycle) -> bool:
        for entry in self.pipeline:
            if entry[0] is cycle:
                self.pipeline.remove(entry)
                return True
        return False

    def _send_refusal(self) -> None:
        error = self._refusal
        if error is None or self._refusal_sent or self.transport.is_closing():
            return
        self._refusal_sent = True
        method, path = self._method_and_path()
        request_id = pipeline_request_id(
            self.headers or []
        )  # the refused request's, as far as they were parsed
        fields, body = refusal(error, request_id)
        fields += [(b"x-request-id", request_id.encode("latin-1")), (b"connection", b"close")]
        status = error.status_code
        head = [b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode("latin-1"))]
        head.extend(b"%s: %s\r\n" % field for field in [*self.server_state.default_headers, *fields])
        self._unset_keepalive_if_required()
        self.transport.write(b"".join([*head, b"\r\n", b"" if method == "HEAD" else body]))
        self._linger()
        started = self._started or time.perf_counter()
        logs.request_done(method, path, status, request_id, started)
        metrics = _metrics_of(self.app)
        metrics.refused(error.code)
        metrics.request_done(UNLISTED, method, status, time.perf_counter() - started)

    def _linger(self) -> None:
        """Close after the refusal, reading (and dropping) what the client still sends for a while first: closing
        with unread bytes makes the kernel send a reset, which can destroy the refusal before the client reads
        it (RFC 9112 section 9.6; nginx's lingering close)."""
        self.flow.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()

    def _method_and_path(self) -> tuple[str, str]:
        url: bytes = getattr(self, "url", b"")  # set by on_message_begin, extended by on_url
        if not url:
            return "-", "-"  # refused before the request line was read
        path = url.partition(b"?")[0][:_LOGGED_PATH].decode("latin-1")
        return self.parser.get_method().decode("latin-1"), path


def _metrics_of(app: Any) -> Metrics:
    """The metrics of the app this connection serves (the ProxyApp, or its bound ``admin`` entry point), so a
    request refused before the app counts like any refusal; a plain ASGI app records nothing."""
    owner = getattr(app, "__self__", app)
    metrics = getattr(owner, "metrics", None)
    return metrics if isinstance(metrics, Metrics) else _NO_METRICS


_NO_METRICS = Metrics()


def _parser_refusal(exc: httptools.HttpParserError) -> ProxyError:
    """The refusal for what the parser refused, with the parser's reason (uvicorn's callbacks can raise parser
    errors of their own, such as an invalid URL, which httptools hands on as the context of a callback error)."""
    cause = exc.__context__ if isinstance(exc, httptools.HttpParserCallbackError) else exc
    if isinstance(cause, httptools.HttpParserError):
        return malformed(str(cause))
    log.warning("the HTTP parser failed on a request", exc_info=cause)
    return malformed("")


#: How uvicorn serves the proxy, wherever it runs (``serve``, ``demo``, the tests), as uvicorn.Config options.
SERVER_OPTIONS: dict[str, Any] = {
    "http": ProxyHttpProtocol,
    "ws": "none",  # WebSocket handshakes are refused by the pipeline (README "Forwarding")
    "access_log": False,  # the pipeline logs each request itself, with the request id and the user
    "proxy_headers": False,  # X-Forwarded-* are trusted only from PROXY_TRUSTED_PROXIES, by the pipeline
    "server_header": False,
    "date_header": False,  # BPOC's Date passes through; two Date headers would be wrong
}
