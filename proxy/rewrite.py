"""Rewriting a JSON body by a rule: pure functions, no I/O.

The pipeline calls them in this order on a rule route::

    check_query(rule, query_string)                    # no query parameter may shadow a field
    body = decode_body(raw, content_type, content_encoding, max_bytes)
    result = plan(rule, body.data, caller, active_recruiters)
    # report-only: log result.writes (and result.refusal) and forward the original bytes unchanged
    raw = render(body, result)                          # raises result.refusal; plain application/json

Decoding is strict where parsers disagree, so that the value the proxy checks is the value BPOC reads:
duplicate keys anywhere are refused (JSON parsers differ on which one wins), as are NaN and Infinity, invalid
UTF-8 and unpaired surrogate escapes. A UTF-8 byte order mark is stripped (RFC 8259 section 8.1 lets a parser
ignore it; the re-encoded body carries none). Numbers never pass through a binary float: decimals keep their
exact spelling (``1.10``, ``1e400``) and integers of any size stay exact. Everything else about the body is
kept: key order, unicode and values the rule does not touch. When the writes only add top-level fields the
client did not send (``postedBy`` and the like, the usual case) the client's bytes are forwarded exactly as
sent, with the new members inserted before the closing brace: nothing is re-encoded.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Container, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import unquote_to_bytes

import simplejson

from .errors import BadRequest, Forbidden, PayloadTooLarge, ProxyError, Unprocessable, UnsupportedMediaType
from .rules import FieldRule, Rule

_BOM = b"\xef\xbb\xbf"
_MISSING: Any = object()
_TOO_DEEP = "The request body is nested too deeply."
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


@dataclass(frozen=True, slots=True)
class Caller:
    """The session facts a rule can write: the BPOC recruiter ID (if known), portal user id and email."""

    recruiter_id: str | None
    user_id: str
    email: str | None


@dataclass(frozen=True, slots=True)
class Write:
    """One value the proxy writes: the field's dotted name and the value."""

    field: str
    value: str


@dataclass(frozen=True, slots=True)
class JsonBody:
    """A decoded request body: the object, and the UTF-8 JSON text it came from (decompressed, no BOM)."""

    data: dict[str, Any]
    text: bytes


@dataclass(frozen=True, slots=True)
class Plan:
    """What a rule does to one body: the writes, and the refusal if the request must not be forwarded."""

    writes: tuple[Write, ...]
    refusal: ProxyError | None = None


# -- Decoding ------------------------------------------------------------------------------------------------


def decode_body(
    raw: bytes, content_type: str | None, content_encoding: str | None, max_bytes: int
) -> JsonBody:
    """The JSON object of a request body on a rule route, or a ProxyError (400, 413, 415).

    An empty body is an empty object (so a rule can add its fields to a bodiless POST). A non-empty body needs
    a JSON content type: ``application/json`` or any ``+json`` type, with parameters allowed but a charset
    other than UTF-8 refused. gzip and deflate bodies are decompressed, never beyond ``max_bytes``.
    """
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"The request body is larger than {max_bytes} bytes.")
    _check_content_type(content_type, empty=not raw)
    raw = _decompress(raw, content_encoding, max_bytes)
    if not raw:
        return JsonBody({}, b"")
    text = raw[len(_BOM) :] if raw.startswith(_BOM) else raw
    return JsonBody(_parse(text), text)


def _check_content_type(content_type: str | None, *, empty: bool) -> None:
    if content_type == "application/json":
        return  # what nearly every client sends
    if content_type is None or not content_type.strip():
        if empty:
            return
        raise UnsupportedMediaType("The request body has no Content-Type; send it as application/json.")
    media_type, *params = (part.strip() for part in content_type.split(";"))
    media_type = media_type.lower()
    kind, _, subtype = media_type.partition("/")
    if not (media_type == "application/json" or (kind and subtype.endswith("+json"))):
        raise UnsupportedMediaType(
            f"The request body is {media_type}, but this route takes application/json."
        )
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise UnsupportedMediaType(f"The request body must be UTF-8 JSON, not charset {value.strip()}.")


def _decompress(raw: bytes, content_encoding: str | None, max_bytes: int) -> bytes:
    if not content_encoding:
        return raw
    codings = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]
    codings = [c for c in codings if c != "identity"]
    if not codings:
        return raw
    if len(codings) > 1:
        raise UnsupportedMediaType(
            "The request body has more than one Content-Encoding; send gzip or deflate."
        )
    coding = codings[0]
    if coding not in ("gzip", "x-gzip", "deflate"):
        raise UnsupportedMediaType(
            f"The request body is encoded with {coding}, which the proxy cannot decode; "
            "send gzip, deflate or no encoding."
        )
    if not raw:
        return raw
    if coding in ("gzip", "x-gzip"):
        return _inflate(raw, 16 + zlib.MAX_WBITS, max_bytes, coding)
    # deflate: RFC 9110 section 8.4.1.2 means the zlib format, but some clients send raw deflate; accept both.
    return _inflate(raw, zlib.MAX_WBITS if _zlib_header(raw) else -zlib.MAX_WBITS, max_bytes, coding)


