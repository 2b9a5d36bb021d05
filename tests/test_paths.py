"""normalise_path: every spelling of a path maps to the one BPOC serves, or is refused."""

from __future__ import annotations

import pytest

from proxy.errors import BadRequest, MethodNotAllowed
from proxy.paths import METHOD_OVERRIDE_HEADERS, check_method, check_method_override, normalise_path


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(b"/", "/", id="root"),
        pytest.param(b"/api/v1/jobs/create", "/api/v1/jobs/create", id="canonical"),
        pytest.param(b"/api/v1/jobs/create/", "/api/v1/jobs/create", id="trailing-slash"),
        pytest.param(b"/api/v1/jobs/create//", "/api/v1/jobs/create", id="trailing-double-slash"),
        pytest.param(b"//api//v1///jobs/create", "/api/v1/jobs/create", id="doubled-slashes"),
        pytest.param(b"/api/v1/jobs/%63reate", "/api/v1/jobs/create", id="encoded-letter"),
        pytest.param(b"/api/v1/jobs/%63%72%65%61%74%65", "/api/v1/jobs/create", id="fully-encoded-segment"),
        pytest.param(b"/%61pi/v1/jobs/create", "/api/v1/jobs/create", id="encoded-first-letter"),
        pytest.param(b"/api/v1/jobs/cr%45ate", "/api/v1/jobs/crEate", id="encoded-uppercase-letter-kept"),
        pytest.param(b"/api/v1/x%2D%2E%5F%7E%30", "/api/v1/x-._~0", id="all-unreserved-kinds"),
        pytest.param(b"/api/v1/./jobs/create", "/api/v1/jobs/create", id="dot-segment"),
        pytest.param(b"/api/v1/x/../jobs/create", "/api/v1/jobs/create", id="dot-dot"),
        pytest.param(b"/api/v1/x/%2e%2e/jobs/create", "/api/v1/jobs/create", id="encoded-dot-dot"),
        pytest.param(b"/api/v1/x/%2E./jobs/create", "/api/v1/jobs/create", id="half-encoded-dot-dot"),
        pytest.param(b"/api/v1/jobs/create/.", "/api/v1/jobs/create", id="trailing-dot"),
        pytest.param(b"/api/v1/jobs/create/x/..", "/api/v1/jobs/create", id="trailing-dot-dot"),
        pytest.param(b"/api/v1/jobs/%2e", "/api/v1/jobs", id="encoded-single-dot"),
        pytest.param(b"/a/..", "/", id="back-to-root"),
        pytest.param(b"/api/v1/.well-known", "/api/v1/.well-known", id="dot-prefixed-name-kept"),
        pytest.param(b"/api/v1/jobs/a..b", "/api/v1/jobs/a..b", id="dots-inside-segment-kept"),
        pytest.param(b"/api/v1/jobs/%c3%a9", "/api/v1/jobs/%C3%A9", id="reserved-escape-hex-uppercased"),
        pytest.param(b"/api/v1/jobs/a%20b", "/api/v1/jobs/a%20b", id="space-escape-kept"),
        pytest.param(b"/api/v1/jobs/%3b", "/api/v1/jobs/%3B", id="encoded-semicolon-stays-encoded"),
        pytest.param(b"/api/v1/jobs/%25", "/api/v1/jobs/%25", id="encoded-percent-not-decoded-twice"),
        pytest.param(
            b"/api/v1/jobs/%2563reate", "/api/v1/jobs/%2563reate", id="double-encoding-decoded-once"
        ),
        pytest.param(b"/API/V1/Jobs/Create", "/API/V1/Jobs/Create", id="case-kept"),
        pytest.param(b"/api/v1/jobs/a:b@c!$&'()*+,=", "/api/v1/jobs/a:b@c!$&'()*+,=", id="sub-delims-kept"),
    ],
)
def test_normalise_path(raw: bytes, expected: str) -> None:
    """The path is put in its one canonical form."""
    assert normalise_path(raw) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param(b"/api/v1/jobs/%zz", "invalid percent-escape '%zz'", id="bad-hex"),
        pytest.param(b"/api/v1/jobs/%6", "invalid percent-escape '%6'", id="truncated-escape"),
        pytest.param(b"/api/v1/jobs/%", "invalid percent-escape '%'", id="lone-percent"),
        pytest.param(b"/api/v1/jobs%2Fcreate", "encoded slash (%2F)", id="encoded-slash"),
        pytest.param(b"/api/v1/jobs%2fcreate", "encoded slash (%2f)", id="encoded-slash-lowercase"),
        pytest.param(b"/api/v1/jobs%5Ccreate", "encoded backslash (%5C)", id="encoded-backslash"),
        pytest.param(b"/api/v1/jobs/create%00", "encoded NUL (%00)", id="encoded-nul"),
        pytest.param(b"/api/v1/jobs/create%0a", "encoded control character", id="encoded-newline"),
        pytest.param(b"/api/v1/jobs/create%7F", "encoded control character", id="encoded-del"),
        pytest.param(b"/api/v1/jobs/create\x00", "control character", id="raw-nul"),
        pytest.param(b"/api/v1/jobs/create\t", "control character", id="raw-tab"),
        pytest.param(b"/api/v1/jobs\\create", "backslash", id="raw-backslash"),
        pytest.param(b"/api/v1/jobs/create;x=1", "';'", id="path-parameter"),
        pytest.param(b"/api/v1/jobs/create;", "';'", id="bare-semicolon"),
        pytest.param(b"/..", "above the root", id="dot-dot-at-root"),
        pytest.param(b"/api/../../etc", "above the root", id="climbs-above-root"),
        pytest.param(b"/%2e%2e/api", "above the root", id="encoded-climb"),
        pytest.param(b"api/v1/jobs/create", "must start with '/'", id="relative"),
        pytest.param(b"", "must start with '/'", id="empty"),
        pytest.param(b"*", "must start with '/'", id="asterisk-form"),
        pytest.param(b"/api/v1/jobs/cr\xc3\xa9ate", "non-ASCII", id="raw-utf8"),
        pytest.param(b"/api/v1/jobs/\xff", "non-ASCII", id="raw-high-byte"),
    ],
)
def test_normalise_path_refuses(raw: bytes, message: str) -> None:
    """What cannot be normalised safely is a 400 with one readable sentence."""
    with pytest.raises(BadRequest) as caught:
        normalise_path(raw)
    assert message in caught.value.message
    assert caught.value.message.endswith(".")


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"/", id="root"),
        pytest.param(b"/api/v1/jobs/create", id="plain"),
        pytest.param(b"/api/v1/jobs/%2e%2e/x//y/", id="needs-work"),
        pytest.param(b"/api/v1/jobs/%c3%a9/", id="escape"),
    ],
)
def test_normalise_path_is_idempotent(raw: bytes) -> None:
    """A normalised path normalises to itself, so a proxy in front of the proxy changes nothing."""
    once = normalise_path(raw)
    assert normalise_path(once.encode("ascii")) == once


