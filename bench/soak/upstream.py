"""The soak's upstream: BPOC's stand-in that checks every body it receives, and keeps counts, not bodies.

A raw asyncio protocol with httptools' parser (as bench/upstream.py), so that it stays far from being the
bottleneck on the load core. It answers

- ``GET /api/v1/agency/recruiters``: the directory of the soak's callers (bench/soak/callers.py);
- ``GET /__soak/tally``: its counts so far as JSON (the harness asks it directly, never through the proxy);
- any other request: a small fixed JSON, after reading the whole body.

A ``POST /api/v1/jobs/create`` body is attributed when it is a JSON object whose one ``postedBy`` is the
recruiter ID of the caller its ``soakCaller`` names. Anything else is counted as unattributed, by reason:
``missing`` (no ``postedBy``), ``spoof_survived`` (the other caller's ID the spoofing client sent),
``wrong_id`` (any other ID), ``duplicate`` (the key more than once: a reader taking the first could be fooled),
``unreadable`` (not a JSON object, or no valid ``soakCaller``).

With ``--keepalive-requests N`` it closes each connection after its Nth answer (``Connection: close``), as
nginx does after ``keepalive_requests`` (1000 by default), so that the proxy's connections to it turn over.

Run: ``python -m bench.soak.upstream --port N --callers N [--keepalive-requests N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import Counter
from typing import Any, cast

import httptools

from .. import aio
from ..cases import JOB_PATH
from .callers import CALLER_FIELD, DIRECTORY_PATH, KIND_FIELD, callers, directory_json, spoofed_id

TALLY_PATH = "/__soak/tally"
SMALL_JSON = b'{"ok":true,"id":"job-4711","status":"created"}'
UNATTRIBUTED = ("missing", "spoof_survived", "wrong_id", "duplicate", "unreadable")


class Tally:
    """What arrived: requests by kind, and the unattributed bodies by reason."""

    def __init__(self, count: int) -> None:
        self._people = callers(count)
        self._spoofs = [spoofed_id(caller, count) for caller in self._people]
        self.received: Counter[str] = Counter()
        self.unattributed: Counter[str] = Counter()
        self.connections = 0  # that carried a request from the proxy: how often it opened a new one

    def job(self, body: bytes) -> None:
        verdict, kind = self._judge(body)
        self.received[kind] += 1
        if verdict != "ok":
            self.unattributed[verdict] += 1

    def _judge(self, body: bytes) -> tuple[str, str]:
        try:
            job = json.loads(body)
            index = job[CALLER_FIELD]
            caller = self._people[index]
            kind = str(job.get(KIND_FIELD, "unmarked"))
        except (ValueError, TypeError, KeyError, IndexError):
            return "unreadable", "unmarked"
        if not isinstance(index, int) or index < 0:
            return "unreadable", kind
        posted = job.get("postedBy")
        if posted is None:
            return "missing", kind
        if posted == self._spoofs[index] and posted != caller.recruiter_id:
            return "spoof_survived", kind
        if posted != caller.recruiter_id:
            return "wrong_id", kind
        if body.count(b'"postedBy"') != 1:
            return "duplicate", kind
        return "ok", kind

    def as_json(self) -> bytes:
        document: dict[str, Any] = {
            "received": dict(self.received),
            "unattributed": {reason: self.unattributed[reason] for reason in UNATTRIBUTED},
            "connections": {"opened": self.connections},
        }
        return json.dumps(document).encode()


def _response(body: bytes, keep_alive: bool) -> bytes:
    connection = b"keep-alive" if keep_alive else b"close"
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: %s\r\n\r\n"
    )
    return head % (len(body), connection) + body


class _Connection(asyncio.Protocol):
    def __init__(self, tally: Tally, directory: bytes, keepalive_requests: int) -> None:
        self._tally = tally
        self._directory = directory
        self._left = keepalive_requests or -1  # requests before it closes the connection (-1: never)
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._body: list[bytes] = []
        self._counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._body.clear()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._left -= 1
        keep_alive = self._parser.should_keep_alive() and self._left != 0
        path = self._url.split(b"?", 1)[0].decode("latin-1")
        method = self._parser.get_method().decode("latin-1")
        answer = self._answer(method, path)
        if self._transport is not None:
            self._transport.write(_response(answer, keep_alive))
            if not keep_alive:
                self._transport.close()

    def _answer(self, method: str, path: str) -> bytes:
        if method == "GET" and path == TALLY_PATH:
            return self._tally.as_json()
        if not self._counted:
            self._counted = True
            self._tally.connections += 1
        if method == "POST" and path == JOB_PATH:
            self._tally.job(b"".join(self._body))
        elif method == "GET" and path == DIRECTORY_PATH:
            self._tally.received["directory"] += 1
            return self._directory
        else:
            self._tally.received[f"{method} {path}"] += 1
        return SMALL_JSON


async def serve(port: int, count: int, keepalive_requests: int) -> None:
    tally, directory = Tally(count), directory_json(count)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Connection(tally, directory, keepalive_requests), "127.0.0.1", port, backlog=1024
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--callers", type=int, required=True)
    parser.add_argument(
        "--keepalive-requests", type=int, default=0, help="close a connection after N requests (0: never)"
    )
    args = parser.parse_args()
    try:
        aio.run(serve(args.port, args.callers, args.keepalive_requests))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
