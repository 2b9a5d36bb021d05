"""The lean HTTP/1.1 engine against real servers on 127.0.0.1: the sandbox BPOC on uvicorn, and raw asyncio
servers for the misbehaviour uvicorn will not produce (a HEAD with a body length, a connection cut mid-body).

Time limits are tested with the engine's clock injected (conftest's FakeTimer): a test moves the clock past a
limit and the wait fails then, never because a sleep happened to lose a race."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import pytest

from proxy.engine import ConnectError, Engine, EngineResponse, ProtocolError, ReadTimeout, RemoteClosed
from proxy.sandbox.bpoc import create_bpoc_app, download_chunks
from proxy.sandbox.seed import BpocState
from proxy.sandbox.server import serve_in_thread

from .conftest import FakeTimer

FIVE_MB = 5 * 1024 * 1024


@pytest.fixture(scope="module")
def bpoc() -> Iterator[tuple[str, int]]:
    with serve_in_thread(create_bpoc_app(BpocState.seeded("k"))) as url:
        parts = urlsplit(url)
        assert parts.hostname and parts.port
        yield parts.hostname, parts.port


@pytest.fixture
async def engine(bpoc: tuple[str, int]) -> AsyncIterator[Engine]:
    engine = Engine("http", *bpoc)
    yield engine
    await engine.aclose()


async def _json(response: EngineResponse) -> dict[str, object]:
    try:
        data: dict[str, object] = json.loads(await response.read())
        return data
    finally:
        response.release()


def _header(response: EngineResponse, name: bytes) -> bytes | None:
    return next((v for n, v in response.raw_headers if n.lower() == name), None)


async def test_get_sends_host_and_headers(engine: Engine, bpoc: tuple[str, int]) -> None:
    """A GET reaches the origin with Host, the given headers in order, and no body."""
    response = await engine.request(
        "GET", "/_sandbox/echo/a?b=1", [(b"x-one", b"1"), (b"x-two", b"2")], None, 5
    )
    assert response.status == 200
    echo = await _json(response)
    assert echo["method"] == "GET" and echo["path"] == "/_sandbox/echo/a" and echo["query_string"] == "b=1"
    headers = echo["headers"]
    assert isinstance(headers, list)
    assert ["host", f"{bpoc[0]}:{bpoc[1]}"] in headers
    assert ["x-one", "1"] in headers and ["x-two", "2"] in headers
    assert echo["body_size"] == 0


async def test_post_bytes_sets_content_length(engine: Engine) -> None:
    """A bytes body goes out with its Content-Length and arrives intact."""
    body = b'{"title": "x"}'
    response = await engine.request(
        "POST", "/_sandbox/echo/p", [(b"content-type", b"application/json")], body, 5
    )
    echo = await _json(response)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert ["content-length", str(len(body))] in echo["headers"]  # type: ignore[operator]


async def test_head_has_no_body_and_connection_is_reused(engine: Engine) -> None:
    """A HEAD answer carries Content-Length but no body; the connection still serves the next request."""
    response = await engine.request("HEAD", "/_sandbox/download?size=1000", [], None, 5)
    assert response.status in (200, 405)
    assert await response.read() == b""
    response.release()
    again = await engine.request("GET", "/_sandbox/echo/x", [], None, 5)
    assert (await _json(again))["method"] == "GET"
    assert engine.connections_opened == 1


@pytest.mark.parametrize("code", [204, 304], ids=["no-content", "not-modified"])
async def test_bodiless_status(engine: Engine, code: int) -> None:
    """204 and 304 end at the headers and leave the connection reusable."""
    response = await engine.request("GET", f"/_sandbox/status/{code}", [], None, 5)
    assert response.status == code and await response.read() == b""
    response.release()
    assert (await _json(await engine.request("GET", "/_sandbox/status/201", [], None, 5))) == {"status": 201}
    assert engine.connections_opened == 1


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_download_5mb(engine: Engine, chunked: bool) -> None:
    """A 5 MB download streams in pieces, de-chunked, byte for byte."""
    query = "&chunked=1" if chunked else ""
    response = await engine.request("GET", f"/_sandbox/download?size={FIVE_MB}{query}", [], None, 5)
    assert response.content_length == (None if chunked else FIVE_MB)
    assert (_header(response, b"transfer-encoding") == b"chunked") is chunked
    digest, pieces = hashlib.sha256(), 0
    async for chunk in response.iter_body():
        digest.update(chunk)
        pieces += 1
    response.release()
    expected = hashlib.sha256(b"".join(download_chunks(FIVE_MB))).hexdigest()
    assert digest.hexdigest() == expected and pieces > 1
    assert (await _json(await engine.request("GET", "/_sandbox/echo/x", [], None, 5)))["method"] == "GET"
    assert engine.connections_opened == 1


async def until(condition: Callable[[], bool], bound: float = 10.0) -> None:
    """Wait for ``condition`` to hold, checking every few milliseconds, for at most ``bound`` seconds (generous:
    the test asserts that it happens, not how fast)."""
    async with asyncio.timeout(bound):
        while not condition():
            await asyncio.sleep(0.005)


async def test_slow_reader_pauses_the_socket(engine: Engine) -> None:
    """A body nobody reads is not buffered without bound: reading pauses near 256 KiB and resumes on drain."""
    response = await engine.request("GET", f"/_sandbox/download?size={FIVE_MB}", [], None, 5)
    await until(lambda: response.reading_paused)
    assert response.buffered < 1024 * 1024
    assert len(await response.read()) == FIVE_MB
    response.release()


async def _chunks(total: int, size: int = 65536) -> AsyncIterator[bytes]:
    for offset in range(0, total, size):
        yield bytes([offset // size % 251]) * min(size, total - offset)
        await asyncio.sleep(0)


@pytest.mark.parametrize("declared", [False, True], ids=["chunked", "content-length"])
async def test_upload_5mb_streamed(engine: Engine, declared: bool) -> None:
    """A 5 MB streamed upload arrives whole, chunked unless a Content-Length was given."""
    expected = hashlib.sha256()
    async for chunk in _chunks(FIVE_MB):
        expected.update(chunk)
    headers = [(b"content-length", b"%d" % FIVE_MB)] if declared else []
    response = await engine.request("POST", "/_sandbox/upload", headers, _chunks(FIVE_MB), 5)
    assert await _json(response) == {"size": FIVE_MB, "sha256": expected.hexdigest()}
    assert (await _json(await engine.request("GET", "/_sandbox/echo/x", [], None, 5)))["method"] == "GET"
    assert engine.connections_opened == 1


async def test_keep_alive_reuses_one_connection(engine: Engine) -> None:
    """Sequential requests share one connection; concurrent ones open one each and all go back to the pool."""
    for _ in range(5):
        await _json(await engine.request("GET", "/_sandbox/echo/x", [], None, 5))
    assert engine.connections_opened == 1
    responses = await asyncio.gather(
        *(engine.request("GET", "/_sandbox/echo/y", [], None, 5) for _ in range(4))
    )
    for response in responses:
        await _json(response)
    assert engine.connections_opened == 4  # the pooled one plus three new
    for _ in range(4):
        await _json(await engine.request("GET", "/_sandbox/echo/x", [], None, 5))
    assert engine.connections_opened == 4


async def test_unread_body_closes_the_connection(engine: Engine) -> None:
    """A response released before its body was read is not pooled: the next request opens a new connection."""
    response = await engine.request("GET", f"/_sandbox/download?size={FIVE_MB}", [], None, 5)
    response.release()
    await _json(await engine.request("GET", "/_sandbox/echo/x", [], None, 5))
    assert engine.connections_opened == 2


async def test_connection_close_is_not_reused(engine: Engine) -> None:
    """An answer with Connection: close is not pooled."""
    response = await engine.request("GET", "/_sandbox/echo/x", [(b"connection", b"close")], None, 5)
    assert _header(response, b"connection") == b"close"
    await _json(response)
    await _json(await engine.request("GET", "/_sandbox/echo/x", [], None, 5))
    assert engine.connections_opened == 2


async def test_server_closing_idle_connection_is_noticed() -> None:
    """A pooled connection the server has since closed leaves the pool and is not used (the engine never retries)."""
    with serve_in_thread(create_bpoc_app(BpocState.seeded("k")), timeout_keep_alive=0.2) as url:
        parts = urlsplit(url)
        assert parts.hostname and parts.port
        engine = Engine("http", parts.hostname, parts.port)
        try:
            await _json(await engine.request("GET", "/_sandbox/echo/x", [], None, 5))
            assert engine.idle_connections == 1
            await until(lambda: engine.open_connections == 0)  # uvicorn's keep-alive timeout closed it
            assert engine.idle_connections == 0
            await _json(await engine.request("GET", "/_sandbox/echo/x", [], None, 5))
            assert engine.connections_opened == 2
        finally:
            await engine.aclose()


async def test_refused_is_connect_error() -> None:
    """Nobody listening is ConnectError."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    engine = Engine("http", "127.0.0.1", port)
    with pytest.raises(ConnectError, match="cannot connect to BPOC at 127.0.0.1"):
        await engine.request("GET", "/", [], None, 5)
    assert engine.open_connections == 0
    await engine.aclose()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def _raw_server(handler: Handler, clock: FakeTimer | None = None) -> AsyncIterator[Engine]:
    """An asyncio server that answers with whatever bytes ``handler`` writes; yields an engine pointed at it,
    keeping time by ``clock`` when one is given."""

    writers: list[asyncio.StreamWriter] = []
    handlers: list[asyncio.Task[None]] = []

    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        writers.append(writer)
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(guarded, "127.0.0.1", 0)
    engine = Engine("http", "127.0.0.1", server.sockets[0].getsockname()[1], clock=clock)
    try:
        yield engine
    finally:
        await engine.aclose()
        # Finish the handlers here rather than leave them to the event loop's teardown (ResourceWarnings).
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)
        server.close()
        await server.wait_closed()


