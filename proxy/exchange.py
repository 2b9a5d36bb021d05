"""One request's edges: what the client's head says, its body coming in, and the answer going out.

The pipeline (``pipeline.py``) decides what happens to a request; this module holds the ASGI plumbing it does that
with. ``Exchange`` is what the access log says about one request, filled in as it moves along. Every refusal is
answered here, in ``send_error``, in the JSON shape of every refusal (``errors.refusal``).
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from . import logs
from .errors import PayloadTooLarge, ProxyError, refusal
from .metrics import UNLISTED, Metrics
from .paths import METHOD_OVERRIDE_HEADERS

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("proxy.pipeline")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
_OVERRIDE_NAMES = frozenset(name.encode() for name in METHOD_OVERRIDE_HEADERS)


class ClientGone(Exception):
    """The client closed its connection; there is nobody left to answer."""


@dataclass(slots=True)
class Exchange:
    """What the access log says about one request; filled in as the request moves along."""

    request_id: str
    method: str
    path: str
    started: float = field(default_factory=time.perf_counter)
    status: int = 0
    #: The metrics' route label: the matched rule's or route's template, ``unlisted``, or ``own``.
    route: str = UNLISTED
    user_id: str | None = None
    response_started: bool = False
    #: What the proxy wrote on an attributed route: the audit record, logged with the request's line.
    audit: dict[str, Any] | None = None
    extra_headers: list[tuple[bytes, bytes]] = field(default_factory=list)


@dataclass(slots=True)
class RequestHead:
    """What the pipeline reads from the client's headers, taken in one pass over them."""

    request_id: str
    session: str | None = None  # the session header's value
    cookie: str | None = None  # every Cookie header, joined
    body_length: bytes | None = None  # Content-Length, b"chunked" for a body of unknown length, None: no body
    override: str | None = None  # the name of a method override header, if one was sent
    websocket: bool = False  # a WebSocket handshake


def read_head(headers: list[tuple[bytes, bytes]], session_header: bytes) -> RequestHead:
    head = RequestHead("")
    chunked = offers_websocket = asks_upgrade = False
    length = b""
    for name, value in headers:
        if name == session_header:
            head.session = value.decode("latin-1")
        elif name == b"cookie":
            text = value.decode("latin-1")
            head.cookie = text if head.cookie is None else f"{head.cookie}; {text}"
        elif name == b"x-request-id":
            candidate = value.decode("latin-1")
            if not head.request_id and _REQUEST_ID.fullmatch(candidate):
                head.request_id = candidate
        elif name == b"content-length":
            length = length or value.strip()
        elif name == b"transfer-encoding":
            chunked = True  # its codings are checked by _handle
        elif name in _OVERRIDE_NAMES:
            head.override = name.decode("latin-1")
        elif name == b"upgrade":
            offers_websocket = b"websocket" in value.lower()
        elif name == b"connection":
            asks_upgrade = asks_upgrade or b"upgrade" in value.lower()
    if not head.request_id:
        head.request_id = new_id()
    # Transfer-Encoding overrides Content-Length, whichever came first (RFC 9112 section 6.3).
    head.body_length = b"chunked" if chunked else (None if length in (b"0", b"") else length)
    # A handshake names websocket in Upgrade and lists Upgrade in Connection (RFC 9110 section 7.8).
    head.websocket = offers_websocket and asks_upgrade
    return head


def request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """A request's id as the pipeline takes it: the client's first valid X-Request-Id, else a new one. For a
    refusal made before the request reaches the pipeline (``protocol.py``)."""
    return read_head(headers, b"").request_id  # no header is named b"": only the id is wanted


def new_id() -> str:
    """128 random bits, as uuid4 has, from the process's seeded generator: an id must be unique, not secret,
    and a getrandom() system call per request is the dearer way to get that."""
    return f"{random.getrandbits(128):032x}"


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:  # stream_request's loop, without an async generator on the hot path
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The request body is larger than PROXY_MAX_BODY_BYTES ({limit} bytes).")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def stream_request(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


async def wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def start(send: Send, exchange: Exchange, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    headers.append((b"x-request-id", exchange.request_id.encode("latin-1")))
    headers.extend(exchange.extra_headers)
    exchange.status = status
    exchange.response_started = True
    await send({"type": "http.response.start", "status": status, "headers": headers})


async def send_whole(
    send: Send, exchange: Exchange, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    await start(send, exchange, status, headers)
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_error(send: Send, exchange: Exchange, exc: ProxyError, metrics: Metrics) -> None:
    if exchange.response_started:
        # Too late for a clean answer: the status line went out. Dropping the connection tells the client.
        log.warning(
            "response broken off after it started: %s",
            exc.message,
            extra={"fields": {"requestId": exchange.request_id}},
        )
        return
    headers, body = refusal(exc, exchange.request_id)
    exchange.extra_headers = [h for h in exchange.extra_headers if h[0] != b"x-attribution-id"]
    await send_whole(send, exchange, exc.status_code, headers, body)
    metrics.refused(exc.code)


def log_exchange(exchange: Exchange) -> None:
    """One line per request: the access log line, which on attributed routes is also the audit record."""
    e = exchange
    logs.request_done(e.method, e.path, e.status, e.request_id, e.started, e.user_id, e.audit)
