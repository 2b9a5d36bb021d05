"""The proxy's HTTP/1.1 server protocol (uvicorn's, with a response head held until the body's first write):
nothing is ever held back for longer than it takes the body to start."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import httpx

from .conftest import auth, token_for


def test_a_slow_body_does_not_hold_back_the_head(proxy_url: str, client: httpx.Client) -> None:
    started = time.monotonic()
    with client.stream(
        "GET", proxy_url + "/_sandbox/slow-body", params={"seconds": 1}, headers=auth()
    ) as response:
        head_after = time.monotonic() - started
        assert response.status_code == 200
        assert response.read() == b'{"slept": 1.0}'
        body_after = time.monotonic() - started
    assert head_after < 0.6 and body_after >= 1.0


def test_100_continue_and_a_bodiless_head_are_sent_at_once(proxy_url: str) -> None:
    """Two heads with nothing after them: the interim 100 Continue, and the answer to HEAD."""
    address = urlsplit(proxy_url)
    body = b'{"title": "Engineer"}'
    with socket.create_connection((address.hostname, address.port), timeout=5) as sock:
        sock.sendall(
            b"POST /api/v1/jobs/create HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer %s\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"
            % (token_for().encode(), len(body))
        )
        assert sock.recv(65536).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")  # else the client never sends
        sock.sendall(body)
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 201 ")
        sock.sendall(
            b"HEAD /api/v1/jobs HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer %s\r\n\r\n"
            % token_for().encode()
        )
        head = sock.recv(65536)
        assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")
