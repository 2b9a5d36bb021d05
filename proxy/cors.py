"""CORS for browser frontends on another origin than the proxy (PROXY_CORS_ORIGINS).

Browsers send a preflight OPTIONS without credentials before a cross-origin call with an Authorization header
or a JSON body; the proxy answers it itself, for the listed origins only, and never forwards it. Actual responses
to a listed origin carry Access-Control-Allow-Origin with credentials allowed, so a session cookie can be used.
BPOC's own Access-Control-* headers are dropped then: the browser talks to the proxy, not to BPOC.
"""

from __future__ import annotations

from collections.abc import Iterable

from .errors import Forbidden

RawHeaders = Iterable[tuple[bytes, bytes]]

_METHODS = b"GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"
_EXPOSED = b"X-Request-Id, X-Attribution-Id, Retry-After"


class Cors:
    def __init__(self, origins: tuple[str, ...]) -> None:
        self._origins = frozenset(origin.encode("latin-1") for origin in origins)
        self.enabled = bool(self._origins)

    def preflight(self, method: str, headers: RawHeaders) -> list[tuple[bytes, bytes]] | None:
        """The headers particular to a preflight's answer; None if this is no preflight; Forbidden if the origin
        is not listed."""
        if method != "OPTIONS":
            return None
        origin = requested_method = requested_headers = None
        for name, value in headers:
            if name == b"origin":
                origin = value
            elif name == b"access-control-request-method":
                requested_method = value
            elif name == b"access-control-request-headers":
                requested_headers = value
        if origin is None or requested_method is None:
            return None
        if origin not in self._origins:
            raise Forbidden(f"The origin {origin.decode('latin-1')} is not in PROXY_CORS_ORIGINS.")
        # The allow-origin headers come from headers_for(), as on every response to a listed origin.
        answer = [
            (b"access-control-allow-methods", _METHODS),
            (b"access-control-max-age", b"600"),
        ]
        if requested_headers:
            answer.append((b"access-control-allow-headers", requested_headers))
        return answer

    def headers_for(self, headers: RawHeaders) -> list[tuple[bytes, bytes]]:
        """The CORS headers for an actual response to this request (none for an unlisted or absent origin)."""
        for name, value in headers:
            if name == b"origin" and value in self._origins:
                return [
                    (b"access-control-allow-origin", value),
                    (b"access-control-allow-credentials", b"true"),
                    (b"access-control-expose-headers", _EXPOSED),
                    (b"vary", b"Origin"),
                ]
        return []
