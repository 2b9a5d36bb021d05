"""One request through the proxy, in order: normalise, authenticate, match, resolve, rewrite, forward, respond.

This is a plain ASGI callable rather than a Starlette endpoint: the hot path is measured against a bare Starlette
app (README, "Performance") and every layer it skips is throughput the proxy keeps. All refusals are ProxyErrors;
they are turned into JSON in exactly one place, ``_send_error``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import simplejson

from . import logs
from .attribution import (
    AttributedRequest,
    Attribution,
    admit,
    audit_record,
    is_stale_refusal,
    prepare,
    replay,
    require_role,
)
from .auth import Authenticator, Principal, extract_token
from .cors import Cors
from .errors import AuthenticationError, BadRequest, PayloadTooLarge, ProxyError
from .paths import METHOD_OVERRIDE_HEADERS, check_method, check_method_override, normalise_path
from .recruiters import RecruiterDirectory
from .rules import Rule, RuleSet
from .settings import Settings
from .upstream import (
    Client,
    Headers,
    Upstream,
    UpstreamResponse,
    is_trusted,
    request_headers,
    response_headers,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("proxy.pipeline")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
_SMALL_BODY = 256 * 1024
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


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        rules: Callable[[], RuleSet],
        authenticator: Authenticator,
        directory: RecruiterDirectory,
        upstream: Upstream,
    ) -> None:
        self._settings = settings
        self._rules = rules
        self._auth = authenticator
        self._directory = directory
        self._upstream = upstream
        self._session_header = settings.session_header.lower().encode("latin-1")
        self._drop = frozenset({self._session_header})
        self._session_cookie = settings.session_cookie.encode("latin-1") if settings.session_cookie else None
        self._cors = Cors(settings.cors_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        head = _read_head(scope["headers"], self._session_header)
        exchange = Exchange(head.request_id, scope["method"], scope["path"])
        if self._cors.enabled:
            exchange.extra_headers.extend(self._cors.headers_for(scope["headers"]))
        try:
            await self._handle(scope, head, receive, send, exchange)
        except ProxyError as exc:
            await _send_error(send, exchange, exc)
        except ClientGone:
            exchange.status = exchange.status or 499
        except Exception:
            log.exception("unexpected error", extra={"fields": {"requestId": exchange.request_id}})
            await _send_error(
                send, exchange, ProxyError("The proxy failed unexpectedly; the error was logged.")
            )
        finally:
            if exchange.audit is not None or self._settings.access_log:
                _log_exchange(exchange)

    async def refuse(self, scope: Scope, send: Send, error: ProxyError) -> None:
        """Answer with ``error`` at once, as every refusal is answered: JSON, request id, one log line."""
        head = _read_head(scope["headers"], self._session_header)
        exchange = Exchange(head.request_id, scope.get("method", "GET"), scope["path"])
        await _send_error(send, exchange, error)
        if self._settings.access_log:
            _log_exchange(exchange)

    async def refuse_websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """WebSockets are not proxied. The handshake is refused like any request (JSON, request id, a log line)
        where the server lets an app answer it over HTTP (the ASGI websocket.http.response extension), and
        closed otherwise, which the server answers with a bare 403."""
        await receive()  # websocket.connect
        if "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 1008})
            return

        async def as_denial(message: Message) -> None:
            await send({**message, "type": "websocket." + message["type"]})

        await self.refuse(scope, as_denial, _websocket_refusal())

    async def _handle(
        self, scope: Scope, head: RequestHead, receive: Receive, send: Send, exchange: Exchange
    ) -> None:
        method: str = scope["method"]
        if self._cors.enabled and (preflight := self._cors.preflight(method, scope["headers"])) is not None:
            await _send_whole(send, exchange, 204, preflight, b"")  # answered here, never forwarded
            return
        if head.websocket:
            raise _websocket_refusal()
        path = normalise_path(scope.get("raw_path") or scope["path"].encode("utf-8"))
        exchange.path = path
        check_method(method)
        if head.override is not None:
            check_method_override([head.override])
        rules = self._rules()
        principal = None if rules.is_public(method, path) else await self._authenticate(head)
        exchange.user_id = principal.user_id if principal else None
        match = admit(rules, method, path)

        query: bytes = scope.get("query_string", b"")
        target = f"{path}?{query.decode('latin-1')}" if query else path
        outgoing = self._outgoing_headers(scope, exchange)
        if match is not None and match.rule is not None:
            if (
                principal is None
            ):  # a rule route cannot be public (rules_file refuses that); fail closed anyway
                raise AuthenticationError("This route is attributed and requires a portal session.")
            raw = await _read_body(receive, self._settings.max_body_bytes)
            request = self._attributed_request(match.rule, query, raw, outgoing)
            await self._attributed(request, principal, method, target, outgoing, receive, send, exchange)
            return
        if match is not None and match.roles:
            await require_role(match.roles, principal, self._directory)
        await self._pass_through(method, target, outgoing, head.body_length, receive, send, exchange)

    async def _authenticate(self, head: RequestHead) -> Principal:
        token = extract_token(self._settings, head.session, head.cookie)
        if token is None:
            raise AuthenticationError(
                f"This request carries no portal session; send it in the {self._settings.session_header} header.",
                error="invalid_request",
            )
        return await self._auth.authenticate(token)

    def _outgoing_headers(self, scope: Scope, exchange: Exchange) -> Headers:
        client_host = scope["client"][0] if scope.get("client") else None
        return request_headers(
            scope["headers"],
            client=Client(client_host, scope.get("scheme", "http")),
            trusted=is_trusted(client_host, self._settings.trusted_proxies),
            drop=self._drop,
            session_cookie=self._session_cookie,
            request_id=exchange.request_id,
        )

    def _attributed_request(
        self, rule: Rule, query: bytes, raw: bytes, outgoing: Headers
    ) -> AttributedRequest:
        content_type = _header(outgoing, b"content-type")
        content_encoding = _header(outgoing, b"content-encoding")
        return AttributedRequest(
            rule, query, raw, content_type, content_encoding, self._settings.max_body_bytes
        )

    async def _attributed(
        self,
        request: AttributedRequest,
        principal: Principal,
        method: str,
        target: str,
        outgoing: Headers,
        receive: Receive,
        send: Send,
        exchange: Exchange,
    ) -> None:
        attribution = await prepare(request, principal, self._directory)
        attribution_id = _new_id()
        exchange.extra_headers.append((b"x-attribution-id", attribution_id.encode()))
        headers = outgoing if request.rule.report_only else _json_headers(outgoing, request.content_type)
        async with self._forward(attribution, attribution_id, method, target, headers, exchange) as response:
            if (
                attribution.recruiter_id is None
                or request.rule.report_only
                or not 400 <= response.status < 500
            ):
                await self._respond(response, receive, send, exchange)
                return
            # BPOC may know this recruiter under a new ID (re-created): re-sync once and replay (issue 3).
            answer = await response.read()
        again = None
        if is_stale_refusal(response.status, answer):
            again = await replay(attribution, principal, self._directory)
        if again is None:
            headers = response_headers(response.raw_headers, drop_cors=self._cors.enabled)
            await _send_whole(send, exchange, response.status, headers, answer)
            return
        log.warning(
            "BPOC refused a stale recruiter ID; replaying once with the re-synced ID",
            extra={"fields": {"requestId": exchange.request_id, "userId": principal.user_id}},
        )
        async with self._forward(again, attribution_id, method, target, headers, exchange) as replayed:
            await self._respond(replayed, receive, send, exchange)

    def _forward(
        self,
        attribution: Attribution,
        attribution_id: str,
        method: str,
        target: str,
        headers: Headers,
        exchange: Exchange,
    ) -> AbstractAsyncContextManager[UpstreamResponse]:
        """Send an attribution on, after recording it for the audit line; a refused one is raised instead."""
        exchange.audit = audit_record(attribution_id, attribution)
        if attribution.refusal is not None:
            raise attribution.refusal
        return self._upstream.request(method, target, list(headers), attribution.sent)

    async def _pass_through(
        self,
        method: str,
        target: str,
        outgoing: Headers,
        length: bytes | None,
        receive: Receive,
        send: Send,
        exchange: Exchange,
    ) -> None:
        if length is not None and length != b"chunked":
            outgoing.append((b"content-length", length))  # a streamed upload keeps its length, un-chunked
        body = _stream_request(receive) if length is not None else None
        async with self._upstream.request(method, target, outgoing, body) as response:
            await self._respond(response, receive, send, exchange)

    async def _respond(
        self, response: UpstreamResponse, receive: Receive, send: Send, exchange: Exchange
    ) -> None:
        """Send BPOC's answer on: small bodies in one message, large or unknown ones streamed."""
        headers = response_headers(response.raw_headers, drop_cors=self._cors.enabled)
        length = response.content_length
        if length is not None and length <= _SMALL_BODY:
            body = await response.read()
            await _send_whole(send, exchange, response.status, headers, body)
        else:
            await self._stream_response(response, headers, receive, send, exchange)

    async def _stream_response(
        self,
        response: UpstreamResponse,
        headers: list[tuple[bytes, bytes]],
        receive: Receive,
        send: Send,
        exchange: Exchange,
    ) -> None:
        await _start(send, exchange, response.status, headers)
        # Stop pulling from BPOC as soon as the client hangs up, or a big download leaks a connection.
        gone = asyncio.ensure_future(_wait_for_disconnect(receive))
        try:
            async for chunk in response.stream():
                if gone.done():
                    raise ClientGone()
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            gone.cancel()


