"""Two minimal Starlette forwarding apps, alike but for the HTTP client: httpx.AsyncClient or aiohttp.

Each reads the JSON body, sets ``postedBy``, and POSTs it to the upstream named by ``BENCH_UPSTREAM``, answering
with the upstream's status and body. The difference between the two is the cost of the client library alone,
which is why the proxy forwards with aiohttp (README, "Performance").

Run: ``BENCH_UPSTREAM=http://127.0.0.1:N uvicorn --factory bench.engines:httpx_app`` (or ``aiohttp_app``).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .upstream import RECRUITER_ID

Forward = Callable[[str, bytes], Awaitable[tuple[int, bytes]]]


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def _app(forward: Forward, lifespan: Callable[[Starlette], AsyncIterator[None]]) -> Starlette:
    async def create_job(request: Request) -> Response:
        body = await request.json()
        body["postedBy"] = RECRUITER_ID
        status, answer = await forward(request.url.path, json.dumps(body).encode())
        return Response(answer, status_code=status, media_type="application/json")

    return Starlette(
        routes=[Route("/api/v1/jobs/create", create_job, methods=["POST"]), Route("/healthz", healthz)],
        lifespan=asynccontextmanager(lifespan),
    )


def httpx_app() -> Starlette:
    base = os.environ["BENCH_UPSTREAM"]
    clients: list[httpx.AsyncClient] = []

    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        async with httpx.AsyncClient(base_url=base, trust_env=False, limits=limits) as client:
            clients.append(client)
            yield

    async def forward(path: str, body: bytes) -> tuple[int, bytes]:
        response = await clients[0].post(path, content=body, headers={"content-type": "application/json"})
        return response.status_code, response.content

    return _app(forward, lifespan)


def aiohttp_app() -> Starlette:
    base = os.environ["BENCH_UPSTREAM"]
    sessions: list[aiohttp.ClientSession] = []

    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(base, connector=connector) as session:
            sessions.append(session)
            yield

    async def forward(path: str, body: bytes) -> tuple[int, bytes]:
        headers = {"content-type": "application/json"}
        async with sessions[0].post(path, data=body, headers=headers) as response:
            return response.status, await response.read()

    return _app(forward, lifespan)