@pytest.mark.parametrize(
    "names",
    [
        pytest.param(["x-http-method-override"], id="x-http-method-override"),
        pytest.param(["X-HTTP-Method"], id="x-http-method-mixed-case"),
        pytest.param(["content-type", "x-method-override"], id="x-method-override-among-others"),
    ],
)
def test_method_override_refused(names: list[str]) -> None:
    """A request carrying a method override header is refused."""
    with pytest.raises(BadRequest, match="real HTTP method"):
        check_method_override(names)


def test_method_override_absent_is_fine() -> None:
    """Ordinary headers pass."""
    check_method_override(["content-type", "authorization", "x-http-method-overrides"])


def test_method_override_headers_are_lowercase() -> None:
    """The exported names are lowercase, as ASGI header names are."""
    assert all(name == name.lower() for name in METHOD_OVERRIDE_HEADERS)


@pytest.mark.parametrize("method", ["TRACE", "CONNECT", "trace"])
def test_trace_and_connect_are_refused(method: str) -> None:
    """TRACE (BPOC would echo the agency key back) and CONNECT (a tunnel) are 405, with the methods forwarded."""
    with pytest.raises(MethodNotAllowed) as caught:
        check_method(method)
    assert caught.value.status_code == 405
    assert caught.value.headers["Allow"] == "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND"])
def test_other_methods_pass(method: str) -> None:
    """Every other method is forwarded as it is."""
    check_method(method)
