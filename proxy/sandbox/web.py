"""What the sandbox's /api/v1 endpoints and its /_sandbox/ aids share: BPOC's error shape, JSON answers, request records."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import simplejson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .seed import RecordedRequest

Endpoint = Callable[[Request], Awaitable[Response]]


class _Refusal(Exception):
    """An error answer, in BPOC's shape: ``{"error": ..., "message"?: ..., "status": ...}``."""

    def __init__(self, status: int, error: str, message: str | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.message = status, error, message

    def response(self) -> Response:
        body: dict[str, Any] = {"error": self.error, "status": self.status}
        if self.message is not None:
            body["message"] = self.message
        return json_response(body, self.status)


async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, _Refusal)
    return exc.response()


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    # simplejson with use_decimal: numbers go back out exactly as they came in.
    body = simplejson.dumps(content, use_decimal=True, ensure_ascii=False, separators=(",", ":"))
    return Response(body.encode(), status, headers, media_type="application/json")


def _recorded(request: Request, body: bytes) -> RecordedRequest:
    scope = request.scope
    return RecordedRequest(
        method=request.method,
        path=scope["path"],
        raw_path=scope.get("raw_path") or scope["path"].encode(),
        query_string=scope["query_string"].decode("latin-1"),
        headers=[(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]],
        body=body,
    )


class _AnyMethod:
    """An ASGI endpoint that answers every method; Starlette limits function endpoints to a method list."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self._endpoint(Request(scope, receive))
        await response(scope, receive, send)


async def _pause(request: Request, seconds: float) -> None:
    """Sleep, but end early if the client hangs up: stopping the server must not wait on abandoned sleeps."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(disconnected(), seconds)
