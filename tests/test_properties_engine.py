"""Property: the forwarding engine reads a response exactly as h11 does, or refuses it; it never delivers what
h11 would not.

Drives ``proxy.engine.Engine`` directly (on uvloop, as the proxy runs), against a raw asyncio server on
127.0.0.1 that answers one request with bytes drawn by hypothesis, written in random pieces (one TCP write
each, the loop turning between them), then closes the connection. The responses: 1xx interim responses before
the final one, Content-Length, chunked with random chunk boundaries, sizes in either case with leading zeros,
chunk extensions and trailers, close-delimited bodies, HTTP/1.0, HEAD, 204 and 304; and malformed framing: two
Content-Lengths, negative or odd ones, Content-Length with Transfer-Encoding, transfer codings other than
chunked, bad chunk sizes, chunks longer or shorter than announced, a missing last CRLF, junk after the body,
bare LF, obs-fold, a space before the colon, NUL and CR in values, bad status lines, truncation, a flipped byte.

The reference is h11 (a well-kept HTTP/1.1 implementation) fed the same bytes and the end of the stream. For
the final response:

* if the engine delivers it (status, headers and the whole body, without an EngineError), h11 parsed it too,
  and the status, the headers (names in lower case, values as h11 gives them) and the body bytes are equal,
  and the headers stay what they were when the engine returned them (trailers are not headers);
* a response drawn from the well-formed branch is delivered, not refused (so the property is not vacuous);
* the engine never hangs: every exchange ends within a generous bound (the engine's own clock is frozen, so
  none of its timeouts can be what ends it).

A refusal is an EngineError, which ``proxy/upstream.py`` turns into a 502.
"""

from __future__ import annotations

import asyncio
import string
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import h11
import pytest
import uvloop
from hypothesis import event, example, given
from hypothesis import strategies as st

from proxy.engine import Engine, EngineError

from .property_support import property_settings, rarely, weighted

TOKEN_CHARS = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
FRAMING = frozenset({"content-length", "transfer-encoding"})
#: Bound on one exchange: generous (it takes milliseconds); only a hang reaches it.
HANG = 20.0


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        yield runner


# --- Drawing responses ----------------------------------------------------------------------------------------

HEADER_NAME = st.text(TOKEN_CHARS, min_size=1, max_size=12).filter(lambda n: n.lower() not in FRAMING)
# field-value: visible characters and obs-text, with spaces and tabs inside (RFC 9110 section 5.5).
HEADER_VALUE = st.builds(
    lambda chars: bytes(chars).strip(b" \t"),
    st.lists(st.sampled_from([*range(0x21, 0x7F), 0x20, 0x09, *range(0x80, 0x100)]), max_size=20),
)
HEADERS = st.lists(st.tuples(HEADER_NAME.map(str.encode), HEADER_VALUE), max_size=4)
REASON = st.sampled_from([b"OK", b"", b"Not Found", b"Some Reason phrase", b"\xe9t\xe9"])
BODY = st.binary(max_size=300)


@dataclass(frozen=True)
class WireResponse:
    method: str  # the request the engine sends: GET, HEAD or POST
    data: bytes  # everything the server writes before it closes
    cuts: tuple[int, ...]  # where the writes are split
    well_formed: bool  # drawn from the well-formed branch: the engine must deliver it
    what: str  # a label for statistics and failure reports

    def pieces(self) -> list[bytes]:
        points = [0, *sorted({c % (len(self.data) + 1) for c in self.cuts}), len(self.data)]
        return [self.data[a:b] for a, b in zip(points, points[1:], strict=False) if b > a]

    def __repr__(self) -> str:
        return f"WireResponse({self.method}, {self.what}, well_formed={self.well_formed}, cuts={self.cuts}, data={self.data!r})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