def _read_head(headers: list[tuple[bytes, bytes]], session_header: bytes) -> RequestHead:
    head = RequestHead("")
    framed = offers_websocket = asks_upgrade = False
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
        elif (name == b"content-length" or name == b"transfer-encoding") and not framed:
            framed = True  # the first framing header decides, as the server's parser did
            length = value.strip() if name == b"content-length" else b"chunked"
            head.body_length = None if length in (b"0", b"") else length
        elif name in _OVERRIDE_NAMES:
            head.override = name.decode("latin-1")
        elif name == b"upgrade":
            offers_websocket = b"websocket" in value.lower()
        elif name == b"connection":
            asks_upgrade = asks_upgrade or b"upgrade" in value.lower()
    if not head.request_id:
        head.request_id = _new_id()
    # A handshake names websocket in Upgrade and lists Upgrade in Connection (RFC 9110 section 7.8).
    head.websocket = offers_websocket and asks_upgrade
    return head


def _websocket_refusal() -> BadRequest:
    return BadRequest(
        "WebSocket connections are not proxied; BPOC's API is plain HTTP.", headers={"Connection": "close"}
    )


def _new_id() -> str:
    """128 random bits, as uuid4 has, from the process's seeded generator: an id must be unique, not secret,
    and a getrandom() system call per request is the dearer way to get that."""
    return f"{random.getrandbits(128):032x}"


