"""Rewriting bodies: decoding strictly (jsonbody), planning each mode (modes), applying, and writing the rest back
untouched."""

from __future__ import annotations

import gzip
import zlib
from decimal import Decimal
from typing import Any

import pytest
import simplejson

from proxy.attribution import check_query
from proxy.errors import (
    BadRequest,
    Forbidden,
    PayloadTooLarge,
    ProxyError,
    Unprocessable,
    UnsupportedMediaType,
)
from proxy.jsonbody import decode_body, encode_body, render
from proxy.modes import ActiveRecruiters, Caller, Mode, Plan, Write, apply, plan
from proxy.rules import FieldRule, Rule, ValueSource

ME = "f47ac10b-58cc-4372-a567-0e02b2c3d479"
COLLEAGUE = "0b7e5f8c-1d2a-4c3b-9e8f-7a6b5c4d3e2f"
STRANGER = "99999999-9999-4999-8999-999999999999"
CALLER = Caller(recruiter_id=ME, user_id="portal-42", email="bob@agency.example")
ACTIVE = ActiveRecruiters(frozenset({ME, COLLEAGUE}))
JSON = "application/json"
MAX = 1024


def _decode(raw: bytes, content_type: str | None = JSON, encoding: str | None = None) -> dict[str, Any]:
    return decode_body(raw, content_type, encoding, MAX).data


def _rule(*fields: tuple[str, str, ValueSource]) -> Rule:
    return Rule(
        "POST",
        "/x",
        tuple(FieldRule(tuple(name.split(".")), Mode(mode), value) for name, mode, value in fields),
    )


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


# -- Numbers, order and unicode survive the round trip -------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"n":1180591620717411303424}', id="int-2**70"),
        pytest.param(b'{"n":-1180591620717411303424}', id="negative-int-2**70"),
        pytest.param(b'{"n":0.1}', id="0.1"),
        pytest.param(b'{"n":1.10}', id="1.10-trailing-zero"),
        pytest.param(b'{"n":1e400}', id="1e400-beyond-double"),
        pytest.param(b'{"n":1E-7}', id="small-exponent"),
        pytest.param(b'{"n":0.1e1}', id="odd-spelling"),
        pytest.param(b'{"n":-0}', id="negative-zero-int"),
        pytest.param(b'{"n":-0.0}', id="negative-zero-decimal"),
        pytest.param(b'{"n":3.141592653589793238462643383279}', id="long-decimal"),
        pytest.param(b'{"n":' + b"9" * 5000 + b"}", id="5000-digit-int"),
        pytest.param(b'{"n":[1,2.50,{"m":100000000000000000001}]}', id="nested-numbers"),
        pytest.param(b'{"z":1,"a":2,"m":{"y":1,"b":2}}', id="key-order"),
        pytest.param('{"name":"Zoë ☃ 😀 \u2028","ключ":"值"}'.encode(), id="unicode"),
        pytest.param(b'{"t":true,"f":false,"n":null,"e":"","l":[],"o":{}}', id="literals-and-empties"),
        pytest.param(b'{"s":"quote \\" backslash \\\\ newline \\n tab \\t"}', id="escapes"),
    ],
)
def test_round_trip_is_exact(raw: bytes) -> None:
    """Compact input comes back byte for byte: numbers, key order and unicode untouched."""
    assert encode_body(decode_body(raw, JSON, None, 100_000).data) == raw


