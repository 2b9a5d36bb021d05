"""Streaming a large body through a server: one download and one upload over a plain socket.

The client is deliberately simple and fast (a blocking socket and one reusable 1 MiB buffer), so that the
direct-to-upstream figure measures the upstream rather than the client. Each request carries
``Connection: close``; the body ends when the server closes. An upload counts only if the sink answers 200 and
says it received every byte.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass

from .procs import HOST

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Transfer:
    status: int
    bytes: int
    seconds: float

    @property
    def mb_per_s(self) -> float:
        return self.bytes / (1024 * 1024) / self.seconds if self.seconds > 0 else 0.0


def download(port: int, path: str, headers: dict[str, str], expected: int) -> Transfer:
    started = time.perf_counter()
    with socket.create_connection((HOST, port), timeout=60) as sock:
        sock.sendall(_head("GET", path, headers))
        status, received, _ = _read_response(sock, keep_body=False)
    seconds = time.perf_counter() - started
    if status != 200 or received != expected:
        raise RuntimeError(f"download of {path} answered {status} with {received} of {expected} bytes")
    return Transfer(status, received, seconds)


def upload(port: int, path: str, headers: dict[str, str], size: int) -> Transfer:
    block = memoryview(bytes(range(256)) * (CHUNK // 256))
    head = _head(
        "POST", path, {**headers, "Content-Type": "application/octet-stream", "Content-Length": str(size)}
    )
    started = time.perf_counter()
    with socket.create_connection((HOST, port), timeout=60) as sock:
        sock.sendall(head)
        remaining = size
        while remaining > 0:
            step = min(remaining, CHUNK)
            sock.sendall(block[:step])
            remaining -= step
        status, _, body = _read_response(sock, keep_body=True)
    seconds = time.perf_counter() - started
    received = json.loads(body or b"{}").get("received") if status == 200 else None
    if received != size:
        raise RuntimeError(f"upload to {path} answered {status} {body[:200]!r}; the sink received {received}")
    return Transfer(status, size, seconds)


def _head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _read_response(sock: socket.socket, *, keep_body: bool) -> tuple[int, int, bytes]:
    """Status, body length, and the body itself when ``keep_body`` (small answers only)."""
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    head = b""
    while b"\r\n\r\n" not in head:
        n = sock.recv_into(view)
        if n == 0:
            raise RuntimeError("the server closed the connection before answering")
        head += bytes(view[:n])
    head, _, first = head.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    kept = bytearray(first) if keep_body else bytearray()
    received = len(first)
    while n := sock.recv_into(view):
        received += n
        if keep_body:
            kept += view[:n]
    return status, received, bytes(kept)
