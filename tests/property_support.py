"""What the property-based tests (``tests/test_properties_*.py``) share: a recording upstream, the proxy in front
of it, raw HTTP/1.1 over a socket, and hypothesis settings.

The upstream records every request it receives and answers 200 to any path (a JSON ``{"recorded": n}``), so
what the invariants check is the proxy's behaviour alone: the BPOC sandbox validates bodies and would refuse
some with a 4xx of its own. It also serves BPOC's recruiter directory (``GET /api/v1/agency/recruiters``) and,
when given one, the portal's JWKS, which are the proxy's own calls and are recorded apart.

Each test request carries its own ``X-Request-Id`` (the proxy keeps a client's id and forwards it), so what the
upstream received for that request is found by id, and a request that reached it under another id shows up as
one too many.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import yaml
from hypothesis import settings
from hypothesis import strategies as st

from proxy.app import create_app
from proxy.protocol import SERVER_OPTIONS
from proxy.recruiter_api import DIRECTORY_PATH
from proxy.sandbox.server import serve_in_thread
from proxy.settings import Settings

from .conftest import API_KEY, JWT_SECRET, ROOT

#: PROPERTY_SCALE=10 runs every property with ten times the examples, from a random seed (an exploratory run);
#: by default the examples are derived from each test's source, so the suite is the same on every run.
_SCALE = float(os.environ.get("PROPERTY_SCALE", "1"))


def property_settings(max_examples: int) -> settings:
    """Settings for one property: ``max_examples`` (scaled by PROPERTY_SCALE), no deadline (the servers run in
    threads on a shared machine; time is never part of an invariant), deterministic unless exploring."""
    scaled = settings(max_examples=max(1, int(max_examples * _SCALE)), deadline=None, print_blob=True)
    if _SCALE != 1:
        return scaled  # random seeds, and the example database in .hypothesis/ (git-ignored)
    return settings(scaled, derandomize=True, database=None)


def weighted(draw: st.DrawFn, *options: tuple[int, Any]) -> Any:
    """One of ``options`` (weight, value), drawn so that hypothesis can shrink towards the first."""
    pick = draw(st.integers(0, sum(weight for weight, _ in options) - 1))
    for weight, value in options:
        if pick < weight:
            return value
        pick -= weight
    raise AssertionError("unreachable")


def rarely(draw: st.DrawFn, one_in: int) -> bool:
    """True about once in ``one_in`` draws (False is what hypothesis shrinks towards)."""
    return bool(weighted(draw, (one_in - 1, False), (1, True)))


# --- The recording upstream ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One request as the upstream's ASGI app saw it."""

    method: str
    raw_path: bytes
    query: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n == name), None)

    def headers_named(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n == name]

    @property
    def request_id(self) -> str | None:
        value = self.header(b"x-request-id")
        return value.decode("latin-1") if value is not None else None


@dataclass(frozen=True)
class DirectoryEntry:
    id: str
    email: str
    role: str
    is_active: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "email": self.email, "role": self.role, "is_active": self.is_active}


@dataclass
class RecordingUpstream:
    """An ASGI app that records every request and answers 200 to any path (see the module docstring)."""

    directory: tuple[DirectoryEntry, ...] = ()
    jwks: Mapping[str, Any] | None = None
    jwks_path: str = "/.well-known/jwks.json"
    _received: list[Received] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # hypothesis prints the fixtures of a failure
        printer.text(f"RecordingUpstream({self.count()} received)")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()  # lifespan.startup
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        headers = tuple((bytes(n), bytes(v)) for n, v in scope["headers"])
        received = Received(scope["method"], scope["raw_path"], scope["query_string"], headers, body)
        answer = self._own_answer(received)
        if answer is None:
            with self._lock:
                self._received.append(received)
                answer = {"recorded": len(self._received)}
        payload, content_type = json.dumps(answer).encode(), b"application/json"
        if received.method == "TRACE":  # RFC 9110 section 9.3.8: the request as received, headers and all
            payload, content_type = _echo(received), b"message/http"
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", content_type), (b"content-length", b"%d" % len(payload))],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    def _own_answer(self, received: Received) -> dict[str, Any] | None:
        """The proxy's own calls (no X-Request-Id: they are not forwarded requests): directory and JWKS."""
        if received.method != "GET" or received.request_id is not None:
            return None
        path = received.raw_path.decode("latin-1")
        if path == DIRECTORY_PATH:
            return {"recruiters": [entry.to_json() for entry in self.directory]}
        if self.jwks is not None and path == self.jwks_path:
            return dict(self.jwks)
        return None

    def received_for(self, request_id: str) -> list[Received]:
        with self._lock:
            return [r for r in self._received if r.request_id == request_id]

    def count(self) -> int:
        with self._lock:
            return len(self._received)


