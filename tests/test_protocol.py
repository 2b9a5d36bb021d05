"""The proxy's HTTP/1.1 server protocol (uvicorn's, with the proxy's framing rules and a response head held until
the body's first write): nothing is ever held back for longer than it takes the body to start, and the uvicorn
internals it builds on are the ones it was written against."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import socket
import textwrap
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from proxy.app import create_app
from proxy.protocol import ProxyHttpProtocol
from proxy.sandbox.seed import BpocState
from proxy.sandbox.server import serve_in_thread
from proxy.settings import Settings

from .conftest import auth, base_env, token_for


def test_a_held_body_does_not_hold_back_the_head(
    proxy_url: str, client: httpx.Client, bpoc_state: BpocState
) -> None:
    """The head of a streamed response reaches the client while BPOC still holds the body back."""
    try:
        with client.stream("GET", proxy_url + "/_sandbox/gated-body", headers=auth()) as response:
            # Here the head has arrived and the gate is still shut: the head did not wait for the body.
            assert response.status_code == 200
            assert not bpoc_state.body_gate.is_set()
            bpoc_state.body_gate.set()
            assert response.read() == b'{"released": true}'
    finally:
        bpoc_state.body_gate.set()  # a failed test must not leave the sandbox's response waiting


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


# What proxy/protocol.py relies on in uvicorn's httptools protocol: the methods it overrides (their parameters),
# the ones it calls, the attributes it reads or sets, and the one method it replaces with a copy of its own.
OVERRIDDEN = {
    "connection_made": ["self", "transport"],  # only for the HeadHoldingTransport
    "data_received": ["self", "data"],
    "on_message_begin": ["self"],
    "on_headers_complete": ["self"],
    "on_response_complete": ["self"],
    "_unsupported_upgrade_warning": ["self"],
}
CALLED = {
    "_unset_keepalive_if_required": ["self"],
    "_should_upgrade": ["self"],
    "handle_websocket_upgrade": ["self"],
}
PROTOCOL_ATTRIBUTES = [
    "loop",
    "parser",
    "transport",
    "flow",
    "cycle",
    "pipeline",
    "server_state",
    "headers",
    "url",
]
CYCLE_ATTRIBUTES = ["more_body", "response_started", "response_complete", "disconnected", "message_event"]
# uvicorn 0.54's HttpToolsProtocol.data_received, which ProxyHttpProtocol replaces whole (sha256 of its source).
REPLACED = {"data_received": "02c2572f1df559070eba7f206a3f7e251782f5af4aaae194fc1ffb67f24c3873"}
# ProxyHttpProtocol's own methods, which override nothing.
OWN = {"_framing_error", "_head_size", "_refuse", "_unqueue", "_send_refusal", "_linger", "_method_and_path"}


def uvicorn_drift() -> list[str]:
    """Each way the installed uvicorn differs from what proxy/protocol.py was written against, as a sentence."""
    changes: list[tuple[str, str]] = []  # (how, what)
    for name, parameters in {**OVERRIDDEN, **CALLED}.items():
        method = HttpToolsProtocol.__dict__.get(name)
        if method is None:
            changes.append(("has no", f"HttpToolsProtocol.{name}"))
        elif list(inspect.signature(method).parameters) != parameters:
            changes.append(("changed the parameters of", f"HttpToolsProtocol.{name}"))
        elif name in REPLACED and _digest(method) != REPLACED[name]:
            changes.append(("changed the code of", f"HttpToolsProtocol.{name}"))
    protocol, cycle = _instances()
    for instance, names in [(protocol, PROTOCOL_ATTRIBUTES), (cycle, CYCLE_ATTRIBUTES)]:
        kind = type(instance).__name__
        changes.extend(
            ("has no attribute", f"{kind}.{name}") for name in names if not hasattr(instance, name)
        )
    if not hasattr(FlowControl, "resume_reading"):
        changes.append(("has no", "FlowControl.resume_reading"))
    if not hasattr(ServerState(), "default_headers"):
        changes.append(("has no attribute", "ServerState.default_headers"))
    return [
        f"uvicorn {uvicorn.__version__} {how} {what}, which proxy/protocol.py "
        f"{'overrides' if what.rpartition('.')[2] in OVERRIDDEN else 'relies on'}; "
        "check the new internals before raising the pin"
        for how, what in changes
    ]


def _digest(method: Callable[..., object]) -> str:
    return hashlib.sha256(textwrap.dedent(inspect.getsource(method)).encode()).hexdigest()


def _instances() -> tuple[HttpToolsProtocol, RequestResponseCycle]:
    """A protocol as uvicorn builds one for a connection, after a request began, and a request's cycle."""

    async def app(scope: object, receive: object, send: object) -> None:
        pass

    loop = asyncio.new_event_loop()
    try:
        protocol = HttpToolsProtocol(uvicorn.Config(app), ServerState(), {}, _loop=loop)
        protocol.on_message_begin()
        cycle = RequestResponseCycle(
            scope=protocol.scope,
            transport=protocol.transport,
            flow=protocol.flow,
            logger=protocol.logger,
            access_logger=protocol.access_logger,
            access_log=False,
            default_headers=[],
            message_event=asyncio.Event(),
            expect_100_continue=False,
            keep_alive=True,
            on_response=lambda: None,
        )
    finally:
        loop.close()
    return protocol, cycle


def test_the_uvicorn_internals_the_protocol_relies_on_are_unchanged() -> None:
    """uvicorn is pinned below 0.55 in pyproject.toml; before raising the pin, this says what moved."""
    assert uvicorn_drift() == []


def test_every_method_the_protocol_overrides_is_checked() -> None:
    """A new override in ProxyHttpProtocol is listed in OVERRIDDEN (or OWN), so that a rename in uvicorn, which
    would leave the override silently unused, is caught."""
    defined = {name for name, value in vars(ProxyHttpProtocol).items() if inspect.isfunction(value)}
    assert defined - OWN - set(OVERRIDDEN) == set(), (
        "list the new override in OVERRIDDEN, or the helper in OWN"
    )


@pytest.mark.parametrize(
    ("change", "sentence"),
    [
        pytest.param(
            lambda monkeypatch: monkeypatch.delattr(HttpToolsProtocol, "on_response_complete"),
            "has no HttpToolsProtocol.on_response_complete, which proxy/protocol.py overrides; check the new "
            "internals before raising the pin",
            id="renamed",
        ),
        pytest.param(
            lambda monkeypatch: monkeypatch.setattr(
                HttpToolsProtocol, "data_received", lambda self, data: None
            ),
            "changed the code of HttpToolsProtocol.data_received, which proxy/protocol.py overrides; check the "
            "new internals before raising the pin",
            id="rewritten",
        ),
        pytest.param(
            lambda monkeypatch: monkeypatch.setattr(
                HttpToolsProtocol, "handle_websocket_upgrade", lambda s, x: 0
            ),
            "changed the parameters of HttpToolsProtocol.handle_websocket_upgrade, which proxy/protocol.py relies "
            "on; check the new internals before raising the pin",
            id="new-signature",
        ),
    ],
)
def test_a_change_in_uvicorn_is_named_in_one_sentence(monkeypatch, change, sentence: str) -> None:
    change(monkeypatch)
    assert uvicorn_drift() == [f"uvicorn {uvicorn.__version__} {sentence}"]