async def test_slow_answer_is_read_timeout(timer: FakeTimer) -> None:
    """No headers within the timeout is ReadTimeout, and the connection is closed, not pooled."""
    asked, finished = asyncio.Event(), asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        asked.set()
        await finished.wait()  # never answers

    async with _raw_server(handler, timer) as engine:
        request = asyncio.create_task(engine.request("GET", "/", [], None, 30))
        await asked.wait()
        await until(lambda: engine.deadlines.pending == 1)  # waiting for the headers
        timer.advance(29)
        engine.deadlines.check()
        assert not request.done()
        timer.advance(1)
        engine.deadlines.check()
        with pytest.raises(ReadTimeout, match="BPOC did not answer within 30 s") as caught:
            await request
        assert caught.value.timeout == 30
        await until(lambda: engine.open_connections == 0)
        assert engine.idle_connections == 0
        finished.set()


async def test_stalled_body_is_read_timeout(timer: FakeTimer) -> None:
    """A body that stops coming for longer than the timeout is ReadTimeout; its connection is not pooled."""
    finished = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nthe start")
        await writer.drain()
        await finished.wait()

    async with _raw_server(handler, timer) as engine:
        response = await engine.request("GET", "/", [], None, 5)
        reading = asyncio.create_task(response.read())
        await until(lambda: engine.deadlines.pending == 1)  # "the start" read, waiting for the rest
        timer.advance(5)
        engine.deadlines.check()
        with pytest.raises(ReadTimeout, match="BPOC did not send the response body within 5 s"):
            await reading
        response.close()
        await until(lambda: engine.open_connections == 0)
        finished.set()