def test_numbers_never_become_floats() -> None:
    """Decimals are Decimal and big integers stay exact: nothing passes through a binary float."""
    body = _decode(b'{"a":0.1,"b":1180591620717411303424,"c":1e400,"d":[1.10]}')
    assert body["a"] == Decimal("0.1") and not isinstance(body["a"], float)
    assert body["b"] == 2**70
    assert body["c"] == Decimal("1e400")
    assert str(body["d"][0]) == "1.10"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(b'{ "a" : 1 ,\n "b" : [ 1 , 2 ] }', b'{"a":1,"b":[1,2]}', id="whitespace-compacted"),
        pytest.param(b'{"e":"\\u00e9\\ud83d\\ude00"}', '{"e":"é😀"}'.encode(), id="escapes-become-utf8"),
        pytest.param(b'\xef\xbb\xbf{"a":1}', b'{"a":1}', id="bom-stripped"),
    ],
)
def test_reencoding(raw: bytes, expected: bytes) -> None:
    """Insignificant spelling is normalised; values stay the same."""
    assert encode_body(_decode(raw)) == expected


# -- Refusals while decoding ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param(b'{"postedBy":"a","postedBy":"b"}', "the key 'postedBy' twice", id="duplicate-key"),
        pytest.param(b'{"m":{"by":"a","by":"b"}}', "the key 'by' twice", id="duplicate-nested"),
        pytest.param(b'{"l":[{"x":1},{"x":1,"x":2}]}', "the key 'x' twice", id="duplicate-in-array"),
        pytest.param(b'{"a":1,"\\u0061":2}', "the key 'a' twice", id="duplicate-escaped"),
        pytest.param(
            b'{"a": 1,}',
            "not valid JSON: Illegal trailing comma before end of object at line 1, column 8",
            id="trailing-comma",
        ),
        pytest.param(b'{\n  "a": 1\n  "b": 2\n}', "at line 3, column 3", id="position-line-3"),
        pytest.param(b'{"a": 1} x', "Extra data at line 1, column 10", id="trailing-data"),
        pytest.param(b"{'a': 1}", "at line 1, column 2", id="single-quotes"),
        pytest.param(b'{"a": NaN}', "Expecting value at line 1, column 7", id="nan"),
        pytest.param(b'{"a": Infinity}', "Expecting value at line 1, column 7", id="infinity"),
        pytest.param(b'{"a": -Infinity}', "at line 1, column 7", id="minus-infinity"),
        pytest.param(b'{"a": "\x01"}', "Invalid control character", id="raw-control-char"),
        pytest.param(b"[1, 2]", "must be a JSON object, not an array", id="array"),
        pytest.param(b'"text"', "must be a JSON object, not a string", id="string"),
        pytest.param(b"42", "must be a JSON object, not a number", id="number"),
        pytest.param(b"null", "must be a JSON object, not null", id="null"),
        pytest.param(b"true", "must be a JSON object, not a boolean", id="boolean"),
        pytest.param(b"   ", "Expecting value at line 1, column 4", id="whitespace-only"),
        pytest.param(b'{"a": "\xff"}', "not valid UTF-8 (at byte 7)", id="invalid-utf8"),
        pytest.param(b'{"a": "\xed\xa0\x80"}', "not valid UTF-8", id="encoded-surrogate"),
        pytest.param('{"a": 1}'.encode("utf-16"), "not valid UTF-8", id="utf16"),
        pytest.param(b'{"a": "\\ud800"}', "unpaired UTF-16 surrogate", id="lone-high-surrogate"),
        pytest.param(b'{"\\udc00": 1}', "unpaired UTF-16 surrogate", id="lone-surrogate-in-key"),
        pytest.param(b'{"a":' * 5000 + b"1" + b"}" * 5000, "nested too deeply", id="too-deep"),
        pytest.param(b'\xef\xbb\xbf\xef\xbb\xbf{"a":1}', "at line 1, column 1", id="second-bom"),
        pytest.param('\xef\xbb\xbf{"a":1}'.encode(), "at line 1, column 1", id="bom-read-as-latin-1"),
    ],
)
def test_decode_refuses_with_400(raw: bytes, message: str) -> None:
    """A body that is not one unambiguous JSON object is a 400 saying why (and where)."""
    with pytest.raises(BadRequest) as caught:
        decode_body(raw, JSON, None, 100_000)
    assert message in caught.value.message
    assert caught.value.status_code == 400


