"""One request through the proxy, in order: normalise, authenticate, match, resolve, rewrite, forward, respond.

This is a plain ASGI callable rather than a Starlette endpoint: the hot path is measured against a bare Starlette
app (README, "Performance") and every layer it skips is throughput the proxy keeps. All refusals are ProxyErrors;
they are answered in exactly one place, ``send_error``, in the JSON shape of every refusal (``errors.refusal``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from .attribution import (
    AttributedRequest,
    Attribution,
    audit_record,
    check_unlisted,
    is_stale_refusal,
    prepare,
    replay,
    require_role,
)
from .auth import Authenticator, Principal, extract_token
from .cors import Cors
from .errors import AuthenticationError, BadRequest, ProxyError, ServiceUnavailable
from .exchange import (
    ClientGone,
    Exchange,
    Message,
    Receive,
    RequestHead,
    Scope,
    Send,
    log_exchange,
    new_id,
    read_body,
    read_head,
    send_error,
    send_whole,
    start,
    stream_request,
    wait_for_disconnect,
)
from .framing import transfer_coding_error
from .metrics import UNLISTED, Metrics
from .paths import check_method, check_method_override, normalise_path
from .ratelimit import NoRateLimit, RateLimit
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

log = logging.getLogger("proxy.pipeline")

_SMALL_BODY = 256 * 1024


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        rules: Callable[[], RuleSet],
        authenticator: Authenticator,
        directory: RecruiterDirectory,
        upstream: Upstream,
        rate_limit: RateLimit | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics or Metrics()
        self._rules = rules
        self._auth = authenticator
        self._directory = directory
        self._upstream = upstream
        self._rate_limit = rate_limit or NoRateLimit()
        self._session_header = settings.session_header.lower().encode("latin-1")
        self._drop = frozenset({self._session_header})
        self._session_cookie = settings.session_cookie.encode("latin-1") if settings.session_cookie else None
        self._cors = Cors(settings.cors_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        head = read_head(scope["headers"], self._session_header)
        exchange = Exchange(head.request_id, scope["method"], scope["path"])
        if self._cors.enabled:
            exchange.extra_headers.extend(self._cors.headers_for(scope["headers"]))
        try:
            await self._handle(scope, head, receive, send, exchange)
        except ProxyError as exc:
            await send_error(send, exchange, exc, self._metrics)
        except ClientGone:
            exchange.status = exchange.status or 499
        except Exception:
            log.exception("unexpected error", extra={"fields": {"requestId": exchange.request_id}})
            error = ProxyError("The proxy failed unexpectedly; the error was logged.")
            await send_error(send, exchange, error, self._metrics)
        finally:
            elapsed = time.perf_counter() - exchange.started
            self._metrics.request_done(exchange.route, exchange.method, exchange.status, elapsed)
            if exchange.audit is not None or self._settings.access_log:
                log_exchange(exchange)

    async def refuse(self, scope: Scope, send: Send, error: ProxyError, route: str = UNLISTED) -> None:
        """Answer with ``error`` at once, as every refusal is answered: JSON, request id, one log line."""
        head = read_head(scope["headers"], self._session_header)
        exchange = Exchange(head.request_id, scope.get("method", "GET"), scope["path"], route=route)
        await send_error(send, exchange, error, self._metrics)
        elapsed = time.perf_counter() - exchange.started
        self._metrics.request_done(route, exchange.method, exchange.status, elapsed)
        if self._settings.access_log:
            log_exchange(exchange)

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
            await send_whole(send, exchange, 204, preflight, b"")  # answered here, never forwarded
            return
        if head.websocket:
            raise _websocket_refusal()
        if head.body_length == b"chunked":  # served by another server than ours, the codings are unchecked
            if (
                error := transfer_coding_error(scope["headers"], scope.get("http_version", "1.1"))
            ) is not None:
                raise error
        path = normalise_path(scope.get("raw_path") or scope["path"].encode("utf-8"))
        exchange.path = path
        check_method(method)
        if head.override is not None:
            check_method_override([head.override])
        rules = self._rules()
        match = rules.match(method, path)
        exchange.route = match.label if match is not None else UNLISTED
        principal = None if rules.is_public(method, path) else await self._authenticate(head, exchange)
        check_unlisted(rules, match, method, path)

        query: bytes = scope.get("query_string", b"")
        target = f"{path}?{query.decode('latin-1')}" if query else path
        outgoing = self._outgoing_headers(scope, exchange)
        if match is not None and match.rule is not None:
            # A rule route cannot be public (rules_file refuses that); fail closed anyway.
            if principal is None:
                raise AuthenticationError("This route is attributed and requires a portal session.")
            raw = await read_body(receive, self._settings.max_body_bytes)
            request = self._attributed_request(match.rule, query, raw, outgoing)
            await self._attributed(request, principal, method, target, outgoing, receive, send, exchange)
            return
        if match is not None and match.roles:
            await require_role(match.roles, principal, self._directory)
        await self._pass_through(method, target, outgoing, head.body_length, receive, send, exchange)

    async def _authenticate(self, head: RequestHead, exchange: Exchange) -> Principal:
        token = extract_token(self._settings, head.session, head.cookie)
        if token is None:
            self._metrics.session_failed("missing")
            raise AuthenticationError(
                f"This request carries no portal session; send it in the {self._settings.session_header} header.",
                error="invalid_request",
            )
        try:
            principal = await self._auth.authenticate(token)
        except AuthenticationError as exc:
            self._metrics.session_failed(exc.reason)
            raise
        except ServiceUnavailable:
            self._metrics.session_failed("unavailable")
            raise
        exchange.user_id = principal.user_id  # named in the access line even if refused just below
        # Right after authentication, before the body is read: every authenticated request counts.
        await self._rate_limit.check(principal.user_id, exchange.request_id)
        return principal

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
        attribution_id = new_id()
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
            self._metrics.upstream_answered(exchange.route, response.elapsed)
            answer = await response.read()
        again = None
        if is_stale_refusal(response.status, answer):
            again = await replay(attribution, principal, self._directory)
        if again is None:
            headers = response_headers(response.raw_headers, drop_cors=self._cors.enabled)
            await send_whole(send, exchange, response.status, headers, answer)
            return
        log.warning(
            "BPOC refused a stale recruiter ID; replaying once with the re-synced ID",
            extra={"fields": {"requestId": exchange.request_id, "userId": principal.user_id}},
        )
        self._metrics.stale_recruiter_replayed()
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
        if not attribution.request.rule.report_only:
            for write in attribution.writes:
                self._metrics.attributed(exchange.route, write.field, write.mode)
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
        body = stream_request(receive) if length is not None else None
        async with self._upstream.request(method, target, outgoing, body) as response:
            await self._respond(response, receive, send, exchange)

    async def _respond(
        self, response: UpstreamResponse, receive: Receive, send: Send, exchange: Exchange
    ) -> None:
        """Send BPOC's answer on: small bodies in one message, large or unknown ones streamed."""
        self._metrics.upstream_answered(exchange.route, response.elapsed)
        headers = response_headers(response.raw_headers, drop_cors=self._cors.enabled)
        length = response.content_length
        if length is not None and length <= _SMALL_BODY:
            body = await response.read()
            await send_whole(send, exchange, response.status, headers, body)
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
        await start(send, exchange, response.status, headers)
        # Stop pulling from BPOC as soon as the client hangs up, or a big download leaks a connection.
        gone = asyncio.ensure_future(wait_for_disconnect(receive))
        try:
            async for chunk in response.stream():
                if gone.done():
                    raise ClientGone()
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            gone.cancel()


def _websocket_refusal() -> BadRequest:
    return BadRequest(
        "WebSocket connections are not proxied; BPOC's API is plain HTTP.", headers={"Connection": "close"}
    )


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
