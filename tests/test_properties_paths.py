"""Property: no spelling of a path or method gets a request past a rule.

Requests are drawn against every entry of the shipped ``rules.yaml`` (rules and role-gated routes) and a few
other paths, then spelled differently: percent-escapes of unreserved and reserved characters (hex digits in
either case), dot segments (also escaped), doubled and trailing slashes, letter case, ``;`` parameters,
backslashes, absolute-form targets, query strings, other methods (also in lower case) and method-override
headers. They go out as raw request lines over a socket (httpx and http.client would normalise the path), to the
proxy on uvicorn in front of the recording upstream, with a body that names another recruiter in every
attribution field of the file (or in none).

The reference, written here independently of ``proxy/paths.py``: RFC 3986 section 6 normalisation of the path
(hex digits of escapes in upper case, escapes of unreserved characters decoded, dot segments removed by the
algorithm of section 5.2.4), slashes collapsed, a trailing slash dropped, compared without regard to case; and,
to be conservative, the readings some servers make besides: ``;`` parameters stripped from segments, ``\\`` read
as ``/``, slashes collapsed before dot segments are resolved. A path is a rule's route if any reading matches the
rule's template.

For every request:

* never a 5xx; a request the upstream did not receive was refused with a 4xx;
* a request the upstream received, whose path (any reading) is a rule's route and whose method (or a method
  named by an override header it carries) is the rule's, carries the caller's values in the rule's fields;
  one on a route whose roles the caller lacks never arrives at all;
* what the upstream received is the resource the client asked for: its path is one of the readings of the
  client's path, and the query string is the client's, byte for byte.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from .conftest import API_KEY, ROOT, token_for
from .property_support import (
    DirectoryEntry,
    NotStrictJson,
    Received,
    RecordingUpstream,
    RuleSpec,
    build_request,
    is_proxy_refusal,
    new_request_id,
    property_settings,
    proxy_env,
    rarely,
    raw_exchange,
    read_rules,
    serve_proxy,
    serve_upstream,
    strict_loads,
    weighted,
)

RULES, ROUTES = read_rules((ROOT / "rules.yaml").read_text())
ENTRIES = [*RULES, *ROUTES]
#: Paths no entry names, some of them prefixes or neighbours of rule routes.
OTHER_TEMPLATES = [
    "/api/v1/jobs",
    "/api/v1/jobs/{id}",
    "/api/v1/jobs/create/extra",
    "/api/v1/applications/{id}",
    "/api/v1/interviews/{id}",
    "/api/v1/onboarding/{taskId}/notes",
    "/api",
    "/",
]
FIELD_NAMES = sorted({field.path[0] for rule in RULES for field in rule.fields})

CALLER_ID = "7ac1c2c3-d4e5-4f60-8172-839405a6b7c8"
CALLER_ROLE = "manager"  # may approve jobs; may not create recruiters or invite (admin only)
TOKEN = token_for("mia@agency.example", recruiter_id=CALLER_ID, role=CALLER_ROLE)
COLLEAGUE_ID = "e1e2e3e4-f5f6-4a77-8b88-99aa0bb1cc2d"
OUTSIDER_ID = "0badc0de-0000-4000-8000-000000000001"
DIRECTORY = (DirectoryEntry(COLLEAGUE_ID, "erin@agency.example", "recruiter"),)
ACTIVE_IDS = frozenset({COLLEAGUE_ID})

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
ODD_METHODS = ["post", "Post", "PROPFIND", "PURGE", "TRACE", "CONNECT", "FOO", "POST "]
OVERRIDE_HEADERS = ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"]


@dataclass(frozen=True)
class Setup:
    upstream: RecordingUpstream
    proxy: str


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    upstream = RecordingUpstream(directory=DIRECTORY)
    with serve_upstream(upstream) as upstream_url, serve_proxy(proxy_env(upstream_url)) as proxy:
        yield Setup(upstream, proxy)


# --- The reference normaliser ---------------------------------------------------------------------------------

UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")  # RFC 3986 section 2.3
HEX = frozenset(string.hexdigits)


def normalise_escapes(path: str) -> str:
    """RFC 3986 sections 6.2.2.1 and 6.2.2.2: escapes of unreserved characters decoded, other escapes' hex
    digits in upper case; anything that is not a valid escape left as it is."""
    out: list[str] = []
    i = 0
    while i < len(path):
        if path[i] == "%" and len(path) >= i + 3 and set(path[i + 1 : i + 3]) <= HEX:
            char = chr(int(path[i + 1 : i + 3], 16))
            out.append(char if char in UNRESERVED else "%" + path[i + 1 : i + 3].upper())
            i += 3
        else:
            out.append(path[i])
            i += 1
    return "".join(out)


def remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4, step by step as the RFC writes it."""
    source, output = path, ""
    while source:
        if source.startswith("../"):
            source = source[3:]
        elif source.startswith("./"):
            source = source[2:]
        elif source.startswith("/./"):
            source = "/" + source[3:]
        elif source == "/.":
            source = "/"
        elif source.startswith("/../") or source == "/..":
            source = "/" + source[4:] if source.startswith("/../") else "/"
            output = output[: output.rfind("/")] if "/" in output else ""
        elif source in (".", ".."):
            source = ""
        else:
            end = source.find("/", 1 if source.startswith("/") else 0)
            segment = source if end == -1 else source[:end]
            output += segment
            source = source[len(segment) :]
    return output