def test_escaped_backslash_before_u_is_not_a_surrogate() -> None:
    """A literal backslash followed by 'ud800' is ordinary text."""
    assert _decode(b'{"a":"\\\\ud800"}') == {"a": "\\ud800"}


# -- Content types ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "content_type", "expected"),
    [
        pytest.param(b"", None, {}, id="empty-no-type"),
        pytest.param(b"", JSON, {}, id="empty-json"),
        pytest.param(b'{"a":1}', JSON, {"a": 1}, id="json"),
        pytest.param(b'{"a":1}', "application/json; charset=utf-8", {"a": 1}, id="charset-utf-8"),
        pytest.param(b'{"a":1}', 'Application/JSON;Charset="UTF-8"', {"a": 1}, id="case-and-quotes"),
        pytest.param(b'{"a":1}', "application/json; charset=utf8", {"a": 1}, id="charset-utf8"),
        pytest.param(b'{"a":1}', "application/vnd.api+json", {"a": 1}, id="vnd-api-json"),
        pytest.param(b'{"a":1}', "application/merge-patch+json; charset=utf-8", {"a": 1}, id="merge-patch"),
        pytest.param(b'{"a":1}', "application/json; boundary=x", {"a": 1}, id="other-parameter"),
    ],
)
def test_json_content_types(raw: bytes, content_type: str | None, expected: dict[str, Any]) -> None:
    """JSON is application/json or any +json type, parameters allowed; an empty body is an empty object."""
    assert decode_body(raw, content_type, None, MAX).data == expected


@pytest.mark.parametrize(
    ("raw", "content_type", "message"),
    [
        pytest.param(b'{"a":1}', None, "has no Content-Type", id="body-without-type"),
        pytest.param(b'{"a":1}', "", "has no Content-Type", id="blank-type"),
        pytest.param(b'{"a":1}', "text/plain", "is text/plain", id="text-plain"),
        pytest.param(b"", "text/plain", "is text/plain", id="empty-text-plain"),
        pytest.param(b"a=1", "application/x-www-form-urlencoded", "x-www-form-urlencoded", id="form"),
        pytest.param(b"--x", "multipart/form-data; boundary=x", "multipart/form-data", id="multipart"),
        pytest.param(b'{"a":1}', "application/jsonx", "application/jsonx", id="lookalike"),
        pytest.param(b'{"a":1}', "json", "is json", id="no-subtype"),
        pytest.param(b'{"a":1}', "text/json", "is text/json", id="text-json"),
        pytest.param(b'{"a":1}', "application/json; charset=latin-1", "not charset latin-1", id="latin-1"),
        pytest.param(b'{"a":1}', "application/json; charset=utf-16", "not charset utf-16", id="utf-16"),
    ],
)
def test_other_content_types_are_415(raw: bytes, content_type: str | None, message: str) -> None:
    """Anything but UTF-8 JSON on a rule route is refused with 415."""
    with pytest.raises(UnsupportedMediaType) as caught:
        decode_body(raw, content_type, None, MAX)
    assert message in caught.value.message


# -- Content encodings ---------------------------------------------------------------------------------------

BODY = b'{"title":"Senior Developer","salary_min":80000}'


@pytest.mark.parametrize(
    ("raw", "encoding"),
    [
        pytest.param(BODY, None, id="none"),
        pytest.param(BODY, "identity", id="identity"),
        pytest.param(gzip.compress(BODY), "gzip", id="gzip"),
        pytest.param(gzip.compress(BODY), "GZIP", id="gzip-uppercase"),
        pytest.param(gzip.compress(BODY), "x-gzip", id="x-gzip"),
        pytest.param(gzip.compress(BODY), "identity, gzip", id="identity-and-gzip"),
        pytest.param(gzip.compress(BODY[:10]) + gzip.compress(BODY[10:]), "gzip", id="gzip-two-members"),
        pytest.param(zlib.compress(BODY), "deflate", id="deflate-zlib"),
        pytest.param(_raw_deflate(BODY), "deflate", id="deflate-raw"),
        pytest.param(b"", "gzip", id="empty-gzip"),
    ],
)
def test_encodings_decoded(raw: bytes, encoding: str | None) -> None:
    """gzip and deflate bodies are decoded before rewriting (and sent on plain)."""
    expected = {"title": "Senior Developer", "salary_min": 80000} if raw else {}
    assert decode_body(raw, JSON, encoding, MAX).data == expected