async def test_cut_mid_body_is_remote_closed() -> None:
    """A connection closed before Content-Length bytes arrived is RemoteClosed, not a short body."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly-some")
        await writer.drain()

    async with _raw_server(handler) as engine:
        response = await engine.request("GET", "/", [], None, 5)
        with pytest.raises(RemoteClosed, match="before the response was complete"):
            await response.read()
        response.close()


async def test_closed_before_answer_is_remote_closed() -> None:
    """A connection closed before any response is RemoteClosed."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")

    async with _raw_server(handler) as engine:
        with pytest.raises(RemoteClosed):
            await engine.request("GET", "/", [], None, 5)


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(b"SMTP ready\r\n\r\n", id="not-http"),
        pytest.param(b"HTTP/1.1 200 OK\r\ncontent-length: ten\r\n\r\n", id="bad-length"),
        pytest.param(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\n", id="upgrade"
        ),
    ],
)
async def test_malformed_answer_is_protocol_error(answer: bytes) -> None:
    """Bytes that are not an HTTP/1.1 response the engine can pass on are ProtocolError; the connection closes."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        await reader.read()  # until the engine closes the connection

    async with _raw_server(handler) as engine:
        with pytest.raises(ProtocolError):
            await engine.request("GET", "/", [], None, 5)
        await until(lambda: engine.open_connections == 0)


async def test_read_until_close_and_http10() -> None:
    """An HTTP/1.0 answer with no length ends at close and its connection is not pooled."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\nX-Case: Kept\r\n\r\nuntil the end")
        await writer.drain()

    async with _raw_server(handler) as engine:
        response = await engine.request("GET", "/", [], None, 5)
        assert response.raw_headers == [(b"x-case", b"Kept")] and response.content_length is None
        assert await response.read() == b"until the end"
        response.release()
        assert engine.idle_connections == 0


