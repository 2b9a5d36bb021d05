"""The Python load generator, used when wrk is missing (and by ``--quick``): keep-alive HTTP/1.1 connections,
each sending the same request again as soon as the answer is in, for a fixed time.

With ``--requests-file F`` (a JSON list of raw HTTP/1.1 requests as latin-1 strings) it sends those in turn
instead, in order across all connections, for a mix of requests (``python -m bench soak``).

It prints one JSON line, the same fields bench/load.py reads from wrk: requests, non-2xx answers, socket errors,
seconds, p50 and p99 latency in microseconds. It is slower than wrk (a Python client saturates one core at a
few thousand requests/s), so figures measured with it are a floor, and the benchmark says so.

Run: ``python -m bench.loadgen URL --method POST --body-file F --header 'Name: value' -c 64 -d 5``, or
``python -m bench.loadgen URL --requests-file F -c 200 -d 60`` (URL gives the host and port).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

import httptools

from . import aio


@dataclass
class Tally:
    latencies_ns: list[int] = field(default_factory=list)
    non_2xx: int = 0
    errors: int = 0


class _Client(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.answer: asyncio.Future[int] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionResetError("closed"))

    def on_message_complete(self) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_result(self.parser.get_status_code())

    def _fail(self, exc: BaseException) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(ConnectionError(str(exc)))


def build_request(url: str, method: str, body: bytes, headers: list[str]) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {target or '/'} HTTP/1.1", f"Host: {host}:{port}", *headers]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return host, port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _connection(host: str, port: int, requests: Iterator[bytes], deadline: float, tally: Tally) -> None:
    loop = asyncio.get_running_loop()
    while time.monotonic() < deadline:
        try:
            _, client = await loop.create_connection(_Client, host, port)
        except OSError:
            tally.errors += 1
            await asyncio.sleep(0.01)
            continue
        assert client.transport is not None
        try:
            while time.monotonic() < deadline:
                client.answer = loop.create_future()
                started = time.perf_counter_ns()
                client.transport.write(next(requests))
                try:
                    status = await client.answer
                except ConnectionError:
                    tally.errors += 1
                    break
                tally.latencies_ns.append(time.perf_counter_ns() - started)
                if not 200 <= status < 300:
                    tally.non_2xx += 1
                if not client.parser.should_keep_alive():
                    break
        finally:
            client.transport.close()


def percentile_us(sorted_ns: list[int], fraction: float) -> float:
    if not sorted_ns:
        return 0.0
    index = min(len(sorted_ns) - 1, max(0, round(fraction * len(sorted_ns)) - 1))
    return sorted_ns[index] / 1000


async def run(
    url: str, method: str, body: bytes, headers: list[str], connections: int, seconds: float
) -> dict[str, float]:
    host, port, request = build_request(url, method, body, headers)
    return await run_mix(host, port, [request], connections, seconds)


async def run_mix(
    host: str, port: int, requests: list[bytes], connections: int, seconds: float
) -> dict[str, float]:
    """``requests`` in turn over ``connections`` keep-alive connections for ``seconds``; the JSON line's fields."""
    turns = itertools.cycle(requests)  # shared: one event loop, so the mix holds across connections
    tally = Tally()
    started = time.monotonic()
    deadline = started + seconds
    await asyncio.gather(*(_connection(host, port, turns, deadline, tally) for _ in range(connections)))
    elapsed = time.monotonic() - started
    latencies = sorted(tally.latencies_ns)
    return {
        "requests": len(latencies),
        "non_2xx": tally.non_2xx,
        "errors": tally.errors,
        "seconds": elapsed,
        "p50_us": percentile_us(latencies, 0.50),
        "p99_us": percentile_us(latencies, 0.99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Python HTTP/1.1 load generator (the fallback for wrk)")
    parser.add_argument("url")
    parser.add_argument("--method", default="GET")
    parser.add_argument("--body-file", type=Path)
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--requests-file", type=Path, help="a JSON list of raw requests to send in turn")
    parser.add_argument("-c", "--connections", type=int, default=64)
    parser.add_argument("-d", "--duration", type=float, default=5.0)
    args = parser.parse_args()
    if args.requests_file:
        host, port, _ = build_request(args.url, "GET", b"", [])
        raw = [text.encode("latin-1") for text in json.loads(args.requests_file.read_text())]
        result = aio.run(run_mix(host, port, raw, args.connections, args.duration))
    else:
        body = args.body_file.read_bytes() if args.body_file else b""
        result = aio.run(run(args.url, args.method, body, args.header, args.connections, args.duration))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
