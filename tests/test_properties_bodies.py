"""Property: on every rule route, whatever the body, the upstream gets a JSON object attributed to the caller, or
the client gets a 4xx and the upstream gets nothing. Never a 5xx.

Bodies are drawn as JSON trees rendered in many spellings (escapes, whitespace, exact and huge numbers, field
names spelled with ``\\u`` escapes), then perhaps spoiled at the byte level (a BOM, invalid UTF-8, lone
surrogates, NaN, duplicate keys, deep nesting, junk, arbitrary bytes), compressed (gzip, deflate, a coding the
proxy cannot read), labelled with JSON or other content types, and sent with a Content-Length or chunked, over a
raw socket to the proxy on uvicorn, in front of the recording upstream (``property_support``).

The checks, for each request:

* never a 5xx; a 4xx is the proxy's own JSON refusal and nothing reached the upstream;
* otherwise exactly one request reached the upstream, with a strictly valid JSON object (UTF-8, no BOM, no
  duplicate keys, no NaN, no lone surrogate), a JSON content type and no Content-Encoding;
* every ``set`` and ``enforce`` field holds the caller's value, each ``default`` field the client's non-null
  value or the caller's, each ``reference`` field the caller's recruiter ID or an active recruiter's;
* the client's body, decoded independently here, was itself a strictly valid JSON object, and everything in it
  outside the rule's fields reached the upstream unchanged (key order and number spellings included).

The shipped ``rules.yaml`` is served by one proxy; a second serves rules that use the modes and dotted fields
the shipped file does not (``default``, nested fields, ``user_id`` and ``email`` values).
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from .conftest import ROOT, token_for
from .property_support import (
    DirectoryEntry,
    FieldSpec,
    NotStrictJson,
    Num,
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

MAX_BODY = 65_536

CAROL_ID = "c4a1b2c3-d4e5-4f60-8172-839405a6b7c8"  # only in her session: the directory does not list her
DAVE_ID = "d0d1d2d3-e4e5-4f66-8778-899aabbccdde"  # active admin, found by email in the directory
ERIN_ID = "e1e2e3e4-f5f6-4a77-8b88-99aa0bb1cc2d"  # active recruiter
FRANK_ID = "f1f2f3f4-a5a6-4b77-8c88-99dd0ee1ff2a"  # inactive recruiter
OUTSIDER_ID = "0badc0de-0000-4000-8000-000000000001"  # nobody's
ACTIVE_IDS = frozenset({DAVE_ID, ERIN_ID})

DIRECTORY = (
    DirectoryEntry(DAVE_ID, "dave@agency.example", "admin"),
    DirectoryEntry(ERIN_ID, "erin@agency.example", "recruiter"),
    DirectoryEntry(FRANK_ID, "frank@agency.example", "recruiter", is_active=False),
)

EXTRA_RULES = """\
rules:
  - match: POST /api/v1/extra/defaults
    default: {ownerId: recruiter, metadata.portalUser: user_id}
    set: {metadata.performedBy: recruiter}
    enforce: {audit.email: email}
  - match: PATCH /api/v1/extra/{id}/refs
    reference: {reviewerId: recruiter, team.leadId: recruiter}
    default: {notes.author: email}