def _zlib_header(raw: bytes) -> bool:
    """Whether ``raw`` starts with a zlib header (RFC 1950 section 2.2: method 8, check bits)."""
    return len(raw) >= 2 and raw[0] & 0x0F == 8 and (raw[0] << 8 | raw[1]) % 31 == 0


def _inflate(data: bytes, wbits: int, max_bytes: int, coding: str) -> bytes:
    """Decompress at most ``max_bytes`` (a bomb stops there); gzip members may be concatenated."""
    out = bytearray()
    while True:
        inflater = zlib.decompressobj(wbits)
        try:
            out += inflater.decompress(data, max_bytes + 1 - len(out))
        except zlib.error:
            raise BadRequest(f"The request body is not valid {coding} data.") from None
        if len(out) > max_bytes:
            raise PayloadTooLarge(f"The request body is larger than {max_bytes} bytes once decompressed.")
        if not inflater.eof:
            raise BadRequest(f"The request body's {coding} data is truncated.")
        data = inflater.unused_data
        if not data or wbits < 16:
            break
    if data:
        raise BadRequest(f"The request body has data after the end of its {coding} stream.")
    return bytes(out)


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"The request body is not valid UTF-8 (at byte {exc.start}).") from None
    try:
        body = _DECODER.decode(text)
    except simplejson.JSONDecodeError as exc:
        raise BadRequest(
            f"The request body is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}."
        ) from None
    except RecursionError:  # the codec's own depth guard (Python's recursion limit, ~1000 levels)
        raise BadRequest(_TOO_DEEP) from None
    if not isinstance(body, dict):
        raise BadRequest(f"The request body must be a JSON object, not {_json_kind(body)}.")
    if _SURROGATE_ESCAPE.search(text) and any(_has_lone_surrogate(s) for s in _strings(body)):
        raise BadRequest("The request body contains an unpaired UTF-16 surrogate escape such as \\ud800.")
    return body


class _Number(Decimal):
    """A JSON number that remembers its spelling, so it is written back exactly as the client sent it."""

    __slots__ = ("_text",)
    _text: str

    def __new__(cls, text: str) -> _Number:
        number = super().__new__(cls, text)
        number._text = text
        return number

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"_Number({self._text!r})"


def _parse_int(text: str) -> int | Decimal:
    # Python refuses int() of more than 4300 digits, and int() would write -0 back as 0.
    if len(text) > 4000 or text == "-0":
        return _Number(text)
    return int(text)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise BadRequest(f"The request body has the key {key!r} twice in one object.")
            seen.add(key)
    return obj


def _strings(value: Any) -> Iterator[str]:
    """Every key and string value in a parsed body (iterative: the body may be nested deeply)."""
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


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


# Built once: simplejson.loads/dumps with arguments build a new codec on every call.
_DECODER = simplejson.JSONDecoder(
    parse_float=_Number, parse_int=_parse_int, object_pairs_hook=_object, allow_nan=False
)
_ENCODER = simplejson.JSONEncoder(
    use_decimal=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False
)


def render(body: JsonBody, decided: Plan) -> bytes:
    """The body to forward, with ``decided``'s writes done; raises its refusal if it has one.

    Writes that only add top-level fields the client did not send go in just before the closing brace of the
    client's own text, which is otherwise forwarded byte for byte. Anything else (replacing a value the client
    sent, writing into a nested object, an empty body) re-encodes the object with the writes applied.
    """
    if decided.refusal is not None:
        raise decided.refusal
    if body.text and all("." not in w.field and w.field not in body.data for w in decided.writes):
        return _insert_members(body.text, bool(body.data), decided.writes)
    return encode_body(apply(body.data, decided))


def _insert_members(text: bytes, has_members: bool, writes: tuple[Write, ...]) -> bytes:
    if not writes:
        return text
    # The text parsed as one object with nothing after it but JSON whitespace, so this is its closing brace.
    end = len(text.rstrip(b" \t\r\n")) - 1
    members = ",".join(f"{_ENCODER.encode(w.field)}:{_ENCODER.encode(w.value)}" for w in writes)
    separator = "," if has_members else ""
    return b"".join((text[:end], (separator + members).encode("utf-8"), text[end:]))