def _json_headers(outgoing: Headers, content_type: str | None) -> Headers:
    """The headers of a rewritten body: plain (no Content-Encoding), with the client's JSON type or the default."""
    headers = [(n, v) for n, v in outgoing if n not in (b"content-encoding", b"content-type")]
    headers.append((b"content-type", content_type.encode("latin-1") if content_type else b"application/json"))
    return headers


def _header(headers: Headers, name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:  # _stream_request's loop, without an async generator on the hot path
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


async def _stream_request(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _start(send: Send, exchange: Exchange, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    headers.append((b"x-request-id", exchange.request_id.encode("latin-1")))
    headers.extend(exchange.extra_headers)
    exchange.status = status
    exchange.response_started = True
    await send({"type": "http.response.start", "status": status, "headers": headers})


async def _send_whole(
    send: Send, exchange: Exchange, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    await _start(send, exchange, status, headers)
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _send_error(send: Send, exchange: Exchange, exc: ProxyError) -> None:
    if exchange.response_started:
        # Too late for a clean answer: the status line went out. Dropping the connection tells the client.
        log.warning(
            "response broken off after it started: %s",
            exc.message,
            extra={"fields": {"requestId": exchange.request_id}},
        )
        return
    payload = {
        "error": exc.message,
        "code": exc.code,
        "status": exc.status_code,
        "requestId": exchange.request_id,
    }
    body = simplejson.dumps(payload, ensure_ascii=False).encode("utf-8")
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    headers.extend(
        (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in exc.headers.items()
    )
    exchange.extra_headers = [h for h in exchange.extra_headers if h[0] != b"x-attribution-id"]
    await _send_whole(send, exchange, exc.status_code, headers, body)


def _log_exchange(exchange: Exchange) -> None:
    """One line per request: the access log line, which on attributed routes is also the audit record."""
    fields: dict[str, Any] = {
        "requestId": exchange.request_id,
        "status": exchange.status,
        "durationMs": round((time.perf_counter() - exchange.started) * 1000, 2),
        "userId": exchange.user_id,
    }
    if exchange.audit is not None:
        fields.update(exchange.audit)
    logger = logs.access if exchange.audit is None else logs.audit
    logs.request_line(logger, f"{exchange.method} {exchange.path} {exchange.status}", fields)