@pytest.mark.parametrize(
    "encoding",
    [
        pytest.param("br", id="br"),
        pytest.param("zstd", id="zstd"),
        pytest.param("compress", id="compress"),
        pytest.param("gzip, gzip", id="gzip-twice"),
        pytest.param("deflate, gzip", id="two-codings"),
        pytest.param("chunked", id="not-a-content-coding"),
    ],
)
def test_other_encodings_are_415(encoding: str) -> None:
    """Encodings the proxy cannot decode, or more than one, are refused with 415."""
    with pytest.raises(UnsupportedMediaType):
        decode_body(b"xxxx", JSON, encoding, MAX)


@pytest.mark.parametrize(
    ("raw", "encoding", "error", "message"),
    [
        pytest.param(b"x" * (MAX + 1), None, PayloadTooLarge, "larger than 1024 bytes", id="raw-too-large"),
        pytest.param(
            gzip.compress(b" " * (MAX + 1)), "gzip", PayloadTooLarge, "once decompressed", id="gzip-just-over"
        ),
        pytest.param(b"not gzip at all", "gzip", BadRequest, "not valid gzip data", id="not-gzip"),
        pytest.param(gzip.compress(BODY)[:-12], "gzip", BadRequest, "truncated", id="truncated-gzip"),
        pytest.param(
            zlib.compress(BODY) + b"junk", "deflate", BadRequest, "after the end", id="deflate-trailer"
        ),
        pytest.param(gzip.compress(BODY) + b"junk", "gzip", BadRequest, "not valid gzip", id="gzip-trailer"),
    ],
)
def test_encoding_limits_and_corruption(
    raw: bytes, encoding: str | None, error: type[ProxyError], message: str
) -> None:
    """Decompression stops at max_bytes (413); corrupt or truncated data is a 400."""
    with pytest.raises(error) as caught:
        decode_body(raw, JSON, encoding, MAX)
    assert message in caught.value.message


@pytest.mark.parametrize(
    "encoding",
    [pytest.param("gzip", id="gzip"), pytest.param("deflate", id="deflate")],
)
def test_decompression_bomb_stops_at_max_bytes(encoding: str) -> None:
    """20 MB of zeros in about 20 kB: decompression stops just past max_bytes with a 413."""
    zeros = b'{"a":"' + b"0" * 20_000_000 + b'"}'
    bomb = gzip.compress(zeros, 9) if encoding == "gzip" else zlib.compress(zeros, 9)
    assert len(bomb) < 100_000
    with pytest.raises(PayloadTooLarge, match="once decompressed"):
        decode_body(bomb, JSON, encoding, 100_000)


def test_gzip_exactly_max_bytes_is_fine() -> None:
    """The limit is inclusive."""
    body = b'{"a":"' + b"x" * (MAX - 8) + b'"}'
    assert len(body) == MAX
    assert decode_body(gzip.compress(body), JSON, "gzip", MAX).data == {"a": "x" * (MAX - 8)}