"""


@dataclass(frozen=True)
class Caller:
    name: str
    recruiter_id: str
    user_id: str
    email: str
    token: str

    def value(self, source: str) -> str:
        return {"recruiter": self.recruiter_id, "user_id": self.user_id, "email": self.email}[source]


CALLERS = (
    # The recruiter ID from the session claim (the directory is not asked), the role too.
    Caller(
        "carol",
        CAROL_ID,
        "carol",
        "carol@agency.example",
        token_for("carol@agency.example", recruiter_id=CAROL_ID, role="manager"),
    ),
    # The recruiter ID and the role from the directory, by email (compared without regard to case).
    Caller("dave", DAVE_ID, "dave", "Dave@Agency.example", token_for("Dave@Agency.example", sub="dave")),
)


SHIPPED_RULES = (ROOT / "rules.yaml").read_text()
RULES = {"shipped": read_rules(SHIPPED_RULES)[0], "extra": read_rules(EXTRA_RULES)[0]}


@dataclass(frozen=True)
class Setup:
    upstream: RecordingUpstream
    proxies: dict[str, str]  # "shipped" or "extra" -> the URL of a proxy serving those rules


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    folder = tmp_path_factory.mktemp("rules")
    files = {"shipped": ROOT / "rules.yaml", "extra": folder / "extra.yaml"}
    files["extra"].write_text(EXTRA_RULES)
    upstream = RecordingUpstream(directory=DIRECTORY)
    with serve_upstream(upstream) as upstream_url:
        env = {"PROXY_MAX_BODY_BYTES": str(MAX_BODY)}
        with (
            serve_proxy(proxy_env(upstream_url, PROXY_RULES=str(files["shipped"]), **env)) as shipped,
            serve_proxy(proxy_env(upstream_url, PROXY_RULES=str(files["extra"]), **env)) as extra,
        ):
            yield Setup(upstream, {"shipped": shipped, "extra": extra})


# --- Drawing bodies -------------------------------------------------------------------------------------------

# A JSON value as a tree, so that it can be spelled many ways: ("lit", token) | ("str", text) |
# ("arr", [nodes]) | ("obj", [(key, node)]); an object's pairs may repeat a key.
Node = tuple[Any, ...]

NUMBER = st.one_of(
    st.from_regex(r"-?(0|[1-9][0-9]{0,25})(\.[0-9]{1,20})?([eE][+-]?[0-9]{1,4})?", fullmatch=True),
    st.integers().map(str),
    st.integers(min_value=1, max_value=4500).map(lambda n: "9" * n),  # beyond Python's int() digit limit
    st.sampled_from(["-0", "1.10", "1e400", "-1E-400", "0.1", "123456789012345678901234567890", "1E+2"]),
)
BAD_TOKEN = st.sampled_from(["NaN", "Infinity", "-Infinity", "+1", "01", ".5", "1.", "0x10", "nul", "True"])
TEXT = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", "\u0000", "\ufeff", "é", "😀", "\\", '"', "\u2028", "postedBy"]),
)
LONE_SURROGATE = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2)
KEY = st.one_of(
    st.sampled_from(["title", "notes", "a", "metadata", "audit", "team", "id"]), st.text(max_size=6)
)
SCALAR: st.SearchStrategy[Node] = st.one_of(
    st.sampled_from([("lit", "null"), ("lit", "true"), ("lit", "false")]),
    NUMBER.map(lambda t: ("lit", t)),
    TEXT.map(lambda t: ("str", t)),
)


def _containers(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    return st.one_of(
        st.lists(children, max_size=3).map(lambda xs: ("arr", xs)),
        st.lists(st.tuples(KEY, children), max_size=3, unique_by=lambda p: p[0]).map(lambda ps: ("obj", ps)),
    )


VALUE: st.SearchStrategy[Node] = st.recursive(SCALAR, _containers, max_leaves=8)


def field_value(caller: Caller, field: FieldSpec) -> st.SearchStrategy[Node]:
    """What a client puts in an attribution field: its own value, someone else's, null or anything."""
    mine = caller.value(field.source)
    named = [
        mine,
        mine.upper(),
        ERIN_ID,
        ERIN_ID.upper(),
        FRANK_ID,
        OUTSIDER_ID,
        caller.email,
        caller.user_id,
        "",
    ]
    return st.one_of(st.sampled_from(named).map(lambda v: ("str", v)), st.just(("lit", "null")), VALUE)


@st.composite
def top_object(draw: st.DrawFn, caller: Caller, rule: RuleSpec) -> Node:
    """An object with random members and, usually, the rule's fields (nested ones under their parents)."""
    fields: dict[str, Any] = {}  # the fields the client sends, as a tree: key -> Node, or a dict for a parent
    for field in rule.fields:
        if draw(st.booleans()):
            parent = fields
            for key in field.path[:-1]:
                parent = parent.setdefault(key, {})
            parent[field.path[-1]] = draw(field_value(caller, field))
    pairs: list[tuple[str, Node]] = draw(_members(fields, VALUE))
    for key, value in fields.items():
        pairs.insert(draw(st.integers(0, len(pairs))), (key, draw(_as_node(value))))
    if rarely(draw, 10) and pairs:  # a duplicate key, at the top
        key, _ = draw(st.sampled_from(pairs))
        pairs.insert(draw(st.integers(0, len(pairs))), (key, draw(field_value(caller, rule.fields[0]))))
    if rarely(draw, 12):  # a lone surrogate, escaped as JSON allows it to be written
        pairs.insert(draw(st.integers(0, len(pairs))), (draw(KEY), ("str", draw(LONE_SURROGATE))))
    if rarely(draw, 10):  # something deep, somewhere
        depth = draw(st.sampled_from([50, 500, 900, 990, 1000, 1100, 5000, 30_000]))
        pairs.append(("deep", _nested(depth, draw(st.booleans()))))
    return ("obj", pairs)


