"""Strict framing, over raw sockets: every request is framed one way or refused before anything reaches BPOC.

Each test checks BPOC's side (what the sandbox received), not only the status the client got: a request the
proxy refuses must reach BPOC not at all, and a request it accepts must reach BPOC as one request, attributed.
The proxy's answers are parsed with h11, a well-kept HTTP/1.1 implementation, as the reference.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import h11
import httpx
import pytest

from proxy.app import create_app
from proxy.framing import transfer_coding_error
from proxy.sandbox.seed import ALICE_ID, BOB_ID, BpocState
from proxy.sandbox.server import serve_in_thread
from proxy.settings import Settings

from .conftest import ProxyProcess, base_env, token_for

UPLOAD = "/_sandbox/upload"  # records a request as soon as its head arrives, before reading the body
LIMIT = 64 * 1024


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def refusal(self) -> dict[str, Any]:
        """The JSON refusal every refusal is: one sentence, code, status and request id, and the connection closes."""
        assert self.headers["connection"] == "close"
        return self.refusal_body()

    def refusal_body(self) -> dict[str, Any]:
        """The JSON body of every refusal, with the request id it was answered with."""
        assert self.headers["content-type"] == "application/json"
        payload = json.loads(self.body)
        assert set(payload) == {"error", "code", "status", "requestId"}
        assert payload["status"] == self.status
        assert payload["requestId"] == self.headers["x-request-id"] != ""
        assert isinstance(payload["error"], str) and payload["error"].endswith(".")
        return dict(payload)


def converse(url: str, data: bytes, methods: list[str], *, closes: bool = False) -> list[Reply]:
    """Send ``data`` on one connection and read one reply per method in ``methods`` (fewer if the proxy closes
    first); with ``closes``, the proxy must then close the connection."""
    address = urlsplit(url)
    replies: list[Reply] = []
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(data)
        conn = h11.Connection(h11.CLIENT)
        for method in methods:
            if not _idle(conn):
                break  # the previous reply closed the connection
            # h11 parses a response only after a request: tell it which one, then discard those bytes.
            conn.send(h11.Request(method=method, target="/", headers=[("Host", "proxy")]))
            conn.send(h11.EndOfMessage())
            reply = _read_reply(sock, conn)
            if reply is None:
                break
            replies.append(reply)
            if (conn.our_state, conn.their_state) == (h11.DONE, h11.DONE):
                conn.start_next_cycle()
        if closes:
            assert _closed(sock), "the proxy kept the connection open"
    return replies


def _idle(conn: h11.Connection) -> bool:
    return conn.our_state is h11.IDLE


def _read_reply(sock: socket.socket, conn: h11.Connection) -> Reply | None:
    reply: Reply | None = None
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(sock.recv(65536))
        elif isinstance(event, h11.Response):
            headers = {name.decode(): value.decode() for name, value in event.headers}
            reply = Reply(event.status_code, headers, b"")
        elif isinstance(event, h11.Data):
            assert reply is not None
            reply.body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return reply
        elif isinstance(event, h11.ConnectionClosed):
            return None
        # h11.InformationalResponse (100 Continue): nothing to keep


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def refused(url: str, data: bytes) -> Reply:
    """Send one request that must be refused: exactly one reply, the JSON refusal, then the connection closes."""
    replies = converse(url, data, ["POST"], closes=True)
    assert len(replies) == 1
    replies[0].refusal()
    return replies[0]


def received_after(url: str, state: BpocState) -> list[str]:
    """The paths BPOC received, once a sentinel request sent after the test's own has come back through the
    proxy (so that anything the proxy did forward has arrived too)."""
    response = httpx.get(url + "/_sandbox/echo/sentinel", headers=auth_header(), timeout=10, trust_env=False)
    assert response.status_code == 200
    paths = [request.path for request in state.requests]
    assert paths[-1] == "/_sandbox/echo/sentinel"
    return paths[:-1]


def auth_header(email: str = "bob@agency.example") -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for(email)}"}


def head(
    target: str = UPLOAD,
    *lines: str,
    method: str = "POST",
    version: str = "HTTP/1.1",
    eol: str = "\r\n",
    request_id: str = "framing-1",
) -> bytes:
    """A request head: the request line, X-Request-Id, Host and a valid session, then ``lines`` as given.

    The request id comes first because a parser hands a header over only once the next one has begun: the
    client's id can be echoed only when the parser got past it."""
    fixed = [
        f"{method} {target} {version}",
        f"X-Request-Id: {request_id}",
        "Host: proxy",
        f"Authorization: Bearer {token_for()}",
    ]
    return (eol.join([*fixed, *lines]) + eol + eol).encode("latin-1")