async def test_head_with_content_length_and_interim_response() -> None:
    """A 100 Continue is skipped; a HEAD answer with Content-Length ends at its headers and is reused."""
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            seen.append(head.split(b" ", 1)[0])
            if head.startswith(b"HEAD"):
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5000\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()

    async with _raw_server(handler) as engine:
        response = await engine.request("HEAD", "/", [], None, 5)
        assert response.status == 200 and response.content_length == 5000
        assert response.raw_headers == [(b"content-length", b"5000")]
        assert await response.read() == b""
        response.release()
        response = await engine.request("GET", "/", [], None, 5)
        assert await response.read() == b"ok"
        response.release()
        assert seen == [b"HEAD", b"GET"] and engine.connections_opened == 1


async def test_idle_connection_past_expiry_is_not_reused(bpoc: tuple[str, int], timer: FakeTimer) -> None:
    """An idle connection older than keepalive_expiry is closed, so a request never races the server's idle timeout."""
    engine = Engine("http", *bpoc, keepalive_expiry=4, clock=timer)
    try:
        await _json(await engine.request("GET", "/_sandbox/echo/x", [], None, 5))
        timer.advance(3.9)
        await _json(await engine.request("GET", "/_sandbox/echo/x", [], None, 5))
        assert engine.connections_opened == 1
        timer.advance(4.1)
        await _json(await engine.request("GET", "/_sandbox/echo/x", [], None, 5))
        assert engine.connections_opened == 2
    finally:
        await engine.aclose()


@asynccontextmanager
async def _forward_proxy(log: list[bytes]) -> AsyncIterator[str]:
    """A small forward proxy: CONNECT tunnels, and absolute-form requests relayed on a fresh connection."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    writers: list[asyncio.StreamWriter] = []
    handlers: list[asyncio.Task[None]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        writers.append(writer)
        head = await reader.readuntil(b"\r\n\r\n")
        log.append(head)
        method, target = head.split(b" ")[:2]
        if method == b"CONNECT":
            host, port = target.decode().rsplit(":", 1)
        else:
            parts = urlsplit(target.decode())
            host, port = parts.hostname or "", str(parts.port)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        writers.append(up_writer)
        if method == b"CONNECT":
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            up_writer.write(head)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://user:p%40ss@127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        # Close every relayed connection ourselves and wait for the relays: a connection left to the event
        # loop's teardown is a ResourceWarning (an upstream keep-alive connection outlives the test).
        for open_writer in writers:
            open_writer.close()
        await asyncio.gather(*handlers, return_exceptions=True)
        await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)
        server.close()
        await server.wait_closed()


@pytest.fixture(scope="module")
def tls_bpoc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    from tests.test_forwarding import self_signed_certificate

    cert, key = self_signed_certificate(tmp_path_factory.mktemp("tls"))
    with serve_in_thread(create_bpoc_app(BpocState.seeded("k")), ssl_certfile=cert, ssl_keyfile=key) as url:
        yield int(url.rsplit(":", 1)[1]), cert


@pytest.mark.parametrize("via_proxy", [False, True], ids=["direct", "connect-tunnel"])
async def test_https(tls_bpoc: tuple[int, str], via_proxy: bool) -> None:
    """https verifies the origin's certificate by host name, directly or inside a CONNECT tunnel."""
    port, cert = tls_bpoc
    log: list[bytes] = []
    async with _forward_proxy(log) as proxy:
        context = ssl.create_default_context(cafile=cert)
        engine = Engine("https", "localhost", port, ssl_context=context, proxy=proxy if via_proxy else None)
        try:
            for _ in range(2):
                response = await engine.request("POST", "/_sandbox/upload", [], _chunks(300_000), 5)
                assert (await _json(response))["size"] == 300_000
            assert engine.connections_opened == 1 and engine.idle_connections == 1
        finally:
            await engine.aclose()
    # aclose() returns once the sockets are closed, after TLS's close_notify, not while they are still closing.
    assert engine.open_connections == 0
    if via_proxy:
        assert log[0].startswith(b"CONNECT localhost:%d HTTP/1.1\r\n" % port)
        assert b"proxy-authorization: Basic dXNlcjpwQHNz\r\n" in log[0]  # user:p@ss
    else:
        assert log == []