def _members(
    taken: dict[str, Any], values: st.SearchStrategy[Node]
) -> st.SearchStrategy[list[tuple[str, Node]]]:
    """Random members of an object, none named like a field the client sends in it (no duplicate by chance)."""
    return st.lists(
        st.tuples(KEY.filter(lambda k: k not in taken), values), max_size=4, unique_by=lambda p: p[0]
    )


@st.composite
def _as_node(draw: st.DrawFn, value: Node | dict[str, Any]) -> Node:
    """A field's value, or the object of a dotted field's parent with other members around the fields."""
    if not isinstance(value, dict):
        return value
    if rarely(draw, 10):  # a parent that is not an object: the field cannot be written
        return draw(SCALAR)
    pairs: list[tuple[str, Node]] = draw(_members(value, SCALAR))
    for key, child in value.items():
        pairs.insert(draw(st.integers(0, len(pairs))), (key, draw(_as_node(child))))
    return ("obj", pairs)


def _nested(depth: int, arrays: bool) -> Node:
    node: Node = ("lit", "1")
    for _ in range(depth):
        node = ("arr", [node]) if arrays else ("obj", [("d", node)])
    return node


@dataclass(frozen=True)
class Style:
    space: str  # between tokens
    ascii: bool  # \\u escapes for non-ASCII (and so lone surrogates stay escaped, as valid JSON text)
    escape_keys: bool  # every letter of every key as \\u00XX: the field names too


STYLE = st.builds(
    Style,
    st.sampled_from(["", " ", "\n  ", "\t", "\r\n"]),
    st.booleans(),  # raw non-ASCII (and raw lone surrogates, which become invalid UTF-8)
    st.sampled_from([False, False, False, False, False, True]),
)


def render(node: Node, style: Style) -> str:
    """The JSON text of a tree, iteratively (the deep ones would overflow a recursive renderer)."""
    out: list[str] = []
    stack: list[Node | str] = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
            continue
        kind = item[0]
        if kind == "lit":
            out.append(item[1])
        elif kind == "str":
            out.append(json.dumps(item[1], ensure_ascii=style.ascii))
        else:
            sep = "," + style.space
            if kind == "arr":
                parts: list[Node | str] = [style.space + "[" + style.space]
                for i, child in enumerate(item[1]):
                    parts += [sep] if i else []
                    parts.append(child)
            else:
                parts = [style.space + "{" + style.space]
                for i, (key, child) in enumerate(item[1]):
                    parts += [sep] if i else []
                    parts += [_key(key, style) + style.space + ":" + style.space, child]
            parts.append(style.space + ("]" if kind == "arr" else "}") + style.space)
            stack.extend(reversed(parts))
    return "".join(out)


def _key(key: str, style: Style) -> str:
    if not style.escape_keys:
        return json.dumps(key, ensure_ascii=style.ascii)
    letters = (
        f"\\u{ord(c):04x}" if c.isascii() and c.isalpha() else json.dumps(c, ensure_ascii=style.ascii)[1:-1]
        for c in key
    )
    return '"' + "".join(letters) + '"'


@st.composite
def plain_body(draw: st.DrawFn, caller: Caller, rule: RuleSpec) -> bytes:
    """The body before any Content-Encoding: usually an object, sometimes anything."""
    shape = weighted(draw, (16, "object"), (1, "empty"), (1, "bytes"), (2, "any-json"))
    if shape == "empty":
        return b""
    if shape == "bytes":
        return draw(st.binary(max_size=64))
    node: Node = draw(VALUE if shape == "any-json" else top_object(caller, rule))
    text = render(node, draw(STYLE))
    if rarely(draw, 12):  # a token JSON does not have, somewhere a value goes
        text = text.replace("null", draw(BAD_TOKEN), 1) if "null" in text else text + draw(BAD_TOKEN)
    data = text.encode("utf-8", "surrogatepass")  # raw lone surrogates become invalid UTF-8
    return draw(_spoil(data)) if rarely(draw, 4) else data