def _echo(received: Received) -> bytes:
    target = received.raw_path + (b"?" + received.query if received.query else b"")
    lines = [received.method.encode() + b" " + target + b" HTTP/1.1"]
    lines += [name + b": " + value for name, value in received.headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


@contextmanager
def serve_upstream(upstream: RecordingUpstream) -> Iterator[str]:
    with serve_in_thread(upstream) as url:
        yield url


def proxy_env(upstream_url: str, **overrides: str) -> dict[str, str]:
    """The proxy's settings in front of the recording upstream: shipped rules, HS256 sessions, quiet logs."""
    env = {
        "BPOC_BASE_URL": upstream_url,
        "BPOC_API_KEY": API_KEY,
        "PORTAL_JWT_SECRET": JWT_SECRET,
        "PROXY_RULES": str(ROOT / "rules.yaml"),
        "RECRUITER_SYNC_INTERVAL": "0",
        "PROXY_UPSTREAM_TIMEOUT": "30",
        "PROXY_ACCESS_LOG": "false",
        "PROXY_ADMIN_PORT": "0",
    }
    env.update(overrides)
    return env


@contextmanager
def serve_proxy(env: Mapping[str, str]) -> Iterator[str]:
    """The proxy on uvicorn with its production options, in a thread (as conftest's ``start_proxy`` does)."""
    app = create_app(Settings.from_environ(dict(env)))
    with serve_in_thread(app, **SERVER_OPTIONS) as url:
        yield url


def new_request_id() -> str:
    return uuid.uuid4().hex


# --- Raw HTTP/1.1 over a socket -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name.lower()), None)

    def json(self) -> Any:
        return json.loads(self.body)


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def raw_exchange(url: str, request: bytes, *, timeout: float = 30.0) -> Answer:
    """Send ``request`` exactly as given on a new connection and read one response (httpx and http.client
    would normalise a path or refuse a method; this does not)."""
    with socket.create_connection(address(url), timeout=timeout) as sock:
        sock.sendall(request)
        # The answer to a HEAD has no body whatever its Content-Length says.
        response = http.client.HTTPResponse(sock, method=request.split(b" ", 1)[0].decode("latin-1"))
        try:
            response.begin()
            body = response.read()
        finally:
            response.close()
        return Answer(response.status, response.getheaders(), body)


def build_request(
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    body: bytes | None = None,
    *,
    chunks: list[bytes] | None = None,
) -> bytes:
    """A request on the wire: ``target`` as given (latin-1), Connection: close, and the body with its
    Content-Length, or ``chunks`` with Transfer-Encoding: chunked."""
    lines = [f"{method} {target} HTTP/1.1", "Host: proxy.test", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers]
    if chunks is not None:
        lines.append("Transfer-Encoding: chunked")
        body = b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in chunks if c) + b"0\r\n\r\n"
    elif body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def is_proxy_refusal(answer: Answer, request_id: str | None) -> bool:
    """Whether a 4xx is the proxy's own JSON refusal of this request (not an answer passed through); a
    ``request_id`` of None accepts any id (a request line refused before its headers were read)."""
    try:
        payload = answer.json()
    except ValueError:
        return False
    return (
        isinstance(payload, dict)
        and payload.get("requestId") == (request_id or payload.get("requestId"))
        and isinstance(payload.get("requestId"), str)
        and payload.get("status") == answer.status
        and isinstance(payload.get("error"), str)
        and isinstance(payload.get("code"), str)
    )


# --- The rules, read independently of proxy/rules_file.py ----------------------------------------------------

MODES = ("set", "default", "enforce", "reference")
PATH_PARAMETER = "3f0b6c2e-8a9d-4f5e-9b1a-2c3d4e5f6a7b"


@dataclass(frozen=True)
class FieldSpec:
    path: tuple[str, ...]
    mode: str
    source: str  # recruiter, user_id or email


@dataclass(frozen=True)
class RuleSpec:
    method: str
    template: str
    fields: tuple[FieldSpec, ...]
    roles: frozenset[str]

    @property
    def segments(self) -> list[str]:
        return self.template.strip("/").split("/")

    def path_for(self) -> str:
        """A concrete path: each ``{name}`` replaced by a UUID."""
        return "/" + "/".join(PATH_PARAMETER if s.startswith("{") else s for s in self.segments)


def read_rules(text: str) -> tuple[list[RuleSpec], list[RuleSpec]]:
    """The rules (with fields) and the routes (roles only) of a rules file, read with yaml.safe_load alone."""
    document = yaml.safe_load(text)

    def spec(entry: Mapping[str, Any]) -> RuleSpec:
        method, template = entry["match"].split(" ", 1)
        fields = tuple(
            FieldSpec(tuple(name.split(".")), mode, source)
            for mode in MODES
            for name, source in (entry.get(mode) or {}).items()
        )
        return RuleSpec(method.upper(), template.strip(), fields, frozenset(entry.get("roles") or ()))

    return [spec(e) for e in document.get("rules") or []], [spec(e) for e in document.get("routes") or []]


# --- Strict JSON, the reference the forwarded bodies are read with ------------------------------------------


@dataclass(frozen=True)
class Num:
    """A JSON number as spelled, so "1.10" and "1.1" differ (the proxy promises numbers pass as sent)."""

    text: str


class NotStrictJson(ValueError):
    pass


def strict_loads(data: bytes) -> Any:
    """Parse ``data`` as JSON the way no two parsers can disagree on: UTF-8 without a BOM, no duplicate keys,
    no NaN or Infinity, no unpaired surrogate, numbers kept as spelled. NotStrictJson otherwise."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotStrictJson(f"not UTF-8: {exc}") from None
    # A body nested as deep as the proxy accepts must be readable here too, from deeper in the stack. The limit
    # is the process's, but the proxy's threads are idle meanwhile: the exchange is over when this reads it.
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20_000))
    try:
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constants,
            parse_int=Num,
            parse_float=Num,
        )
    except json.JSONDecodeError as exc:
        raise NotStrictJson(f"not JSON: {exc}") from None
    finally:
        sys.setrecursionlimit(limit)
    for string in _strings(value):
        try:
            string.encode("utf-8")
        except UnicodeEncodeError:
            raise NotStrictJson("an unpaired surrogate") from None
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise NotStrictJson("a duplicate key")
    return dict(pairs)


def _no_constants(name: str) -> Any:
    raise NotStrictJson(f"the constant {name}")


def _strings(value: Any) -> Iterator[str]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            yield from item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