def encode_body(body: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON, key order kept, unicode unescaped, numbers exactly as they were parsed."""
    try:
        text: str = _ENCODER.encode(body)
    except RecursionError:  # parsed a little higher up the stack than it is written here
        raise BadRequest(_TOO_DEEP) from None
    return text.encode("utf-8")


# -- Planning and applying the writes ------------------------------------------------------------------------


def plan(rule: Rule, body: Mapping[str, Any], caller: Caller, active_recruiters: Container[str]) -> Plan:
    """The writes ``rule`` makes to ``body`` for ``caller``, and the first refusal, if any.

    Planning goes on past a refusal, so report-only mode can log everything the rule would write.
    ``active_recruiters`` holds the agency's active recruiter IDs, lowercase; it is consulted for
    ``reference`` fields only.
    """
    writes: list[Write] = []
    refusal: ProxyError | None = None
    for field in rule.fields:
        try:
            write = _plan_field(field, body, caller, active_recruiters)
        except ProxyError as exc:
            refusal = refusal or exc
            continue
        if write is not None:
            writes.append(write)
    return Plan(tuple(writes), refusal)


def _plan_field(
    field: FieldRule, body: Mapping[str, Any], caller: Caller, active: Container[str]
) -> Write | None:
    sent = _lookup(body, field)
    if field.mode == "set" or sent is None:
        return Write(field.name, _caller_value(field, caller))
    if field.mode == "default":
        return None
    if field.mode == "enforce":
        mine = _caller_value(field, caller)
        if not (isinstance(sent, str) and _same(field, sent, mine)):
            raise Forbidden(
                f"The field {field.name} must be your own {_NOUNS[field.value]} ({mine}), or left out."
            )
        return None
    # reference: the caller's own ID, or any active recruiter of the agency
    if isinstance(sent, str) and sent and (sent.lower() in active or sent in active or _is_me(sent, caller)):
        return None
    raise Unprocessable(
        f"The field {field.name} names {_short(sent)}, which is not an active recruiter of this agency."
    )


def _is_me(sent: str, caller: Caller) -> bool:
    return caller.recruiter_id is not None and sent.lower() == caller.recruiter_id.lower()


_NOUNS = {"recruiter": "BPOC recruiter ID", "user_id": "portal user id", "email": "email address"}


def _lookup(body: Mapping[str, Any], field: FieldRule) -> Any:
    """What the client sent for ``field`` (None when absent or null); BadRequest if its path is blocked."""
    node: Any = body
    for depth, key in enumerate(field.path):
        if node is None:
            return None
        if not isinstance(node, Mapping):
            blocked = ".".join(field.path[:depth])
            raise BadRequest(
                f"The field {field.name} cannot be written because {blocked} is {_json_kind(node)}, not an object."
            )
        node = node.get(key)
    return node


def _caller_value(field: FieldRule, caller: Caller) -> str:
    value = {"recruiter": caller.recruiter_id, "user_id": caller.user_id, "email": caller.email}[field.value]
    if not value:
        raise Forbidden(
            f"The field {field.name} needs your {_NOUNS[field.value]}, and your session has none."
        )
    return value


def _same(field: FieldRule, sent: str, mine: str) -> bool:
    # UUIDs and email addresses compare without regard to case; an opaque portal user id compares exactly.
    return sent == mine if field.value == "user_id" else sent.lower() == mine.lower()


def _short(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else _json_kind(value)
    return text if len(text) <= 60 else text[:57] + "..."


def apply(body: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """Do the writes of ``plan`` in ``body`` itself (mutated and returned), creating objects on the way.

    A null on the way counts as absent and becomes an object. A plan with a refusal is not applied: its
    refusal is raised, so a forgotten check cannot forward a refused body.
    """
    if plan.refusal is not None:
        raise plan.refusal
    for write in plan.writes:
        *parents, last = write.field.split(".")
        node = body
        for key in parents:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif not isinstance(child, dict):
                raise BadRequest(f"The field {write.field} cannot be written because {key} is not an object.")
            node = child
        node[last] = write.value
    return body


def check_query(rule: Rule, query_string: bytes) -> None:
    """Refuse a query parameter named like one of the rule's fields (a second value BPOC might read).

    Names are percent-decoded and compared case-insensitively with each field's top-level and dotted name;
    bracket forms such as ``metadata[performedBy]`` or ``postedBy[]`` count too.
    """
    if not query_string:
        return
    names = {f.path[0].lower() for f in rule.fields} | {f.name.lower() for f in rule.fields}
    for part in re.split(rb"[&;]", query_string):
        raw_name = part.split(b"=", 1)[0].replace(b"+", b" ")
        name = unquote_to_bytes(raw_name).decode("utf-8", "replace").strip().lower()
        dotted = re.sub(r"\[([^\]]*)\]", r".\1", name).rstrip(".")
        if name in names or dotted in names or dotted.split(".", 1)[0] in names:
            raise BadRequest(
                f"The query parameter {name!r} has the name of a field the proxy writes; remove it."
            )