@st.composite
def _spoil(draw: st.DrawFn, data: bytes) -> bytes:
    how = draw(st.integers(0, 5))
    if how == 0:
        return b"\xef\xbb\xbf" + data  # a BOM
    if how == 1:
        return b"\xef\xbb\xbf\xef\xbb\xbf" + data
    if how == 2 and data:  # an invalid UTF-8 byte somewhere
        at = draw(st.integers(0, len(data)))
        return data[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80"])) + data[at:]
    if how == 3 and data:
        return data[: draw(st.integers(0, len(data) - 1))]  # truncated
    if how == 4:
        return data + draw(st.sampled_from([b" x", b"{}", b"\x00", b"]", b" ,"]))  # junk after the value
    if how == 5:
        return b"\n \t" + data + b"\r\n"  # whitespace around
    return data


# Content-Encoding: (header, encode). The first are faithful; "br" and the broken streams after them the proxy
# must refuse, or read right.
CODINGS: dict[str, Any] = {
    "none": (None, lambda d: d),
    "identity": ("identity", lambda d: d),
    "gzip": ("gzip", gzip.compress),
    "x-gzip": ("x-gzip", gzip.compress),
    "GZIP": ("GZIP", gzip.compress),
    "gzip-members": ("gzip", lambda d: gzip.compress(d[: len(d) // 2]) + gzip.compress(d[len(d) // 2 :])),
    "deflate": ("deflate", zlib.compress),
    "raw-deflate": ("deflate", lambda d: zlib.compress(d)[2:-4]),
    # broken or unreadable from here on
    "gzip-then-junk": ("gzip", lambda d: gzip.compress(d) + b"junk"),
    "gzip-truncated": ("gzip", lambda d: gzip.compress(d)[:-5]),
    "gzip-flipped": ("gzip", lambda d: _flip(gzip.compress(d))),
    "gzip-twice-in-one-header": ("gzip, gzip", lambda d: gzip.compress(gzip.compress(d))),
    "labelled-gzip-plain": ("gzip", lambda d: d),
    "br": ("br", lambda d: d),
}


def _flip(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x20]) + data[middle + 1 :]


def decoded_here(data: bytes, coding: str | None) -> bytes | None:
    """The body as a careful reader decodes it (RFC 9110 section 8.4.1; "deflate" as zlib, or raw as some
    clients send it); None for what cannot be read as one of gzip or deflate."""
    codings = [c.strip().lower() for c in (coding or "").split(",") if c.strip() and c.strip() != "identity"]
    try:
        for name in reversed(codings):
            if name in ("gzip", "x-gzip"):
                data = gzip.decompress(data)
            elif name == "deflate":
                try:
                    data = zlib.decompress(data)
                except zlib.error:
                    data = zlib.decompress(data, -zlib.MAX_WBITS)
            else:
                return None
    except (OSError, EOFError, zlib.error):
        return None
    return data


JSON_TYPES = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON;charset=UTF-8",
        "application/vnd.bpoc+json",
    ]
)
OTHER_TYPES = st.sampled_from(
    [
        "application/json; charset=latin-1",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "",
        None,
    ]
)


@dataclass(frozen=True)
class BodyCase:
    proxy: str  # "shipped" or "extra"
    rule: RuleSpec
    caller: Caller
    plain: bytes  # the body before its Content-Encoding
    coding: str  # a key of CODINGS
    content_types: tuple[str | None, ...]  # one header each (None: no header); usually one
    chunks: tuple[int, ...] | None  # chunked upload cut at these offsets, or None for Content-Length
    query: str

    def __repr__(self) -> str:  # a body may be 100 KB deep: show its ends
        plain = self.plain if len(self.plain) <= 400 else self.plain[:200] + b" ... " + self.plain[-200:]
        return (
            f"BodyCase({self.rule.method} {self.rule.template}{self.query}, caller={self.caller.name}, "
            f"coding={self.coding}, content_types={self.content_types}, chunks={self.chunks}, "
            f"plain={plain!r} ({len(self.plain)} bytes))"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # what hypothesis prints a failing case with
        printer.text(repr(self))

    @property
    def wire_body(self) -> bytes:
        return CODINGS[self.coding][1](self.plain)  # type: ignore[no-any-return]


@st.composite
def body_cases(draw: st.DrawFn, proxy: str) -> BodyCase:
    rule = draw(st.sampled_from(RULES[proxy]))
    caller = draw(st.sampled_from(CALLERS))
    plain = draw(plain_body(caller, rule))
    names = list(CODINGS)
    faithful, broken = names[: names.index("gzip-then-junk")], names[names.index("gzip-then-junk") :]
    coding = weighted(
        draw, (12, "none"), (6, draw(st.sampled_from(faithful))), (2, draw(st.sampled_from(broken)))
    )
    content_types: tuple[str | None, ...] = (draw(OTHER_TYPES if rarely(draw, 6) else JSON_TYPES),)
    if rarely(draw, 10):
        content_types += (draw(st.one_of(JSON_TYPES, OTHER_TYPES)),)
    chunks = None
    if rarely(draw, 4):
        chunks = tuple(sorted(draw(st.lists(st.integers(0, max(len(plain), 1)), max_size=4))))
    query = ""
    if rarely(draw, 12):
        name = draw(st.sampled_from([*(f.path[0] for f in rule.fields), "page", "postedby[]"]))
        query = f"?{name}=x"
    return BodyCase(proxy, rule, caller, plain, coding, content_types, chunks, query)


# --- The property ---------------------------------------------------------------------------------------------


def send(setup: Setup, case: BodyCase, request_id: str) -> tuple[int, bool, Any]:
    headers = [("Authorization", f"Bearer {case.caller.token}"), ("X-Request-Id", request_id)]
    headers += [("Content-Type", ct) for ct in case.content_types if ct is not None]
    coding = CODINGS[case.coding][0]
    if coding is not None:
        headers.append(("Content-Encoding", coding))
    body = case.wire_body
    target = case.rule.path_for() + case.query
    if case.chunks is None:
        request = build_request(case.rule.method, target, headers, body)
    else:
        cuts = [0, *(min(c, len(body)) for c in case.chunks), len(body)]
        request = build_request(
            case.rule.method,
            target,
            headers,
            chunks=[body[a:b] for a, b in zip(cuts, cuts[1:], strict=False)],
        )
    answer = raw_exchange(setup.proxies[case.proxy], request)
    return answer.status, is_proxy_refusal(answer, request_id), answer


def check(setup: Setup, case: BodyCase) -> None:
    request_id = new_request_id()
    status, refusal, answer = send(setup, case, request_id)
    received = setup.upstream.received_for(request_id)
    assert status < 500, f"a {status}: {answer.body[:300]!r}"
    if 400 <= status < 500:
        event(f"refused {status}")
        assert refusal, f"a {status} that is not the proxy's refusal: {answer.body[:300]!r}"
        assert received == [], "refused, yet the upstream received the request"
        return
    event("forwarded")
    assert status == 200 and len(received) == 1, (status, len(received))
    forwarded = received[0]
    assert forwarded.method == case.rule.method
    assert forwarded.header(b"content-encoding") is None
    content_type = (forwarded.header(b"content-type") or b"").decode("latin-1").split(";")[0].strip().lower()
    assert content_type == "application/json" or content_type.endswith("+json"), content_type
    try:
        got = strict_loads(forwarded.body)
    except NotStrictJson as exc:
        raise AssertionError(f"the upstream received a body that is not strict JSON ({exc})") from None
    assert isinstance(got, dict), "the upstream received JSON that is not an object"
    sent = client_object(case)
    for field in case.rule.fields:
        check_field(field, got, sent, case.caller)
    assert canonical(without(got, case.rule.fields)) == canonical(without(sent, case.rule.fields)), (
        "the upstream received the client's other members changed"
    )


def client_object(case: BodyCase) -> dict[str, Any]:
    """The client's body as this test reads it; the proxy forwarded it, so it must be a strict JSON object."""
    plain = decoded_here(case.wire_body, CODINGS[case.coding][0])
    assert plain is not None, f"forwarded a body encoded as {case.coding!r}, which cannot be decoded"
    if plain == b"":
        return {}
    text = plain.removeprefix(b"\xef\xbb\xbf")
    try:
        sent = strict_loads(text)
    except NotStrictJson as exc:
        raise AssertionError(f"forwarded a client body that is not strict JSON ({exc})") from None
    assert isinstance(sent, dict), "forwarded a client body that is not a JSON object"
    return sent


def check_field(field: FieldSpec, got: dict[str, Any], sent: dict[str, Any], caller: Caller) -> None:
    value = lookup(got, field.path)
    name = ".".join(field.path)
    mine = caller.value(field.source)
    own = isinstance(value, str) and (
        value == mine if field.source == "user_id" else value.lower() == mine.lower()
    )
    if field.mode == "set":
        assert value == mine, f"set {name}: {value!r}, not the caller's {mine!r}"
    elif field.mode == "enforce":
        assert own, f"enforce {name}: {value!r}, not the caller's {mine!r}"
    elif field.mode == "default":
        client_value = lookup(sent, field.path)
        assert value == mine or (client_value is not None and value == client_value), (
            f"default {name}: {value!r}, neither the caller's nor the client's {client_value!r}"
        )
    else:
        assert field.mode == "reference"
        active = isinstance(value, str) and value.lower() in ACTIVE_IDS
        assert own or active, f"reference {name}: {value!r} is neither the caller nor an active recruiter"


def lookup(body: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(body, dict):
            return None
        body = body.get(key)
    return body


def without(body: dict[str, Any], fields: tuple[FieldSpec, ...]) -> dict[str, Any]:
    """``body`` less the rule's fields, and less the objects (or nulls) on their way that hold nothing else:
    the proxy creates those, so only what the client sent besides the fields is compared. Copies only along
    the fields' paths (a body may be nested too deeply for a recursive copy)."""
    for field in fields:
        body = _removed(body, field.path)
    return body


def _removed(node: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    key, copy = path[0], dict(node)
    if len(path) == 1:
        copy.pop(key, None)
        return copy
    child = copy.get(key)
    if isinstance(child, dict):
        child = copy[key] = _removed(child, path[1:])
    if child is None or child == {}:
        copy.pop(key, None)
    return copy


def canonical(value: Any) -> str:
    """One spelling of a parsed body, key order and number spellings kept (iterative: bodies may be deep)."""
    out: list[str] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _Raw):
            out.append(item.text)
        elif isinstance(item, Num):
            out.append(item.text)
        elif isinstance(item, dict):
            parts: list[Any] = [_Raw("{")]
            for key, child in item.items():
                parts += [_Raw(json.dumps(key) + ":"), child, _Raw(",")]
            stack.extend(reversed([*parts, _Raw("}")]))
        elif isinstance(item, list):
            parts = [_Raw("[")]
            for child in item:
                parts += [child, _Raw(",")]
            stack.extend(reversed([*parts, _Raw("]")]))
        else:
            out.append(json.dumps(item))
    return "".join(out)


@dataclass(frozen=True)
class _Raw:
    text: str


@property_settings(250)
@given(case=body_cases("shipped"))
def test_bodies_on_shipped_rule_routes(setup: Setup, case: BodyCase) -> None:
    """Any body on any route of the shipped rules.yaml: an attributed JSON object upstream, or a 4xx and nothing
    upstream; never a 5xx."""
    check(setup, case)


@property_settings(120)
@given(case=body_cases("extra"))
def test_bodies_on_default_and_nested_fields(setup: Setup, case: BodyCase) -> None:
    """The same for default and reference modes, dotted fields and user_id/email values."""
    check(setup, case)


def test_the_reference_reads_what_it_should() -> None:
    """The test's own strict reader and decoder accept and refuse what the README says (so the property is not
    vacuous): exact numbers kept, duplicates, NaN, BOM and lone surrogates refused, gzip and deflate read."""
    assert strict_loads(b'{"a": 1.10, "b": -0}') == {"a": Num("1.10"), "b": Num("-0")}
    for bad in (b'{"a":1,"a":2}', b'{"a":NaN}', b"\xef\xbb\xbf{}", b'{"a":"\\ud800"}', b'{"a":"\xff"}'):
        with pytest.raises(NotStrictJson):
            strict_loads(bad)
    assert decoded_here(zlib.compress(b"{}")[2:-4], "deflate") == b"{}"
    assert decoded_here(gzip.compress(b"{}"), "x-gzip") == b"{}"
    assert decoded_here(b"{}", "br") is None
    assert render(("obj", [("postedBy", ("str", "x"))]), Style("", True, True)) == (
        '{"\\u0070\\u006f\\u0073\\u0074\\u0065\\u0064\\u0042\\u0079":"x"}'
    )
