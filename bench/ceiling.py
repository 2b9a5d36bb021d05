"""The ceiling: the fastest a Starlette proxy could be, with no upstream call at all.

One route reads the JSON body, sets ``postedBy``, dumps it and answers with it, which is the work any Starlette
proxy does before it forwards. Its throughput on the 1 KB POST is the figure the proxy's targets are ratios of.

Run: ``uvicorn bench.ceiling:app --no-access-log --loop uvloop --http httptools``.
"""

from __future__ import annotations

import json

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .upstream import RECRUITER_ID


async def create_job(request: Request) -> Response:
    body = await request.json()
    body["postedBy"] = RECRUITER_ID
    return Response(json.dumps(body), media_type="application/json")


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


app = Starlette(
    routes=[
        Route("/api/v1/jobs/create", create_job, methods=["POST"]),
        Route("/healthz", healthz),
    ]
)
