"""The exceptions of bpoc-proxy.

Every refusal the proxy makes is one of these, turned into a JSON response by ``refusal`` below: by the pipeline
(``pipeline.py``) for a request it serves, and by the HTTP protocol (``protocol.py``) for one it cannot parse::

    ProxyError                   base; carries the HTTP status and one readable sentence
    ├── ClientError              the request itself is wrong
    │   ├── BadRequest           400  body is not a JSON object, path cannot be normalised, ...
    │   ├── NotFound             404  a path the admin listener does not serve, or /metrics with metrics off
    │   ├── MethodNotAllowed     405  CONNECT and TRACE; anything but GET/HEAD on the proxy's own endpoints
    │   ├── PayloadTooLarge      413  body over PROXY_MAX_BODY_BYTES on a buffered route
    │   ├── HeadersTooLarge      431  request line and headers over 64 KiB
    │   ├── UnsupportedMediaType 415  not JSON, or an encoding we cannot decode, on a rule route
    │   └── Unprocessable        422  a referenced recruiter is not an active recruiter of the agency
    ├── AuthenticationError      401  no session, or a session that does not verify
    ├── Forbidden                403  role missing, enforce mismatch, no recruiter ID, denied route
    ├── RateLimited              429  the user sent more requests than PROXY_RATE_LIMIT allows
    └── UpstreamError            a service behind the proxy failed
        ├── BadGateway           502  BPOC unreachable or broke the connection
        ├── ServiceUnavailable   503  the portal session service or BPOC directory is unreachable
        │   └── UpstreamBusy     503  no connection to BPOC came free within PROXY_UPSTREAM_QUEUE_TIMEOUT
        └── GatewayTimeout       504  BPOC slower than PROXY_UPSTREAM_TIMEOUT

ConfigError is separate: it stops start-up (or a rules reload) with one line naming the setting or the place in
the rules file, and never becomes an HTTP response.
"""

from __future__ import annotations

import simplejson


class ConfigError(Exception):
    """A setting or the rules file is wrong; the message is one line an operator can act on."""


class ProxyError(Exception):
    status_code = 500
    #: A short machine-readable code for clients and logs.
    code = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        message = _sentence(message)
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class ClientError(ProxyError):
    status_code = 400
    code = "bad_request"


class BadRequest(ClientError):
    status_code = 400
    code = "bad_request"


class NotFound(ClientError):
    status_code = 404
    code = "not_found"


class MethodNotAllowed(ClientError):
    status_code = 405
    code = "method_not_allowed"


class PayloadTooLarge(ClientError):
    status_code = 413
    code = "payload_too_large"


class HeadersTooLarge(ClientError):
    status_code = 431
    code = "headers_too_large"


class UnsupportedMediaType(ClientError):
    status_code = 415
    code = "unsupported_media_type"


class Unprocessable(ClientError):
    status_code = 422
    code = "unprocessable"


class AuthenticationError(ProxyError):
    status_code = 401
    code = "unauthenticated"

    def __init__(self, message: str, *, error: str = "invalid_token", reason: str = "invalid") -> None:
        # RFC 6750 section 3: tell the client which scheme and why.
        super().__init__(message, headers={"WWW-Authenticate": f'Bearer realm="bpoc-proxy", error="{error}"'})
        #: Why, as one word from a fixed set (the ``reason`` label of bpoc_proxy_session_failures_total).
        self.reason = reason


class Forbidden(ProxyError):
    status_code = 403
    code = "forbidden"


class RateLimited(ProxyError):
    """Over the per-user rate limit; carries Retry-After (RFC 6585 section 4)."""

    status_code = 429
    code = "rate_limited"


class UpstreamError(ProxyError):
    status_code = 502
    code = "bad_gateway"


class BadGateway(UpstreamError):
    status_code = 502
    code = "bad_gateway"


class ServiceUnavailable(UpstreamError):
    status_code = 503
    code = "service_unavailable"


class UpstreamBusy(ServiceUnavailable):
    """Every connection to BPOC stayed busy for the whole queue timeout; nothing was sent, so a retry is safe."""

    status_code = 503
    code = "upstream_busy"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "1"})


class GatewayTimeout(UpstreamError):
    status_code = 504
    code = "gateway_timeout"


def refusal(error: ProxyError, request_id: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The headers and body every refusal is sent with: ``{"error", "code", "status", "requestId"}`` as JSON.

    The caller adds ``X-Request-Id`` (and whatever its connection needs) to the headers."""
    payload = {
        "error": error.message,
        "code": error.code,
        "status": error.status_code,
        "requestId": request_id,
    }
    body = simplejson.dumps(payload, ensure_ascii=False).encode("utf-8")
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    headers.extend(
        (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in error.headers.items()
    )
    return headers, body


def _sentence(message: str) -> str:
    """Clients get one sentence ending in a full stop, whoever raised it; the first word may be a field name,
    such as interviewerId, so its case is left alone."""
    message = message.strip()
    if not message:
        return "The request failed."
    return message if message.endswith((".", "!", "?")) else message + "."