@pytest.fixture
def proxy(proxy_url: str, bpoc_state: BpocState) -> str:
    """The proxy in front of the sandbox, with the sandbox's record emptied of the proxy's start-up calls."""
    bpoc_state.reset_requests()
    return proxy_url


CHUNKED_BODY = b"5\r\nhello\r\n0\r\n\r\n"

REFUSED = [
    pytest.param(
        head(UPLOAD, "Content-Length: 5", "Transfer-Encoding: chunked") + CHUNKED_BODY,
        id="content-length-and-transfer-encoding",
    ),
    pytest.param(
        head(UPLOAD, "Transfer-Encoding: chunked", "Content-Length: 5") + CHUNKED_BODY,
        id="transfer-encoding-and-content-length",
    ),
    pytest.param(
        head(UPLOAD, "Content-Length: 5", "Content-Length: 6") + b"hello!",
        id="two-different-content-lengths",
    ),
    pytest.param(
        head(UPLOAD, "Content-Length: 5", "Content-Length: 5") + b"hello",
        id="two-equal-content-lengths",
    ),
    pytest.param(head(UPLOAD, "Transfer-Encoding: xchunked") + CHUNKED_BODY, id="xchunked"),
    pytest.param(
        head(UPLOAD, "Transfer-Encoding: gzip, chunked") + CHUNKED_BODY,
        id="gzip-then-chunked",
    ),
    pytest.param(
        head(UPLOAD, "Transfer-Encoding: chunked, chunked") + CHUNKED_BODY,
        id="chunked-twice",
    ),
    pytest.param(
        head(UPLOAD, "Transfer-Encoding: gzip", "Transfer-Encoding: chunked") + CHUNKED_BODY,
        id="two-transfer-encoding-headers",
    ),
    pytest.param(
        head(UPLOAD, "Transfer-Encoding: identity", "Content-Length: 5") + b"hello",
        id="identity",
    ),
    pytest.param(
        head(UPLOAD, "Transfer-Encoding : chunked") + CHUNKED_BODY,
        id="space-before-the-colon",
    ),
    pytest.param(
        head(UPLOAD, "Transfer-Encoding: x", " chunked") + CHUNKED_BODY,
        id="obs-folded-transfer-encoding",
    ),
    pytest.param(
        head(UPLOAD, "X-Note: one", "\tfolded", "Content-Length: 5") + b"hello",
        id="obs-folded-header",
    ),
    pytest.param(head(UPLOAD, "Content-Length: 5", eol="\n") + b"hello", id="bare-lf"),
    pytest.param(
        head(UPLOAD, "Content-Length: 5\nX-Smuggled: 1") + b"hello",
        id="one-bare-lf",
    ),
    pytest.param(head(UPLOAD, "Content Length: 5") + b"hello", id="space-in-a-header-name"),
    pytest.param(
        head(UPLOAD, "Transfer-Encoding: chunked", version="HTTP/1.0") + CHUNKED_BODY,
        id="transfer-encoding-in-http-1.0",
    ),
    pytest.param(
        head(UPLOAD, "Content-Length: 5", "X-Nul: a\0b") + b"hello",
        id="nul-in-a-header-value",
    ),
]


@pytest.mark.parametrize("request_bytes", REFUSED)
def test_ambiguous_or_malformed_framing_is_refused_and_not_forwarded(
    proxy: str, bpoc_state: BpocState, request_bytes: bytes
) -> None:
    """Each is refused with the JSON 400 (with the client's request id, when the parser got that far), and
    BPOC receives nothing."""
    reply = refused(proxy, request_bytes)
    assert reply.status == 400
    assert reply.refusal()["code"] == "bad_request"
    if b"\r\n" in request_bytes:  # with bare LFs only, the parser stops at the request line
        assert reply.headers["x-request-id"] == "framing-1"
    assert received_after(proxy, bpoc_state) == []


