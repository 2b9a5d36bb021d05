"""/_sandbox/hold/{name}: requests left unanswered until a test releases them, for tests of the proxy's pool of
connections to BPOC (how many BPOC sees at once, and in which order queued requests reach it).

``GET /_sandbox/hold/{name}`` is recorded and answered ``{"held": name}`` once ``POST /_sandbox/release/{name}``
came (before or after it; ``*`` releases every hold, now and to come), or when its client hangs up.
``GET /_sandbox/holds`` reports ``arrived`` (names, in arrival order), ``holding`` (held now), ``peak`` (most
held at once) and ``connections`` (distinct client connections that sent a hold). No API key needed.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .seed import BpocState
from .web import _recorded, json_response


class Holds:
    def __init__(self, state: BpocState) -> None:
        self.state = state
        self._events: dict[str, asyncio.Event] = {}
        self._released: set[str] = set()
        self._release_all = False
        self._arrived: list[str] = []
        self._holding = 0
        self._peak = 0
        self._connections: set[tuple[str, int]] = set()

    def routes(self) -> list[Route]:
        return [
            Route("/_sandbox/hold/{name}", self.hold, methods=["GET"]),
            Route("/_sandbox/release/{name}", self.release, methods=["POST"]),
            Route("/_sandbox/holds", self.report, methods=["GET"]),
        ]

    async def hold(self, request: Request) -> Response:
        name: str = request.path_params["name"]
        self.state.record(_recorded(request, b""))
        self.state.count("_sandbox/hold")
        self._arrived.append(name)
        if request.client is not None:
            self._connections.add((request.client.host, request.client.port))
        self._holding += 1
        self._peak = max(self._peak, self._holding)
        try:
            if not (self._release_all or name in self._released):
                await _until_set_or_gone(self._events.setdefault(name, asyncio.Event()), request)
        finally:
            self._holding -= 1
        return json_response({"held": name})

    async def release(self, request: Request) -> Response:
        name: str = request.path_params["name"]
        if name == "*":
            self._release_all = True
            names = list(self._events)
        else:
            self._released.add(name)
            names = [name]
        for each in names:
            self._events.setdefault(each, asyncio.Event()).set()
        return json_response({"released": names})

    async def report(self, request: Request) -> Response:
        return json_response(
            {
                "arrived": self._arrived,
                "holding": self._holding,
                "peak": self._peak,
                "connections": len(self._connections),
            }
        )


async def _until_set_or_gone(event: asyncio.Event, request: Request) -> None:
    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(gone())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*waits, return_exceptions=True)
