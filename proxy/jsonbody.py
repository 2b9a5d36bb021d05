"""The JSON body of a rule route: decoded strictly, and rendered with the proxy's writes.

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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import simplejson

from .errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from .modes import Plan, Write, apply, json_kind

_BOM = b"\xef\xbb\xbf"
_TOO_DEEP = "The request body is nested too deeply."
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SKIPPED_BY_DECODER = ("\ufeff", "\xef\xbb\xbf")


@dataclass(frozen=True, slots=True)
class JsonBody:
    """A decoded request body: the object, and the UTF-8 JSON text it came from (decompressed, no BOM)."""

    data: dict[str, Any]
    text: bytes


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
    if text.startswith(_SKIPPED_BY_DECODER):
        # simplejson skips a BOM at the start (also its three bytes read as latin-1). One BOM is taken off the
        # bytes already; a second would reach BPOC in front of the object, where a strict parser stops.
        raise BadRequest("The request body is not valid JSON: Expecting value at line 1, column 1.")
    try:
        body = _DECODER.decode(text)
    except simplejson.JSONDecodeError as exc:
        raise BadRequest(
            f"The request body is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}."
        ) from None
    except RecursionError:  # the codec's own depth guard (Python's recursion limit, ~1000 levels)
        raise BadRequest(_TOO_DEEP) from None
    if not isinstance(body, dict):
        raise BadRequest(f"The request body must be a JSON object, not {json_kind(body)}.")
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
