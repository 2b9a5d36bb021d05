"""The Python fast upstream: a stand-in for BPOC when nginx is missing, and the upload sink in every run.

A raw asyncio protocol with httptools' parser, on uvloop when installed: no framework, so that it costs as little
CPU as a Python server can. It answers

- ``GET /api/v1/agency/recruiters``: the recruiter directory the proxy's cache is filled from;
- ``GET /api/v1/files/big``: ``BENCH_BIG_BYTES`` bytes, written with flow control (the download case);
- any other request: a small fixed JSON, after reading the whole request body. Uploads are read to the last byte
  and the answer says how many arrived (``{"received": N}``), so a sink that answers early cannot flatter the
  upload case.

Run: ``python -m bench.upstream --port N [--big-bytes N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import cast

import httptools

from . import aio

BIG_PATH = b"/api/v1/files/big"
DIRECTORY_PATH = b"/api/v1/agency/recruiters"
RECRUITER_ID = "7d0c3f5e-2b1a-4c8e-9f6d-3a2b1c0d9e8f"
RECRUITER_EMAIL = "bob@agency.example"
SMALL_JSON = b'{"ok":true,"id":"job-4711","status":"created"}'
DIRECTORY_JSON = json.dumps(
    {"recruiters": [{"id": RECRUITER_ID, "email": RECRUITER_EMAIL, "role": "recruiter", "is_active": True}]}
).encode()
_CHUNK = b"\x5a" * (1024 * 1024)


def _response(body: bytes, keep_alive: bool, content_type: bytes = b"application/json") -> bytes:
    connection = b"keep-alive" if keep_alive else b"close"
    head = b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\nconnection: %s\r\n\r\n"
    return head % (content_type, len(body), connection) + body


class _Connection(asyncio.Protocol):
    def __init__(self, big_bytes: int) -> None:
        self._big_bytes = big_bytes
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._received = 0
        self._writable = asyncio.Event()
        self._writable.set()
        self._sending: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._close()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._writable.set()  # release a download waiting for room
        self._transport = None

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._received = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._received += len(body)

    def on_message_complete(self) -> None:
        keep_alive = self._parser.should_keep_alive()
        path = self._url.split(b"?", 1)[0]
        method = self._parser.get_method()
        if method == b"GET" and path == BIG_PATH:
            self._pause_reading()
            self._sending = asyncio.ensure_future(
                self._send_big(keep_alive)
            )  # held: tasks are weakly referenced
            return
        if method == b"GET" and path == DIRECTORY_PATH:
            body = DIRECTORY_JSON
        elif self._received:
            body = b'{"ok":true,"received":%d}' % self._received
        else:
            body = SMALL_JSON
        self._write(_response(body, keep_alive), keep_alive)

    def _pause_reading(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    async def _send_big(self, keep_alive: bool) -> None:
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: %d\r\n\r\n"
        remaining = self._big_bytes
        self._write(head % remaining, True)
        view = memoryview(_CHUNK)
        while remaining > 0 and self._transport is not None:
            await self._writable.wait()
            size = min(remaining, len(view))
            self._write(view[:size], True)
            remaining -= size
        if self._transport is not None:
            self._transport.resume_reading()
            if not keep_alive:
                self._close()

    def _write(self, data: bytes | memoryview, keep_alive: bool) -> None:
        if self._transport is None:
            return
        self._transport.write(data)
        if not keep_alive:
            self._close()

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def serve(port: int, big_bytes: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(big_bytes), "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--big-bytes", type=int, default=200 * 1024 * 1024)
    args = parser.parse_args()
    try:
        aio.run(serve(args.port, args.big_bytes))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