def collapse_slashes(path: str) -> str:
    path = re.sub("/{2,}", "/", path)
    return path.rstrip("/") or "/"


def readings(path: str) -> set[str]:
    """Every way a server might read ``path`` (see the module docstring), each normalised."""
    found: set[str] = set()
    for variant in {path, path.replace("\\", "/")}:
        for text in {variant, re.sub(r";[^/]*", "", variant)}:
            escaped = normalise_escapes(text)
            found.add(collapse_slashes(remove_dot_segments(escaped)))
            found.add(collapse_slashes(remove_dot_segments(collapse_slashes(escaped))))
    return found


def strict_reading(path: str) -> set[str]:
    """The readings of a path without the conservative extras: dots then slashes, or slashes then dots."""
    escaped = normalise_escapes(path)
    return {
        collapse_slashes(remove_dot_segments(escaped)),
        collapse_slashes(remove_dot_segments(collapse_slashes(escaped))),
    }


def matches(template: str, path: str) -> bool:
    """Whether a normalised path is the template's route: literal segments in any case, {name} one segment."""
    wanted, got = template.strip("/").split("/"), path.strip("/").split("/")
    return len(wanted) == len(got) and all(
        (w.startswith("{") and g != "") or w.lower() == g.lower() for w, g in zip(wanted, got, strict=True)
    )


# --- Drawing requests -----------------------------------------------------------------------------------------

SEGMENT_TEXT = st.text(
    alphabet=string.ascii_letters + string.digits + "-._~!$&'()*+,=:@", min_size=1, max_size=8
)
DOT_SEGMENTS = [".", "%2e", "%2E", "x/..", "x/%2e%2e", "X/.%2E", "..", "%2e%2e", "..%2f", "."]
ODD_PIECES = [
    "%2F",
    "%2f",
    "%5C",
    "\\",
    "%00",
    "%25",
    "%2563",
    "%zz",
    "%",
    "%3B",
    "é",
    "%7e",
    "~",
    "%20",
    "+",
]


@dataclass(frozen=True)
class PathCase:
    method: str
    target: str  # the request-target as sent
    overrides: tuple[tuple[str, str], ...]
    spoof: str | None  # the value the body gives every attribution field, or None for none

    @property
    def origin_path(self) -> str:
        """The path part of the target as the client sent it (absolute-form taken apart)."""
        target = self.target.split("#", 1)[0]
        if target.startswith("http://"):
            target = urlsplit(target).path or "/"
        return target.split("?", 1)[0]

    @property
    def query(self) -> bytes:
        target = self.target.split("#", 1)[0]
        return target.split("?", 1)[1].encode("latin-1") if "?" in target else b""


def _segment_for(template_segment: str, draw: st.DrawFn) -> str:
    if template_segment.startswith("{"):
        segment: str = weighted(
            draw, (6, str(draw(st.uuids()))), (2, draw(SEGMENT_TEXT)), (1, "create"), (1, "approve")
        )
        return segment
    return template_segment


def _spell(segment: str, draw: st.DrawFn) -> str:
    """The same segment, spelled differently: letter case, and escapes of some characters."""
    if rarely(draw, 3):
        flips = draw(st.lists(st.booleans(), min_size=len(segment), max_size=len(segment)))
        segment = "".join(c.swapcase() if f else c for c, f in zip(segment, flips, strict=True))
    if rarely(draw, 3):
        escape = draw(st.lists(st.booleans(), min_size=len(segment), max_size=len(segment)))
        lower = draw(st.booleans())
        segment = "".join(
            (f"%{ord(c):02x}" if lower else f"%{ord(c):02X}") if e and c.isascii() else c
            for c, e in zip(segment, escape, strict=True)
        )
    return segment