def test_a_transfer_encoding_refusal_says_what_is_accepted(proxy: str, bpoc_state: BpocState) -> None:
    reply = refused(proxy, head(UPLOAD, "Transfer-Encoding: xchunked") + CHUNKED_BODY)
    assert reply.refusal()["error"] == (
        "Transfer-Encoding must be exactly chunked; send one Transfer-Encoding: chunked or a Content-Length."
    )


def test_malformed_http_is_refused_with_the_parsers_reason(proxy: str) -> None:
    reply = refused(proxy, head(UPLOAD, "Content-Length: 5", "Content-Length: 6") + b"hello!")
    assert reply.refusal()["error"] == "The request is not valid HTTP: Duplicate Content-Length."


@pytest.mark.parametrize("coding", ["chunked", "Chunked", "CHUNKED", "chunked "])
def test_chunked_in_any_case_is_forwarded_once(proxy: str, bpoc_state: BpocState, coding: str) -> None:
    """``chunked`` is compared without regard to case: the body reaches BPOC whole, in one request."""
    replies = converse(proxy, head(UPLOAD, f"Transfer-Encoding: {coding}") + CHUNKED_BODY, ["POST"])
    assert [r.status for r in replies] == [200]
    assert json.loads(replies[0].body)["size"] == 5
    assert received_after(proxy, bpoc_state) == [UPLOAD]


def test_a_header_section_over_64_kib_is_431(proxy: str, bpoc_state: BpocState) -> None:
    pads = [f"X-Pad-{i}: {'a' * 1000}" for i in range(66)]  # 66 x ~1 KiB: 65+ KiB of headers
    reply = refused(proxy, head(UPLOAD, *pads, "Content-Length: 5", request_id="big-head-1") + b"hello")
    assert reply.status == 431
    assert reply.refusal() == {
        "error": "The request line and headers are over 64 KiB, the most this proxy reads.",
        "code": "headers_too_large",
        "status": 431,
        "requestId": "big-head-1",
    }
    assert received_after(proxy, bpoc_state) == []


def test_a_request_line_over_64_kib_is_431(proxy: str, bpoc_state: BpocState) -> None:
    reply = refused(proxy, head(f"{UPLOAD}?q={'a' * LIMIT}", "Content-Length: 5") + b"hello")
    assert reply.status == 431
    assert received_after(proxy, bpoc_state) == []


def test_a_header_section_under_64_kib_is_forwarded(proxy: str, bpoc_state: BpocState) -> None:
    """The limit is the one documented, not a smaller one: 60 KiB of headers pass and reach BPOC."""
    pads = [f"X-Pad-{i}: {'a' * 1000}" for i in range(60)]
    replies = converse(proxy, head(UPLOAD, *pads, "Content-Length: 5") + b"hello", ["POST"])
    assert [r.status for r in replies] == [200]
    assert received_after(proxy, bpoc_state) == [UPLOAD]
    assert bpoc_state.requests[0].header("x-pad-59") == "a" * 1000


def test_a_header_that_never_ends_is_refused_before_it_ends(proxy: str, bpoc_state: BpocState) -> None:
    """A head still growing past the limit is refused while it grows: the proxy does not buffer it whole."""
    endless = head(UPLOAD)[:-2] + b"X-Endless: " + b"a" * (4 * 1024 * 1024)  # no line end, ever
    reply = refused(proxy, endless)
    assert reply.status == 431
    assert received_after(proxy, bpoc_state) == []


def test_pipelined_requests_are_each_attributed_to_their_own_caller(
    proxy: str, bpoc_state: BpocState
) -> None:
    """Two requests in one write, from two callers: the second's spoofed postedBy is overwritten with its own
    caller's recruiter ID, as for any request."""
    job = json.dumps({"title": "Engineer", "postedBy": ALICE_ID}).encode()
    first = (
        "GET /api/v1/jobs HTTP/1.1\r\nHost: proxy\r\n"
        f"Authorization: Bearer {token_for('alice@agency.example')}\r\n\r\n"
    ).encode()
    second = (
        head("/api/v1/jobs/create", "Content-Type: application/json", f"Content-Length: {len(job)}") + job
    )
    replies = converse(proxy, first + second, ["GET", "POST"])
    assert [r.status for r in replies] == [200, 201]
    assert received_after(proxy, bpoc_state) == ["/api/v1/jobs", "/api/v1/jobs/create"]
    created = bpoc_state.requests_to("/api/v1/jobs/create")
    assert [json.loads(r.body)["postedBy"] for r in created] == [BOB_ID]