# -- Planning: one row per mode and case ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "body", "writes", "refusal"),
    [
        # set: always written
        pytest.param(("postedBy", "set", "recruiter"), {}, {"postedBy": ME}, None, id="set-absent"),
        pytest.param(
            ("postedBy", "set", "recruiter"), {"postedBy": None}, {"postedBy": ME}, None, id="set-null"
        ),
        pytest.param(
            ("postedBy", "set", "recruiter"),
            {"postedBy": STRANGER},
            {"postedBy": ME},
            None,
            id="set-overwrites",
        ),
        pytest.param(
            ("postedBy", "set", "recruiter"), {"postedBy": ME}, {"postedBy": ME}, None, id="set-same"
        ),
        pytest.param(
            ("postedBy", "set", "recruiter"), {"postedBy": 7}, {"postedBy": ME}, None, id="set-over-number"
        ),
        # default: only when absent or null
        pytest.param(("notes", "default", "email"), {}, {"notes": CALLER.email}, None, id="default-absent"),
        pytest.param(
            ("notes", "default", "email"), {"notes": None}, {"notes": CALLER.email}, None, id="default-null"
        ),
        pytest.param(("notes", "default", "email"), {"notes": "mine"}, {}, None, id="default-present-kept"),
        pytest.param(("notes", "default", "email"), {"notes": ""}, {}, None, id="default-empty-string-kept"),
        # enforce: absent written, equal kept, different refused
        pytest.param(
            ("approvedBy", "enforce", "recruiter"), {}, {"approvedBy": ME}, None, id="enforce-absent"
        ),
        pytest.param(
            ("approvedBy", "enforce", "recruiter"),
            {"approvedBy": None},
            {"approvedBy": ME},
            None,
            id="enforce-null",
        ),
        pytest.param(
            ("approvedBy", "enforce", "recruiter"), {"approvedBy": ME}, {}, None, id="enforce-equal"
        ),
        pytest.param(
            ("approvedBy", "enforce", "recruiter"),
            {"approvedBy": ME.upper()},
            {},
            None,
            id="enforce-equal-any-case",
        ),
        pytest.param(
            ("approvedBy", "enforce", "recruiter"),
            {"approvedBy": STRANGER},
            {},
            Forbidden,
            id="enforce-different",
        ),
        pytest.param(
            ("approvedBy", "enforce", "recruiter"),
            {"approvedBy": ""},
            {},
            Forbidden,
            id="enforce-empty-string",
        ),
        pytest.param(
            ("approvedBy", "enforce", "recruiter"),
            {"approvedBy": [ME]},
            {},
            Forbidden,
            id="enforce-not-a-string",
        ),
        pytest.param(
            ("owner", "enforce", "user_id"),
            {"owner": "PORTAL-42"},
            {},
            Forbidden,
            id="enforce-user-id-is-exact",
        ),
        pytest.param(
            ("mail", "enforce", "email"),
            {"mail": "BOB@agency.example"},
            {},
            None,
            id="enforce-email-any-case",
        ),
        # reference: caller's ID when absent; else an active recruiter of the agency
        pytest.param(
            ("interviewerId", "reference", "recruiter"),
            {},
            {"interviewerId": ME},
            None,
            id="reference-absent",
        ),
        pytest.param(
            ("interviewerId", "reference", "recruiter"),
            {"interviewerId": None},
            {"interviewerId": ME},
            None,
            id="reference-null",
        ),
        pytest.param(
            ("interviewerId", "reference", "recruiter"),
            {"interviewerId": COLLEAGUE},
            {},
            None,
            id="reference-colleague",
        ),
        pytest.param(
            ("interviewerId", "reference", "recruiter"),
            {"interviewerId": COLLEAGUE.upper()},
            {},
            None,
            id="reference-any-case",
        ),
        pytest.param(
            ("interviewerId", "reference", "recruiter"), {"interviewerId": ME}, {}, None, id="reference-self"
        ),
        pytest.param(
            ("interviewerId", "reference", "recruiter"),
            {"interviewerId": STRANGER},
            {},
            Unprocessable,
            id="reference-stranger",
        ),
        pytest.param(
            ("interviewerId", "reference", "recruiter"),
            {"interviewerId": 12},
            {},
            Unprocessable,
            id="reference-number",
        ),
        pytest.param(
            ("interviewerId", "reference", "recruiter"),
            {"interviewerId": ""},
            {},
            Unprocessable,
            id="reference-empty",
        ),
        # values and dotted paths
        pytest.param(("by", "set", "user_id"), {}, {"by": "portal-42"}, None, id="value-user-id"),
        pytest.param(
            ("metadata.performedBy", "set", "recruiter"),
            {},
            {"metadata.performedBy": ME},
            None,
            id="dotted-created",
        ),
        pytest.param(
            ("metadata.performedBy", "set", "recruiter"),
            {"metadata": None},
            {"metadata.performedBy": ME},
            None,
            id="dotted-null-parent",
        ),
        pytest.param(
            ("metadata.performedBy", "default", "recruiter"),
            {"metadata": {"performedBy": "x"}},
            {},
            None,
            id="dotted-present",
        ),
        pytest.param(
            ("metadata.performedBy", "set", "recruiter"),
            {"metadata": "text"},
            {},
            BadRequest,
            id="dotted-parent-string",
        ),
        pytest.param(
            ("metadata.performedBy", "set", "recruiter"),
            {"metadata": [1]},
            {},
            BadRequest,
            id="dotted-parent-array",
        ),
        pytest.param(
            ("a.b.c", "set", "recruiter"), {"a": {"b": 5}}, {}, BadRequest, id="dotted-deep-parent-number"
        ),
    ],
)
def test_plan(
    field: tuple[str, str, ValueSource],
    body: dict[str, Any],
    writes: dict[str, str],
    refusal: type[ProxyError] | None,
) -> None:
    """Each mode writes, keeps or refuses exactly as specified."""
    result = plan(_rule(field), body, CALLER, ACTIVE)
    assert {w.field: w.value for w in result.writes} == writes
    if refusal is None:
        assert result.refusal is None
    else:
        assert type(result.refusal) is refusal
        assert field[0].split(".")[0] in result.refusal.message  # the message names the field


