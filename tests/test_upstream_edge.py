"""The engine's errors become the proxy's documented JSON refusals at the upstream edge (``proxy/upstream.py``),
seen as a client sees them: a running proxy in front of a raw TCP server that misbehaves on purpose."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from .conftest import API_KEY, ProxyFactory, auth, base_env

#: What the raw server does after reading a request head: the bytes it writes, then whether it hangs up.
Script = tuple[bytes, bool]


@contextmanager
def raw_bpoc(script: Script) -> Iterator[str]:
    """A TCP server on 127.0.0.1 that answers every request on ``/edge`` with ``script``, and BPOC's directory
    with a quick 503 (so the proxy's start-up does not wait for it). A connection it does not hang up stays
    silent until the server stops."""
    stop = threading.Event()
    answer, hang_up = script

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            head = b""
            while b"\r\n\r\n" not in head:
                data = self.request.recv(65536)
                if not data:
                    return
                head += data
            if not head.split(b" ", 2)[1].startswith(b"/edge"):
                self.request.sendall(
                    b"HTTP/1.1 503 Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                )
                return
            self.request.sendall(answer)
            if not hang_up:
                stop.wait(30)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


def refusal(response: httpx.Response, status: int, code: str) -> str:
    """The checks every refusal passes (JSON, status, code, request id, nothing secret); returns its sentence."""
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["status"] == status and body["code"] == code
    assert body["requestId"] == response.headers["x-request-id"]
    assert API_KEY not in response.text
    error: str = body["error"]
    assert error.endswith(".") and "\n" not in error
    return error


def test_refused_connection_is_502(start_proxy: ProxyFactory, client: httpx.Client) -> None:
    """Nobody listening at BPOC_BASE_URL: 502 saying BPOC could not be reached, and where."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = start_proxy(base_env(f"http://127.0.0.1:{port}"))
    error = refusal(client.get(url + "/edge", headers=auth()), 502, "bad_gateway")
    assert error.startswith(f"BPOC could not be reached: cannot connect to BPOC at 127.0.0.1:{port}: ")


@pytest.mark.parametrize(
    ("script", "status", "code", "error"),
    [
        pytest.param(
            (b"", False),
            504,
            "gateway_timeout",
            "BPOC did not answer within PROXY_UPSTREAM_TIMEOUT (0.3 s).",
            id="no-answer",
        ),
        pytest.param(
            (b'HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\n{"partial":', False),
            504,
            "gateway_timeout",
            "BPOC did not send the response body within PROXY_UPSTREAM_TIMEOUT (0.3 s).",
            id="body-stalls",
        ),
        pytest.param(
            (b"", True),
            502,
            "bad_gateway",
            "BPOC could not be reached: BPOC closed the connection before the response was complete.",
            id="closed-before-answer",
        ),
        pytest.param(
            (b'HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\n{"partial":', True),
            502,
            "bad_gateway",
            "BPOC closed the connection before the response was complete.",
            id="cut-mid-body",
        ),
        pytest.param(
            (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", True),
            502,
            "bad_gateway",
            "BPOC could not be reached: BPOC sent a response that is not valid HTTP/1.1: ",
            id="not-http",
        ),
        pytest.param(
            (b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab", True),
            502,
            "bad_gateway",
            "BPOC could not be reached: BPOC sent a response that is not valid HTTP/1.1: ",
            id="two-lengths",
        ),
        pytest.param(
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n", True),
            502,
            "bad_gateway",
            "BPOC could not be reached: BPOC sent a Transfer-Encoding other than chunked.",
            id="gzip-transfer-coding",
        ),
        pytest.param(
            (b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\n", False),
            502,
            "bad_gateway",
            "BPOC could not be reached: BPOC switched protocols, which the proxy does not support.",
            id="switching-protocols",
        ),
    ],
)
def test_broken_exchange_is_the_documented_refusal(
    start_proxy: ProxyFactory, client: httpx.Client, script: Script, status: int, code: str, error: str
) -> None:
    """A timeout is 504 naming PROXY_UPSTREAM_TIMEOUT; a connection BPOC breaks or a malformed answer is 502."""
    with raw_bpoc(script) as bpoc:
        url = start_proxy(base_env(bpoc, PROXY_UPSTREAM_TIMEOUT="0.3"))
        sentence = refusal(client.get(url + "/edge", headers=auth()), status, code)
    if error.endswith(": "):
        assert sentence.startswith(error)
    else:
        assert sentence == error


def test_break_after_the_status_line_truncates_the_response(
    start_proxy: ProxyFactory, client: httpx.Client
) -> None:
    """Mid-way through a streamed body the status has gone out: the client sees the response cut short."""
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: 1000000\r\n\r\n"
    with raw_bpoc((head + b"x" * 1000, True)) as bpoc:
        url = start_proxy(base_env(bpoc))
        with client.stream("GET", url + "/edge", headers=auth()) as response:
            assert response.status_code == 200
            with pytest.raises(httpx.RemoteProtocolError):
                response.read()
        assert client.get(url + "/healthz").status_code == 200


def test_trailers_never_become_headers(start_proxy: ProxyFactory, client: httpx.Client) -> None:
    """A chunked answer's trailer fields are dropped (found by the engine property): merged into the headers, a
    trailer could set a cookie the origin never sent as a header (RFC 9110 section 6.5.1)."""
    answer = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-kept: 1\r\n\r\n"
        b"2\r\nok\r\n0\r\nset-cookie: session=stolen\r\nx-trailer: t\r\n\r\n"
    )
    with raw_bpoc((answer, True)) as bpoc:
        url = start_proxy(base_env(bpoc))
        response = client.get(url + "/edge", headers=auth())
    assert response.status_code == 200 and response.content == b"ok"
    assert response.headers["x-kept"] == "1"
    assert "set-cookie" not in response.headers and "x-trailer" not in response.headers