def test_a_malformed_request_after_good_ones_is_answered_after_them(
    proxy: str, bpoc_state: BpocState
) -> None:
    """Pipelined: the good requests are answered in order, then the malformed one is refused, then the close."""
    good = head("/_sandbox/echo/first", method="GET") + head("/_sandbox/echo/second", method="GET")
    bad = head(UPLOAD, "Content Length: 5", request_id="late-1") + b"hello"
    replies = converse(proxy, good + bad, ["GET", "GET", "POST"], closes=True)
    assert [r.status for r in replies] == [200, 200, 400]
    assert [json.loads(r.body)["path"] for r in replies[:2]] == [
        "/_sandbox/echo/first",
        "/_sandbox/echo/second",
    ]
    assert replies[2].refusal()["requestId"] == "late-1"
    assert received_after(proxy, bpoc_state) == ["/_sandbox/echo/first", "/_sandbox/echo/second"]


def test_a_request_inside_a_body_stays_a_body(proxy: str, bpoc_state: BpocState) -> None:
    """A body that looks like a request is forwarded as the body of one request, never as a second request."""
    inner = head("/_sandbox/echo/smuggled", "Content-Length: 0", method="GET")
    replies = converse(proxy, head(UPLOAD, f"Content-Length: {len(inner)}") + inner, ["POST"])
    assert [r.status for r in replies] == [200]
    assert json.loads(replies[0].body)["size"] == len(inner)
    assert received_after(proxy, bpoc_state) == [UPLOAD]


def test_a_malformed_chunk_of_a_buffered_body_is_refused_and_not_forwarded(
    proxy: str, bpoc_state: BpocState
) -> None:
    """The head is fine and the pipeline is already reading the body when the framing breaks: still a JSON 400,
    and the half-read request never reaches BPOC."""
    broken = (
        head("/api/v1/jobs/create", "Content-Type: application/json", "Transfer-Encoding: chunked")
        + b"2\r\n{}\r\nzz\r\n"
    )
    reply = refused(proxy, broken)
    assert reply.status == 400
    assert received_after(proxy, bpoc_state) == []


def test_http_1_0_without_keep_alive_is_attributed_and_closed(proxy: str, bpoc_state: BpocState) -> None:
    job = json.dumps({"title": "Engineer", "postedBy": ALICE_ID}).encode()
    request = head(
        "/api/v1/jobs/create",
        "Content-Type: application/json",
        f"Content-Length: {len(job)}",
        version="HTTP/1.0",
    )
    replies = converse(proxy, request + job, ["POST"], closes=True)
    assert [r.status for r in replies] == [201]
    assert received_after(proxy, bpoc_state) == ["/api/v1/jobs/create"]
    assert json.loads(bpoc_state.requests[0].body)["postedBy"] == BOB_ID


def test_http_1_0_keep_alive_is_answered_once_and_closed(proxy: str, bpoc_state: BpocState) -> None:
    """HTTP/1.0 keep-alive is not kept: the first request is answered with Connection: close, and the one sent
    after it on the same connection is neither answered nor forwarded."""
    one = head("/_sandbox/echo/one", "Connection: keep-alive", method="GET", version="HTTP/1.0")
    two = head("/_sandbox/echo/two", "Connection: keep-alive", method="GET", version="HTTP/1.0")
    replies = converse(proxy, one + two, ["GET", "GET"], closes=True)
    assert [r.status for r in replies] == [200]
    assert replies[0].headers["connection"] == "close"
    assert received_after(proxy, bpoc_state) == ["/_sandbox/echo/one"]


def test_a_refusal_is_logged_once_as_the_pipeline_logs_a_request(
    proxy_process: Callable[..., ProxyProcess],
) -> None:
    """One JSON access line per refusal, with its request id and status; uvicorn's plain warning is gone."""
    proxy = proxy_process(PROXY_LOG_LEVEL="info")
    refused(proxy.url, head(UPLOAD, "Transfer-Encoding: xchunked", request_id="logged-1") + CHUNKED_BODY)
    refused(proxy.url, head(UPLOAD, "Content Length: 5", request_id="logged-2") + b"hello")
    proxy.process.terminate()
    proxy.process.wait(timeout=10)
    lines = [json.loads(line) for line in proxy.logs().splitlines() if line.startswith("{")]
    refusals = [line for line in lines if str(line.get("requestId", "")).startswith("logged-")]
    assert [(line["logger"], line["msg"], line["status"]) for line in refusals] == [
        ("proxy.access", f"POST {UPLOAD} 400", 400),
        ("proxy.access", f"POST {UPLOAD} 400", 400),
    ]
    assert "Invalid HTTP request" not in proxy.logs()