@pytest.mark.parametrize(
    ("field", "body", "caller"),
    [
        pytest.param(("postedBy", "set", "recruiter"), {}, Caller(None, "u", "e@x"), id="no-recruiter-id"),
        pytest.param(
            ("postedBy", "enforce", "recruiter"),
            {"postedBy": ME},
            Caller(None, "u", "e@x"),
            id="enforce-no-id",
        ),
        pytest.param(("contact", "default", "email"), {}, Caller(ME, "u", None), id="no-email"),
        pytest.param(
            ("interviewerId", "reference", "recruiter"), {}, Caller(None, "u", None), id="reference-no-id"
        ),
    ],
)
def test_missing_caller_value_is_403(
    field: tuple[str, str, ValueSource], body: dict[str, Any], caller: Caller
) -> None:
    """A value the session does not have cannot be written: 403, naming the field."""
    result = plan(_rule(field), body, caller, ACTIVE)
    assert isinstance(result.refusal, Forbidden)
    assert field[0] in result.refusal.message and "your session has none" in result.refusal.message


def test_reference_empty_without_recruiter_id_is_422() -> None:
    """An empty interviewerId is not the caller's ID just because the caller has none."""
    result = plan(
        _rule(("interviewerId", "reference", "recruiter")),
        {"interviewerId": ""},
        Caller(None, "u", None),
        ACTIVE,
    )
    assert isinstance(result.refusal, Unprocessable)


@pytest.mark.parametrize(
    ("field", "body"),
    [
        pytest.param(("contact", "default", "email"), {"contact": "x"}, id="default-present"),
        pytest.param(
            ("interviewerId", "reference", "recruiter"), {"interviewerId": COLLEAGUE}, id="reference-present"
        ),
    ],
)
def test_missing_caller_value_not_needed(field: tuple[str, str, ValueSource], body: dict[str, Any]) -> None:
    """A value that would not be written is not needed."""
    assert plan(_rule(field), body, Caller(None, "u", None), ACTIVE) == Plan((), None)