@st.composite
def path_cases(draw: st.DrawFn) -> PathCase:
    kind = weighted(draw, (8, "rule"), (2, "route"), (2, "other"))
    entry: RuleSpec | None = None
    if kind == "other":
        template = draw(st.sampled_from(OTHER_TEMPLATES))
    else:
        entry = draw(st.sampled_from(RULES if kind == "rule" else ROUTES))
        template = entry.template
    pieces: list[str] = []
    for part in template.strip("/").split("/"):
        if not part:
            continue
        pieces.append(_spell(_segment_for(part, draw), draw))
        if rarely(draw, 12):
            pieces[-1] += draw(st.sampled_from([";", ";x", ";jsessionid=1", "%3B", "%3bx"]))
        if rarely(draw, 8):
            pieces.append(draw(st.sampled_from(DOT_SEGMENTS)))
        if rarely(draw, 25):
            pieces[-1] += draw(st.sampled_from(ODD_PIECES))
    path = "/" + "/".join(pieces)
    if rarely(draw, 6):  # a doubled slash somewhere
        slashes = [i for i, c in enumerate(path) if c == "/"]
        at = draw(st.sampled_from(slashes))
        path = path[:at] + "/" * draw(st.integers(2, 3)) + path[at + 1 :]
    if rarely(draw, 8):
        path += draw(st.sampled_from(["/", "//", "/.", "/..", "/%2e", "/./"]))
    if rarely(draw, 12):
        path = draw(st.sampled_from(["/.", "/..", "/%2e%2e", "//"])) + path
    target = path
    if rarely(draw, 10):
        target = draw(st.sampled_from(["http://proxy.test", "http://other.example:81"])) + path
    if rarely(draw, 6):
        name = draw(st.sampled_from(["page", "q", "_method", *FIELD_NAMES, "postedby", "metadata[x]"]))
        target += f"?{name}={draw(st.sampled_from(['1', 'x', OUTSIDER_ID, 'a%20b']))}"
    own_method = entry.method if entry is not None else "POST"
    method = weighted(
        draw, (10, own_method), (4, draw(st.sampled_from(METHODS))), (2, draw(st.sampled_from(ODD_METHODS)))
    )
    overrides: tuple[tuple[str, str], ...] = ()
    if rarely(draw, 6):
        name = draw(st.sampled_from(OVERRIDE_HEADERS))
        name = "".join(c.swapcase() if draw(st.booleans()) else c for c in name)
        overrides = ((name, draw(st.sampled_from([own_method, *METHODS]))),)
    spoof = weighted(draw, (3, None), (3, OUTSIDER_ID), (2, CALLER_ID))
    return PathCase(method, target, overrides, spoof)


# --- The property ---------------------------------------------------------------------------------------------


def body_for(case: PathCase) -> bytes:
    body: dict[str, str] = {"title": "property"}
    if case.spoof is not None:
        body.update(dict.fromkeys(FIELD_NAMES, case.spoof))
    return json.dumps(body).encode()


def check(setup: Setup, case: PathCase) -> None:
    request_id = new_request_id()
    headers = [
        ("Authorization", f"Bearer {TOKEN}"),
        ("X-Request-Id", request_id),
        ("Content-Type", "application/json"),
        *case.overrides,
    ]
    try:
        request = build_request(case.method, case.target, headers, body_for(case))
    except UnicodeEncodeError:
        request = build_request(case.method, case.target.encode().decode("latin-1"), headers, body_for(case))
    answer = raw_exchange(setup.proxy, request)
    received = setup.upstream.received_for(request_id)
    assert answer.status < 500, f"a {answer.status}: {answer.body[:300]!r}"
    assert API_KEY.encode() not in answer.body, "the agency's API key reached the client"
    if not received:
        event(f"refused {answer.status}")
        assert 400 <= answer.status < 500, f"nothing forwarded, yet a {answer.status}"
        # The proxy's JSON refusal (headers only, for a HEAD); for a request line the HTTP layer cannot parse,
        # its refusal comes before the request's own id is read: uvicorn's plain one or the proxy's JSON with an
        # id of its own. Never an answer passed through (that would carry this request's id).
        head_refusal = case.method == "HEAD" and answer.header("x-request-id") == request_id
        front_door = answer.header("x-request-id") != request_id and (
            answer.header("x-request-id") is None or is_proxy_refusal(answer, None)
        )
        assert is_proxy_refusal(answer, request_id) or head_refusal or front_door
        return
    assert len(received) == 1 and answer.status == 200, (len(received), answer.status)
    forwarded = received[0]
    path = forwarded.raw_path.decode("latin-1")
    event("forwarded to a rule route" if _rule_hits(forwarded) else "forwarded elsewhere")
    assert normalise_escapes(path) in {normalise_escapes(p) for p in strict_reading(case.origin_path)}, (
        f"the upstream received {path!r} for {case.origin_path!r}"
    )
    assert forwarded.query == case.query
    check_forwarded(forwarded)