@pytest.mark.parametrize(
    ("headers", "version", "refused"),
    [
        pytest.param([(b"transfer-encoding", b"chunked")], "1.1", False, id="chunked"),
        pytest.param([(b"transfer-encoding", b" Chunked\t")], "1.1", False, id="chunked-any-case-and-space"),
        pytest.param([(b"content-length", b"5")], "1.1", False, id="content-length-only"),
        pytest.param([], "1.0", False, id="no-body"),
        pytest.param([(b"transfer-encoding", b"xchunked")], "1.1", True, id="xchunked"),
        pytest.param([(b"transfer-encoding", b"gzip, chunked")], "1.1", True, id="gzip-chunked"),
        pytest.param(
            [(b"transfer-encoding", b"chunked"), (b"transfer-encoding", b"chunked")],
            "1.1",
            True,
            id="two-headers",
        ),
        pytest.param(
            [(b"content-length", b"5"), (b"transfer-encoding", b"chunked")],
            "1.1",
            True,
            id="with-content-length",
        ),
        pytest.param([(b"transfer-encoding", b"chunked")], "1.0", True, id="http-1.0"),
    ],
)
def test_the_transfer_coding_rule(headers: list[tuple[bytes, bytes]], version: str, refused: bool) -> None:
    assert (transfer_coding_error(headers, version) is not None) is refused


@pytest.mark.parametrize(
    "coding",
    [
        pytest.param(("Transfer-Encoding: gzip, chunked",), id="gzip-chunked"),
        pytest.param(("Transfer-Encoding: gzip", "Transfer-Encoding: chunked"), id="two-headers"),
    ],
)
def test_served_by_another_server_the_pipeline_refuses_other_codings(
    bpoc_url: str, bpoc_state: BpocState, coding: tuple[str, ...]
) -> None:
    """uvicorn's own protocol (not the proxy's) lets these through to the app; the pipeline refuses them itself."""
    with serve_in_thread(create_app(Settings.from_environ(base_env(bpoc_url)))) as url:
        bpoc_state.reset_requests()
        replies = converse(url, head(UPLOAD, *coding) + CHUNKED_BODY, ["POST"])
        assert [r.status for r in replies] == [400]
        assert replies[0].refusal_body()["error"].startswith("Transfer-Encoding must be exactly chunked")
        assert received_after(url, bpoc_state) == []


def test_a_refused_upload_gets_its_refusal_not_a_reset(proxy: str, bpoc_state: BpocState) -> None:
    """The client is still sending a large body when the proxy refuses the head: the proxy reads and drops the
    rest before closing, so the client's send completes and it reads the refusal, not a connection reset."""
    reply = refused(proxy, head(UPLOAD, "Transfer-Encoding: xchunked") + b"x" * (32 * 1024 * 1024))
    assert reply.status == 400
    assert received_after(proxy, bpoc_state) == []


def test_a_refused_head_request_gets_headers_only(proxy: str) -> None:
    """A refusal answers HEAD as HEAD is answered: the refusal's headers, and not one byte after them."""
    address = urlsplit(proxy)
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(head(UPLOAD, "Transfer-Encoding: xchunked", method="HEAD"))
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    status_line, _, rest = received.partition(b"\r\n")
    headers, _, after = rest.partition(b"\r\n\r\n")
    assert status_line == b"HTTP/1.1 400 Bad Request"
    assert b"x-request-id: framing-1" in headers.split(b"\r\n")
    assert after == b""


def test_an_http2_preface_is_refused_in_words_a_client_understands(proxy: str, bpoc_state: BpocState) -> None:
    """An HTTP/2 client (prior knowledge) gets the JSON refusal naming HTTP/1.1, and nothing reaches BPOC."""
    reply = refused(proxy, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert (
        reply.refusal()["error"] == "The proxy speaks HTTP/1.1; an HTTP/2 connection preface is not accepted."
    )
    assert received_after(proxy, bpoc_state) == []