async def test_https_untrusted_certificate_is_connect_error(tls_bpoc: tuple[int, str]) -> None:
    """A certificate that does not chain to a trusted CA is ConnectError."""
    engine = Engine("https", "localhost", tls_bpoc[0])
    with pytest.raises(ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        await engine.request("GET", "/_sandbox/echo/x", [], None, 5)
    await engine.aclose()


async def test_http_through_proxy_uses_absolute_form(bpoc: tuple[str, int]) -> None:
    """An http origin behind a forward proxy gets absolute-form request targets."""
    log: list[bytes] = []
    async with _forward_proxy(log) as proxy:
        engine = Engine("http", *bpoc, proxy=proxy)
        try:
            echo = await _json(await engine.request("GET", "/_sandbox/echo/a?b=1", [], None, 5))
        finally:
            await engine.aclose()
    assert echo["path"] == "/_sandbox/echo/a"
    assert log[0].startswith(
        b"GET http://%s:%d/_sandbox/echo/a?b=1 HTTP/1.1\r\n" % (bpoc[0].encode(), bpoc[1])
    )


async def _endless(stopped: asyncio.Event) -> AsyncIterator[bytes]:
    try:
        while True:
            yield b"u" * 65536
            await asyncio.sleep(0)
    finally:
        stopped.set()


async def test_early_answer_during_upload() -> None:
    """An answer that comes before the upload is finished (a 413) is returned; the upload stops, the connection closes."""
    finished, stopped = asyncio.Event(), asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 3\r\n\r\nbig")
        await writer.drain()
        await finished.wait()  # never read the body: the engine's writes back up

    async with _raw_server(handler) as engine:
        response = await engine.request("POST", "/", [], _endless(stopped), 5)
        assert response.status == 413 and await response.read() == b"big"
        response.release()
        await asyncio.wait_for(stopped.wait(), 10)  # the body is no longer pulled
        await until(lambda: engine.open_connections == 0)
        assert engine.idle_connections == 0
        finished.set()


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
            id="gzip-chunked",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, chunked\r\n\r\n0\r\n\r\n", id="chunked-twice"
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            id="two-headers",
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nzipped", id="gzip-until-close"),
        pytest.param(b"HTTP/1.1 200 OK\r\ntransfer-encoding: xchunked\r\n\r\n0\r\n\r\n", id="xchunked"),
        pytest.param(
            b"HTTP/1.1 100 Continue\r\ntransfer-encoding: gzip\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            id="in-an-interim-answer",
        ),
    ],
)
async def test_transfer_codings_other_than_chunked_are_refused(answer: bytes) -> None:
    """A transfer coding the engine does not undo is ProtocolError (found by the engine property: "gzip, chunked"
    was de-chunked and its still-gzipped bytes delivered as the body, the header being hop-by-hop and dropped)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()

    async with _raw_server(handler) as engine:
        with pytest.raises(ProtocolError, match="Transfer-Encoding other than chunked"):
            response = await engine.request("GET", "/", [], None, 5)
            await response.read()


async def test_trailers_are_not_headers() -> None:
    """A chunked body's trailer fields are dropped, never added to the headers, however the bytes arrive."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\nx-kept: 1\r\n\r\n"
            b"2\r\nok\r\n0\r\nset-cookie: a=b\r\nx-trailer: t\r\n\r\n"
        )
        await writer.drain()

    async with _raw_server(handler) as engine:
        response = await engine.request("GET", "/", [], None, 5)
        assert await response.read() == b"ok"
        response.release()
        assert response.raw_headers == [(b"transfer-encoding", b"Chunked"), (b"x-kept", b"1")]