def _effective_methods(forwarded: Received) -> set[str]:
    """The method, and any a method-override header names (a framework could run that one instead)."""
    methods = {forwarded.method.upper()}
    for name in OVERRIDE_HEADERS:
        methods.update(
            v.decode("latin-1").strip().upper() for v in forwarded.headers_named(name.lower().encode())
        )
    return methods


def _rule_hits(forwarded: Received) -> list[RuleSpec]:
    paths = readings(forwarded.raw_path.decode("latin-1"))
    methods = _effective_methods(forwarded)
    return [e for e in ENTRIES if e.method in methods and any(matches(e.template, p) for p in paths)]


def check_forwarded(forwarded: Received) -> None:
    """A request that reached the upstream on a rule's route carries the caller's fields; on a route whose roles
    the caller lacks, none arrives."""
    for entry in _rule_hits(forwarded):
        where = f"{forwarded.method} {forwarded.raw_path!r} ({entry.method} {entry.template})"
        assert not entry.roles or CALLER_ROLE in entry.roles, (
            f"{where} reached the upstream for a {CALLER_ROLE}"
        )
        if not entry.fields:
            continue
        try:
            body = strict_loads(forwarded.body)
        except NotStrictJson as exc:
            raise AssertionError(f"{where}: the body is not strict JSON ({exc})") from None
        assert isinstance(body, dict), where
        for field in entry.fields:
            value: Any = body.get(field.path[0])
            own = isinstance(value, str) and value.lower() == CALLER_ID
            if field.mode == "set":
                assert value == CALLER_ID, f"{where}: {field.path[0]} is {value!r}"
            elif field.mode == "reference":
                active = isinstance(value, str) and value.lower() in ACTIVE_IDS
                assert own or active, f"{where}: {field.path[0]} is {value!r}"
            else:
                assert own, f"{where}: {field.mode} {field.path[0]} is {value!r}"


@property_settings(300)
@given(case=path_cases())
def test_no_spelling_of_a_path_or_method_escapes_a_rule(setup: Setup, case: PathCase) -> None:
    """Whatever the spelling, a request the upstream receives on a rule's route (as RFC 3986 section 6 and
    lenient servers read it) is attributed; what is not forwarded was refused with a 4xx."""
    check(setup, case)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        pytest.param("/a/b/c/./../../g", "/a/g", id="rfc-5.4.2-example"),
        pytest.param("/mid/content=5/../6", "/mid/6", id="rfc-5.2.4-example"),
        pytest.param("/api/v1/jobs/%63reate", "/api/v1/jobs/create", id="unreserved-escape"),
        pytest.param("/api/v1/jobs/%2e%2E/jobs/create", "/api/v1/jobs/create", id="escaped-dots"),
        pytest.param("/api//v1/jobs/create/", "/api/v1/jobs/create", id="slashes"),
        pytest.param("/api/v1/x%2fy", "/api/v1/x%2Fy", id="reserved-escape-kept-upper-cased"),
        pytest.param("/../api", "/api", id="above-root-stays-at-root"),
    ],
)
def test_the_reference_normaliser(path: str, expected: str) -> None:
    """The reference reads paths as RFC 3986 says (its own examples included)."""
    assert collapse_slashes(remove_dot_segments(normalise_escapes(path))) == expected


def test_the_reference_readings_are_conservative() -> None:
    """A ';' parameter or a backslash counts as the route some server would make of it."""
    assert any(matches("/api/v1/jobs/create", p) for p in readings("/api/v1/jobs/create;x"))
    assert any(matches("/api/v1/jobs/create", p) for p in readings("/api/v1/jobs\\create"))
    assert any(matches("/api/v1/jobs/{id}/approve", p) for p in readings("/API/v1/JOBS/x//approve"))
    assert not any(matches("/api/v1/jobs/create", p) for p in readings("/api/v1/jobs/%2563reate"))