def head_block(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\r\n" for line in lines) + b"\r\n"


def header_lines(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [name + b": " + value for name, value in headers]


@st.composite
def chunked_body(draw: st.DrawFn, body: bytes) -> tuple[list[bytes], bytes]:
    """The chunks (each ``size[;ext]\\r\\ndata\\r\\n``) of ``body``, and the end: ``0``, trailers, CRLF."""
    cuts = sorted(set(draw(st.lists(st.integers(0, len(body)), max_size=5))))
    points = [0, *cuts, len(body)]
    chunks = []
    for a, b in zip(points, points[1:], strict=False):
        if b == a:
            continue
        size = f"{b - a:x}"
        size = size.upper() if draw(st.booleans()) else size
        size = "0" * draw(st.integers(0, 2)) + size
        chunks.append(size.encode() + draw(_extension()) + b"\r\n" + body[a:b] + b"\r\n")
    trailers = draw(HEADERS) if rarely(draw, 3) else []
    last = b"0" * draw(st.integers(1, 2)) + draw(_extension()) + b"\r\n"
    return chunks, last + b"".join(line + b"\r\n" for line in header_lines(trailers)) + b"\r\n"


@st.composite
def _extension(draw: st.DrawFn) -> bytes:
    """A chunk extension (RFC 9112 section 7.1.1), usually none."""
    if not rarely(draw, 4):
        return b""
    name = draw(st.text(TOKEN_CHARS, min_size=1, max_size=5)).encode()
    value: bytes = weighted(
        draw,
        (1, b""),
        (1, b"=" + draw(st.text(TOKEN_CHARS, min_size=1, max_size=5)).encode()),
        (1, b'="quoted ; value"'),
    )
    return b";" + name + value


@st.composite
def well_formed(draw: st.DrawFn) -> WireResponse:
    method = weighted(draw, (4, "GET"), (1, "HEAD"), (1, "POST"))
    interim = [
        head_block(
            [
                b"HTTP/1.1 %d %s" % (draw(st.sampled_from([100, 102, 103])), b"Info"),
                *header_lines(draw(HEADERS)),
            ]
        )
        for _ in range(weighted(draw, (6, 0), (2, 1), (1, 2)))
    ]
    version = weighted(draw, (6, b"HTTP/1.1"), (1, b"HTTP/1.0"))
    status = weighted(
        draw,
        (6, 200),
        (4, draw(st.sampled_from([201, 204, 301, 304, 400, 404, 429, 500, 503]))),
        (1, draw(st.integers(200, 599))),
    )
    headers = draw(HEADERS)
    body = draw(BODY)
    if rarely(draw, 20):  # past the engine's read-side high-water mark: reading pauses and resumes
        body = bytes(range(256)) * draw(st.sampled_from([300, 1200]))
    bodiless = method == "HEAD" or status in (204, 304)
    framing = (
        weighted(draw, (3, "length"), (3, "chunked"), (1, "close"))
        if version == b"HTTP/1.1"
        else weighted(draw, (1, "length"), (1, "close"))
    )
    tail = b""
    if bodiless:
        # A HEAD or 304 answer may announce the length of the body it does not carry; a 204 announces none.
        if status != 204 and rarely(draw, 2):
            headers.append((b"Content-Length", str(len(body)).encode()))
        what = "bodiless"
    elif framing == "length":
        headers.append((b"Content-Length", str(len(body)).encode()))
        tail = body
        what = "content-length"
    elif framing == "chunked":
        headers.append((b"Transfer-Encoding", b"chunked"))
        chunks, end = draw(chunked_body(body))
        tail = b"".join(chunks) + end
        what = "chunked"
    else:
        tail = body
        what = "close-delimited"
    if rarely(draw, 5):
        headers.append((b"Connection", draw(st.sampled_from([b"close", b"keep-alive"]))))
    order = draw(st.permutations(headers))
    status_line = version + b" %d %s" % (status, draw(REASON))
    data = b"".join(interim) + head_block([status_line, *header_lines(list(order))]) + tail
    cuts = tuple(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    return WireResponse(method, data, cuts, True, what + (f"+{len(interim)}xx" if interim else ""))


# Malformations: each takes the well-formed bytes (and what they are) and spoils them.
def _replace_header(data: bytes, name: bytes, lines: list[bytes]) -> bytes:
    head, sep, rest = data.partition(b"\r\n\r\n")
    kept = [line for line in head.split(b"\r\n") if not line.lower().startswith(name.lower() + b":")]
    return b"\r\n".join(kept[:1] + lines + kept[1:]) + sep + rest


def _final_head_end(data: bytes) -> int:
    """Where the final response's head ends (after any interim responses)."""
    start = 0
    while True:
        end = data.find(b"\r\n\r\n", start)
        if end == -1 or not data[start:].startswith(b"HTTP/1.1 1"):
            return end
        start = end + 4


@st.composite
def malformed(draw: st.DrawFn) -> WireResponse:
    base = draw(well_formed())
    data = base.data
    how = draw(
        st.sampled_from(
            [
                "two-lengths",
                "two-same-lengths",
                "negative-length",
                "odd-length",
                "length-and-chunked",
                "transfer-coding",
                "bad-chunk-size",
                "chunk-data-mismatch",
                "missing-last-crlf",
                "junk-after",
                "bare-lf",
                "obs-fold",
                "space-before-colon",
                "control-in-value",
                "no-colon",
                "bad-status-line",
                "truncated",
                "flipped-byte",
            ]
        )
    )
    end = _final_head_end(data)
    head, body = (data[: end + 4], data[end + 4 :]) if end != -1 else (data, b"")
    if how == "two-lengths":
        n = len(body)
        data = (
            _replace_header(
                head,
                b"content-length",
                [b"Content-Length: %d" % n, b"Content-Length: %d" % (n + draw(st.integers(1, 5)))],
            )
            + body
        )
    elif how == "two-same-lengths":
        data = _replace_header(head, b"content-length", [b"Content-Length: %d" % len(body)] * 2) + body
    elif how == "negative-length":
        data = _replace_header(head, b"content-length", [b"Content-Length: -%d" % len(body)]) + body
    elif how == "odd-length":
        value = draw(
            st.sampled_from([b"+%d", b"%d ; x", b"0x%x", b"%d %d", b"", b"99999999999999999999999", b"%d.0"])
        )
        value = value % ((len(body),) * value.count(b"%")) if b"%" in value else value
        data = _replace_header(head, b"content-length", [b"Content-Length: " + value]) + body
    elif how == "length-and-chunked":
        extra = [b"Transfer-Encoding: chunked", b"Content-Length: %d" % draw(st.integers(0, len(body) + 3))]
        data = (
            _replace_header(_replace_header(head, b"transfer-encoding", []), b"content-length", extra) + body
        )
    elif how == "transfer-coding":
        value = draw(
            st.sampled_from(
                [
                    b"gzip, chunked",
                    b"chunked, gzip",
                    b"xchunked",
                    b"identity",
                    b"chunked, chunked",
                    b"gzip",
                    b"Chunked",
                    b" chunked",
                ]
            )
        )
        lines = [b"Transfer-Encoding: " + value]
        if rarely(draw, 3):
            lines = [b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked"]
        data = (
            _replace_header(_replace_header(head, b"content-length", []), b"transfer-encoding", lines) + body
        )
    elif how == "bad-chunk-size":
        size = draw(
            st.sampled_from([b"zz", b"-1", b"ffffffffffffffffffff", b"", b" 5", b"5 ", b"0x5", b"+5"])
        )
        first = body.find(b"\r\n")
        data = head + (size + body[first:] if first != -1 else size + b"\r\nxxxxx\r\n0\r\n\r\n")
    elif how == "chunk-data-mismatch":
        data = _replace_header(
            _replace_header(head, b"content-length", []),
            b"transfer-encoding",
            [b"Transfer-Encoding: chunked"],
        )
        payload = draw(st.binary(min_size=1, max_size=20))
        announced = len(payload) + draw(st.sampled_from([-1, 1, 3]))
        data += b"%x\r\n" % max(announced, 0) + payload + b"\r\n0\r\n\r\n"
    elif how == "missing-last-crlf":
        data = data[:-2] if data.endswith(b"\r\n\r\n") else data + b"0\r\n"
    elif how == "junk-after":
        data += draw(
            st.sampled_from(
                [b"junk", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbad", b"\r\n", b"0\r\n\r\n"]
            )
        )
    elif how == "bare-lf":
        data = head.replace(b"\r\n", b"\n", draw(st.integers(1, 3))) + body
    elif how == "obs-fold":
        data = _replace_header(head, b"x-folded", [b"X-Folded: first", b" second"]) + body
    elif how == "space-before-colon":
        data = _replace_header(head, b"x-spaced", [b"X-Spaced : value"]) + body
    elif how == "control-in-value":
        data = (
            _replace_header(
                head,
                b"x-control",
                [b"X-Control: a" + draw(st.sampled_from([b"\x00", b"\r", b"\x7f", b"\x01"])) + b"b"],
            )
            + body
        )
    elif how == "no-colon":
        data = _replace_header(head, b"x-nocolon", [b"X-No-Colon value"]) + body
    elif how == "bad-status-line":
        status_line = draw(
            st.sampled_from(
                [
                    b"HTTP/1.1 2000 OK",
                    b"HTTP/1.1 20 OK",
                    b"HTTP/1.1 abc OK",
                    b"HTTP/2 200 OK",
                    b"HTTP/1.1 200OK",
                    b"HTTP/1.1  200 OK",
                    b"HTTP/1.1 099 Low",
                    b"HTTP/1.1 600 High",
                    b"http/1.1 200 OK",
                    b"ICY 200 OK",
                ]
            )
        )
        lines = head.split(b"\r\n")
        index = next(
            (
                i
                for i, line in enumerate(lines)
                if line.startswith(b"HTTP/1") and not line.startswith(b"HTTP/1.1 1")
            ),
            0,
        )
        lines[index] = status_line
        data = b"\r\n".join(lines) + body
    elif how == "truncated":
        data = data[: draw(st.integers(0, max(len(data) - 1, 0)))]
    elif how == "flipped-byte" and data:
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ (1 << draw(st.integers(0, 7)))]) + data[at + 1 :]
    cuts = tuple(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    return WireResponse(base.method, data, cuts, False, f"{how} of {base.what}")


# --- The two readers ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Parsed:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


def h11_reads(method: str, data: bytes) -> Parsed | None:
    """The final response as h11 reads ``data`` followed by the end of the stream; None if it refuses it."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "origin")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    conn.receive_data(b"")
    response: h11.Response | None = None
    body = bytearray()
    try:
        while True:
            item = conn.next_event()
            if isinstance(item, h11.Response):
                response = item
            elif isinstance(item, h11.Data):
                body += item.data
            elif isinstance(item, h11.EndOfMessage):
                assert response is not None
                return Parsed(response.status_code, [(n, v) for n, v in response.headers], bytes(body))
            elif not isinstance(item, h11.InformationalResponse):
                return None  # NEED_DATA at the end of the stream, PAUSED, ConnectionClosed: incomplete
    except h11.RemoteProtocolError:
        return None


@dataclass(frozen=True)
class Delivered:
    parsed: Parsed
    headers_after_body: list[tuple[bytes, bytes]]


async def engine_reads(case: WireResponse) -> Delivered | EngineError:
    """What the engine delivers from a server that writes ``case``'s pieces and closes; or its refusal."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            for piece in case.pieces():
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0)  # let the engine read this piece before the next is written
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    engine = Engine("http", "127.0.0.1", server.sockets[0].getsockname()[1], clock=lambda: 0.0)
    try:
        async with asyncio.timeout(HANG):
            return await _exchange(engine, case.method)
    finally:
        await engine.aclose()
        server.close()
        await server.wait_closed()


async def _exchange(engine: Engine, method: str) -> Delivered | EngineError:
    try:
        response = await engine.request(method, "/", [], b"x" if method == "POST" else None, 30)
        headers = list(response.raw_headers)
        try:
            body = await response.read()
        finally:
            response.release()
    except EngineError as refusal:
        return refusal
    return Delivered(Parsed(response.status, headers, body), list(response.raw_headers))


# --- The property -------------------------------------------------------------------------------------------------


def comparable(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The engine's headers as h11 spells them: h11 lowers a Transfer-Encoding value (coding names are
    case-insensitive, RFC 9112 section 7), which the proxy drops as hop-by-hop anyway."""
    return [(n, v.lower() if n == b"transfer-encoding" else v) for n, v in headers]


def check(runner: asyncio.Runner, case: WireResponse) -> None:
    try:
        outcome = runner.run(engine_reads(case))
    except TimeoutError:
        raise AssertionError(f"the engine hung on {case.what}") from None
    reference = h11_reads(case.method, case.data)
    if isinstance(outcome, EngineError):
        event(f"refused ({'h11 too' if reference is None else 'h11 read it'})")
        assert not case.well_formed or reference is None, f"refused a well-formed response: {outcome}"
        return
    event("delivered")
    assert reference is not None, "the engine delivered a response that h11 refuses"
    delivered = outcome.parsed
    assert delivered.status == reference.status
    assert comparable(delivered.headers) == reference.headers, "the headers differ from h11's"
    assert delivered.body == reference.body, "the body differs from h11's"
    assert outcome.headers_after_body == delivered.headers, "the headers changed while the body was read"


@property_settings(250)
@given(case=well_formed())
def test_well_formed_responses_are_read_as_h11_reads_them(runner: asyncio.Runner, case: WireResponse) -> None:
    """Every well-formed response (interim responses, each framing, HEAD/204/304, split anywhere) is delivered
    with h11's status, headers and body."""
    check(runner, case)


@property_settings(250)
@given(case=malformed())
@example(
    case=WireResponse(
        "GET",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
        (),
        False,
        "example",
    )
)
def test_malformed_responses_are_refused_or_read_as_h11_reads_them(
    runner: asyncio.Runner, case: WireResponse
) -> None:
    """Malformed framing is refused (EngineError, a 502 at the proxy) or read exactly as h11 reads it."""
    check(runner, case)