def test_refusal_messages() -> None:
    """Refusals are one readable sentence naming the field."""
    enforce = plan(_rule(("postedBy", "enforce", "recruiter")), {"postedBy": STRANGER}, CALLER, ACTIVE)
    reference = plan(
        _rule(("interviewerId", "reference", "recruiter")), {"interviewerId": STRANGER}, CALLER, ACTIVE
    )
    blocked = plan(_rule(("metadata.by", "set", "recruiter")), {"metadata": "x"}, CALLER, ACTIVE)
    assert enforce.refusal is not None and reference.refusal is not None and blocked.refusal is not None
    assert (
        enforce.refusal.message
        == f"The field postedBy must be your own BPOC recruiter ID ({ME}), or left out."
    )
    assert reference.refusal.message == (
        f"The field interviewerId names '{STRANGER}', which is not an active recruiter of this agency."
    )
    assert (
        blocked.refusal.message
        == "The field metadata.by cannot be written because metadata is a string, not an object."
    )


def test_plan_goes_on_past_a_refusal() -> None:
    """Report-only mode sees every write; the first refusal is the one kept."""
    rule = _rule(
        ("approvedBy", "enforce", "recruiter"),
        ("scheduledBy", "set", "recruiter"),
        ("interviewerId", "reference", "recruiter"),
    )
    result = plan(rule, {"approvedBy": STRANGER, "interviewerId": STRANGER}, CALLER, ACTIVE)
    assert result.writes == (Write("scheduledBy", ME, Mode.SET),)
    assert isinstance(result.refusal, Forbidden)


def test_plan_does_not_touch_the_body() -> None:
    """Planning is pure: the body is only read."""
    body: dict[str, Any] = {"metadata": None}
    plan(_rule(("metadata.by", "set", "recruiter")), body, CALLER, ACTIVE)
    assert body == {"metadata": None}


# -- Applying ------------------------------------------------------------------------------------------------


def test_apply_end_to_end() -> None:
    """Writes land in place or at the end; everything else keeps its order, spelling and unicode."""
    raw = '{"z":1.10,"postedBy":"someone","name":"Zoë","n":1180591620717411303424,"metadata":{"k":0.1}}'.encode()
    rule = _rule(
        ("postedBy", "set", "recruiter"),
        ("metadata.performedBy", "set", "user_id"),
        ("audit.by.email", "default", "email"),
    )
    body = decode_body(raw, JSON, None, MAX).data
    result = plan(rule, body, CALLER, ACTIVE)
    out = apply(body, result)
    assert out is body  # mutated in place and returned
    assert (
        encode_body(out)
        == (
            '{"z":1.10,"postedBy":"' + ME + '","name":"Zoë","n":1180591620717411303424,'
            '"metadata":{"k":0.1,"performedBy":"portal-42"},"audit":{"by":{"email":"bob@agency.example"}}}'
        ).encode()
    )


def test_apply_to_empty_body() -> None:
    """An empty body becomes a JSON object with the field."""
    body = decode_body(b"", None, None, MAX).data
    rule = _rule(("postedBy", "set", "recruiter"))
    assert encode_body(apply(body, plan(rule, body, CALLER, ACTIVE))) == f'{{"postedBy":"{ME}"}}'.encode()


def test_apply_raises_the_refusal() -> None:
    """A refused plan is never applied, even if the caller forgot to check."""
    refusal = Forbidden("postedBy must be your own BPOC recruiter ID.")
    body = {"postedBy": STRANGER}
    with pytest.raises(Forbidden):
        apply(body, Plan((Write("postedBy", ME, Mode.SET),), refusal))
    assert body == {"postedBy": STRANGER}


def test_apply_replaces_null_parent() -> None:
    """A null object on the way is replaced by an object."""
    body: dict[str, Any] = {"metadata": None}
    assert apply(body, Plan((Write("metadata.by", ME, Mode.SET),))) == {"metadata": {"by": ME}}


