"""The proxy's HTTP/1.1 server protocol (uvicorn's, with a response head held until the body's first write):
nothing is ever held back for longer than it takes the body to start."""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlsplit

import httpx

from proxy.app import create_app
from proxy.sandbox.server import serve_in_thread
from proxy.settings import Settings

from .conftest import auth, base_env, token_for


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


def test_a_websocket_handshake_is_refused_with_json(proxy_url: str) -> None:
    """WebSockets are not proxied: the handshake gets a JSON refusal at once, and the connection closes."""
    head, _, body = _handshake(proxy_url, b"X-Request-Id: ws-attempt-1\r\n").partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert json.loads(body) == {
        "error": "WebSocket connections are not proxied; BPOC's API is plain HTTP.",
        "code": "bad_request",
        "status": 400,
        "requestId": "ws-attempt-1",
    }


def _handshake(url: str, extra: bytes = b"") -> bytes:
    address = urlsplit(url)
    with socket.create_connection((address.hostname, address.port), timeout=5) as sock:
        sock.sendall(
            b"GET /api/v1/jobs HTTP/1.1\r\nHost: proxy\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n%s\r\n" % extra
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_served_with_uvicorn_websockets_a_handshake_is_refused_with_json_too(bpoc_url: str) -> None:
    """Embedded in a server that does speak WebSocket (uvicorn's defaults), the app still refuses in JSON."""
    with serve_in_thread(create_app(Settings.from_environ(base_env(bpoc_url)))) as url:
        head, _, body = _handshake(url).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert json.loads(body)["error"] == "WebSocket connections are not proxied; BPOC's API is plain HTTP."
