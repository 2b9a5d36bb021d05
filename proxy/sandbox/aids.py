"""The sandbox's /_sandbox/ routes: echo requests, stream, stall and misbehave on demand, for proxy tests.

They need no key. /_sandbox/upload records its request without the body.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar

import simplejson
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from .holds import Holds
from .seed import BpocState, RecordedRequest
from .web import _AnyMethod, _pause, _recorded, _Refusal, json_response

CHUNK_SIZE = 64 * 1024
_CHUNK = bytes(range(256)) * (CHUNK_SIZE // 256)
_MAX_DOWNLOAD = 16 * 1024**3
GZIP_PAYLOAD: dict[str, Any] = {"compressed": True, "message": "these bytes left the sandbox gzip-encoded"}
GZIP_BODY = gzip.compress(simplejson.dumps(GZIP_PAYLOAD).encode(), mtime=0)

_N = TypeVar("_N", int, float)


def download_chunks(size: int) -> Iterator[bytes]:
    """The bytes /_sandbox/download?size=N sends, 64 KiB at a time; hash them to check a download."""
    whole, rest = divmod(size, CHUNK_SIZE)
    for _ in range(whole):
        yield _CHUNK
    if rest:
        yield _CHUNK[:rest]


class _Aids:
    """The /_sandbox/ routes: no API key, each one a behaviour a pass-through test needs from an upstream."""

    def __init__(self, state: BpocState) -> None:
        self.state = state

    def routes(self) -> list[Route]:
        return [
            Route("/_sandbox/echo/{path:path}", _AnyMethod(self.echo)),
            Route("/_sandbox/download", self.download, methods=["GET"]),
            Route("/_sandbox/upload", self.upload, methods=["POST", "PUT"]),
            Route("/_sandbox/slow", self.slow, methods=["GET"]),
            Route("/_sandbox/slow-body", self.slow_body, methods=["GET"]),
            Route("/_sandbox/gated-body", self.gated_body, methods=["GET"]),
            Route("/_sandbox/status/{code:int}", _AnyMethod(self.status)),
            Route("/_sandbox/redirect", self.redirect, methods=["GET"]),
            Route("/_sandbox/hop", self.hop, methods=["GET"]),
            *Holds(self.state).routes(),
        ]

    async def _record(self, request: Request, name: str, *, keep_body: bool = True) -> RecordedRequest:
        recorded = _recorded(request, await request.body() if keep_body else b"")
        self.state.record(recorded)
        self.state.count(name)
        return recorded

    async def echo(self, request: Request) -> Response:
        recorded = await self._record(request, "_sandbox/echo")
        body = recorded.body
        return json_response(
            {
                "method": recorded.method,
                "path": recorded.path,
                "raw_path": recorded.raw_path.decode("latin-1"),
                "query_string": recorded.query_string,
                # The echo is a response: like every response through the proxy, it never shows the agency key.
                "headers": [(n, "<redacted>" if n == "x-api-key" else v) for n, v in recorded.headers],
                "body_size": len(body),
                "body_sha256": hashlib.sha256(body).hexdigest(),
            }
        )

    async def download(self, request: Request) -> Response:
        await self._record(request, "_sandbox/download")
        if request.query_params.get("gzip") == "1":
            headers = {"content-encoding": "gzip"}
            return Response(GZIP_BODY, headers=headers, media_type="application/json")
        size = _number(request, "size", int, 0, _MAX_DOWNLOAD)
        # A known size goes out with Content-Length; ?chunked=1 leaves it off, so uvicorn sends it chunked.
        headers = {} if request.query_params.get("chunked") == "1" else {"content-length": str(size)}
        return StreamingResponse(_stream(size), headers=headers, media_type="application/octet-stream")

    async def upload(self, request: Request) -> Response:
        await self._record(request, "_sandbox/upload", keep_body=False)
        digest, size = hashlib.sha256(), 0
        async for chunk in request.stream():
            digest.update(chunk)
            size += len(chunk)
        return json_response({"size": size, "sha256": digest.hexdigest()})

    async def slow(self, request: Request) -> Response:
        await self._record(request, "_sandbox/slow")
        seconds = _number(request, "seconds", float, 0, 300)
        await _pause(request, seconds)
        return json_response({"slept": seconds})

    async def slow_body(self, request: Request) -> Response:
        await self._record(request, "_sandbox/slow-body")
        seconds = _number(request, "seconds", float, 0, 300)

        async def late() -> AsyncIterator[bytes]:
            await asyncio.sleep(seconds)
            yield simplejson.dumps({"slept": seconds}).encode()

        return StreamingResponse(late(), media_type="application/json")

    async def gated_body(self, request: Request) -> Response:
        """The head at once, the body once the test sets ``state.body_gate``: a test waits on events, not time."""
        await self._record(request, "_sandbox/gated-body")
        gate = self.state.body_gate

        async def when_open() -> AsyncIterator[bytes]:
            while not gate.is_set():  # a threading.Event, set from the test's thread
                await asyncio.sleep(0.01)
            yield b'{"released": true}'

        return StreamingResponse(when_open(), media_type="application/json")

    async def status(self, request: Request) -> Response:
        await self._record(request, "_sandbox/status")
        code: int = request.path_params["code"]
        if not 200 <= code <= 599:
            return json_response({"error": "status must be 200-599", "status": 400}, 400)
        retry_after = request.query_params.get("retry_after")
        headers = {"retry-after": retry_after} if retry_after else {}
        if code in (204, 304):
            return Response(status_code=code, headers=headers)
        return json_response({"status": code}, code, headers)

    async def redirect(self, request: Request) -> Response:
        await self._record(request, "_sandbox/redirect")
        return RedirectResponse("/_sandbox/echo/redirected", status_code=302)

    async def hop(self, request: Request) -> Response:
        """Hop-by-hop headers (RFC 9110 section 7.6.1) that a proxy must not pass on to its client.

        uvicorn (httptools and h11) writes all four as given; ``Connection: X-Private`` names X-Private as
        hop-by-hop too, so a proxy must drop it even though its name is not on the fixed list.
        """
        await self._record(request, "_sandbox/hop")
        headers = {
            "keep-alive": "timeout=5",
            "proxy-authenticate": "x",
            "x-private": "secret",
            "connection": "X-Private",
            "x-end-to-end": "kept",
        }
        return json_response({"hop": True}, headers=headers)

    async def not_found(self, request: Request) -> Response:
        await self._record(request, "not_found")
        return json_response({"error": "Not found", "status": 404}, 404)


async def _stream(size: int) -> AsyncIterator[bytes]:
    for chunk in download_chunks(size):
        yield chunk


def _number(request: Request, name: str, kind: type[_N], low: _N, high: _N) -> _N:
    raw = request.query_params.get(name, "0")
    try:
        value = kind(raw)
    except ValueError:
        raise _Refusal(400, f"{name} must be a number") from None
    if not low <= value <= high:
        raise _Refusal(400, f"{name} must be between {low:g} and {high:g}")
    return value