@pytest.mark.parametrize(
    ("raw", "sent"),
    [
        pytest.param(b'{"a": 1.10}', b'{"a": 1.10,"postedBy":"%s"}', id="added-before-the-brace"),
        pytest.param(b'{"a": 1}\r\n', b'{"a": 1,"postedBy":"%s"}\r\n', id="trailing-whitespace-kept"),
        pytest.param(b"{\n}", b'{\n"postedBy":"%s"}', id="empty-object"),
        pytest.param(b"", b'{"postedBy":"%s"}', id="empty-body"),
        pytest.param(
            b'{"posted\\u0042y": "x"}', b'{"postedBy":"%s"}', id="escaped-key-counts-as-sent-and-is-replaced"
        ),
        pytest.param(
            b'{"postedBy": null, "b": 2}', b'{"postedBy":"%s","b":2}', id="null-is-replaced-in-place"
        ),
    ],
)
def test_render_adds_new_fields_to_the_text_and_re_encodes_otherwise(raw: bytes, sent: bytes) -> None:
    body = decode_body(raw, JSON, None, MAX)
    rule = _rule(("postedBy", "set", "recruiter"))
    rendered = render(body, plan(rule, body.data, CALLER, ACTIVE))
    assert rendered == sent % ME.encode()
    assert simplejson.loads(rendered)["postedBy"] == ME


def test_render_re_encodes_for_a_nested_field_and_raises_a_refusal() -> None:
    body = decode_body(b'{"z": 1,  "metadata": {"k": 1}}', JSON, None, MAX)
    nested = render(body, plan(_rule(("metadata.by", "set", "user_id")), body.data, CALLER, ACTIVE))
    assert nested == b'{"z":1,"metadata":{"k":1,"by":"portal-42"}}'
    refused = decode_body(b'{"releasedBy": "%s"}' % STRANGER.encode(), JSON, None, MAX)
    rule = _rule(("releasedBy", "enforce", "recruiter"))
    with pytest.raises(Forbidden):
        render(refused, plan(rule, refused.data, CALLER, ACTIVE))


# -- Query parameters ----------------------------------------------------------------------------------------

QUERY_RULE = _rule(("postedBy", "set", "recruiter"), ("metadata.performedBy", "set", "recruiter"))


@pytest.mark.parametrize(
    "query",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"page=2&sort=asc", id="unrelated"),
        pytest.param(b"q=postedBy", id="field-name-as-value"),
        pytest.param(b"postedByX=1&xpostedBy=1", id="longer-names"),
        pytest.param(b"performedBy=1", id="nested-leaf-alone"),
        pytest.param(b"&&=&", id="empty-names"),
    ],
)
def test_query_allowed(query: bytes) -> None:
    """Query parameters that do not name a field pass."""
    check_query(QUERY_RULE, query)


@pytest.mark.parametrize(
    "query",
    [
        pytest.param(b"postedBy=x", id="same-name"),
        pytest.param(b"page=1&POSTEDBY=x", id="other-case"),
        pytest.param(b"%70osted%42y=x", id="percent-encoded"),
        pytest.param(b"postedBy", id="no-value"),
        pytest.param(b"postedBy[]=x", id="array-brackets"),
        pytest.param(b"a=1;postedBy=x", id="semicolon-separator"),
        pytest.param(b"metadata=x", id="top-level-of-dotted"),
        pytest.param(b"metadata.performedBy=x", id="full-dotted"),
        pytest.param(b"metadata[performedBy]=x", id="bracket-dotted"),
        pytest.param(b"metadata[other]=x", id="bracket-into-written-object"),
    ],
)
def test_query_shadowing_a_field_is_400(query: bytes) -> None:
    """A query parameter named like a field is refused: BPOC might read it instead of the body."""
    with pytest.raises(BadRequest, match="has the name of a field the proxy writes"):
        check_query(QUERY_RULE, query)
