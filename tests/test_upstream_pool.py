"""The bounded pool of connections to BPOC (issue 11), over real sockets: the sandbox's /_sandbox/hold routes keep
requests open until the test releases them, so what BPOC sees at once, and in which order queued requests reach
it, is decided by the test and not by timing.

Engine-level tests drive the engine directly (time limits on an injected clock); proxy-level tests run the proxy
on uvicorn and look at it as a client and as BPOC do.
"""

from __future__ import annotations

import asyncio
import functools
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from proxy.app import ProxyApp, create_app
from proxy.engine import Engine, EngineResponse, PoolTimeout
from proxy.errors import ConfigError
from proxy.protocol import SERVER_OPTIONS
from proxy.sandbox.bpoc import create_bpoc_app
from proxy.sandbox.seed import BpocState
from proxy.sandbox.server import serve_in_thread
from proxy.settings import Settings
from proxy.upstream import Upstream

from .conftest import ROOT, FakeTimer, ProxyFactory, auth, base_env
from .test_engine import until
from .test_sessions_e2e import BOB, bodies_received, post_job, start_warm


def wait_for(condition: Callable[[], bool], bound: float = 10.0) -> None:
    """Wait for ``condition``, for at most ``bound`` seconds (generous: the test asserts that, not when)."""
    deadline = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true"
        time.sleep(0.005)


class Sandbox:
    """The sandbox BPOC's hold routes, called directly (not through the proxy)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(trust_env=False, timeout=10)

    def report(self) -> dict[str, Any]:
        data: dict[str, Any] = self.http.get(self.url + "/_sandbox/holds").json()
        return data

    def arrived(self) -> list[str]:
        names: list[str] = self.report()["arrived"]
        return names

    def has_arrived(self, name: str) -> bool:
        return name in self.arrived()

    def arrived_are(self, names: list[str]) -> bool:
        return self.arrived() == names

    def release(self, name: str) -> None:
        self.http.post(f"{self.url}/_sandbox/release/{name}").raise_for_status()


@pytest.fixture
def bpoc_url(bpoc_state: BpocState) -> Iterator[str]:
    """The sandbox BPOC, with uvicorn's proxy-headers handling off: each hold then records the client address
    of the proxy's connection it came on, not the X-Forwarded-For the proxy sends."""
    with serve_in_thread(create_bpoc_app(bpoc_state), proxy_headers=False) as url:
        yield url


@pytest.fixture
def sandbox(bpoc_url: str) -> Iterator[Sandbox]:
    holds = Sandbox(bpoc_url)
    yield holds
    holds.release("*")  # nothing stays held when the servers stop
    holds.http.close()


# --- the engine ----------------------------------------------------------------------------------------------


@pytest.fixture
def bpoc_address(bpoc_url: str) -> tuple[str, int]:
    parts = urlsplit(bpoc_url)
    assert parts.hostname and parts.port
    return parts.hostname, parts.port


@pytest.fixture
async def async_sandbox(bpoc_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=bpoc_url, trust_env=False, timeout=10) as http:
        yield http
        await http.post("/_sandbox/release/*")


async def _arrived(sandbox: httpx.AsyncClient) -> list[str]:
    names: list[str] = (await sandbox.get("/_sandbox/holds")).json()["arrived"]
    return names


def _waiting(pool: Engine | Upstream, count: int) -> bool:
    return pool.waiting == count


async def _until_arrived(sandbox: httpx.AsyncClient, expected: list[str]) -> None:
    async with asyncio.timeout(10):
        while await _arrived(sandbox) != expected:
            await asyncio.sleep(0.01)


async def _answer(request: asyncio.Task[EngineResponse]) -> bytes:
    response = await request
    try:
        return await response.read()
    finally:
        response.release()


async def test_queue_is_first_come_first_served_and_skips_those_who_left(
    bpoc_address: tuple[str, int], async_sandbox: httpx.AsyncClient
) -> None:
    """With every connection busy, requests wait in arrival order; one whose client left is skipped."""
    engine = Engine("http", *bpoc_address, max_connections=1)
    try:
        tasks = {}
        for index, name in enumerate("abcd"):
            tasks[name] = asyncio.create_task(engine.request("GET", f"/_sandbox/hold/{name}", [], None, 30))
            if index == 0:
                await until(lambda: engine.open_connections == 1 and engine.waiting == 0)
            else:
                await until(functools.partial(_waiting, engine, index))
        tasks["b"].cancel()  # its client went away while it waited
        await until(lambda: engine.waiting == 2)
        assert await _arrived(async_sandbox) == ["a"]
        for name, expected in (("a", ["a", "c"]), ("c", ["a", "c", "d"])):
            await async_sandbox.post(f"/_sandbox/release/{name}")
            assert await _answer(tasks[name]) == b'{"held":"%s"}' % name.encode()
            await _until_arrived(async_sandbox, expected)
        await async_sandbox.post("/_sandbox/release/d")
        assert await _answer(tasks["d"]) == b'{"held":"d"}'
        assert engine.connections_opened == 1 and engine.idle_connections == 1 and engine.waiting == 0
    finally:
        await engine.aclose()


async def test_a_connection_handed_to_a_waiter_that_just_left_is_not_lost(
    bpoc_address: tuple[str, int], async_sandbox: httpx.AsyncClient
) -> None:
    """A waiter cancelled in the instant after a connection was handed to it passes the connection on."""
    engine = Engine("http", *bpoc_address, max_connections=1)
    try:
        held = asyncio.create_task(engine.request("GET", "/_sandbox/hold/a", [], None, 30))
        await until(lambda: engine.open_connections == 1)
        waiter = asyncio.create_task(engine.request("GET", "/_sandbox/echo/never", [], None, 30))
        await until(lambda: engine.waiting == 1)
        await async_sandbox.post("/_sandbox/release/a")
        response = await held
        await response.read()
        response.release()  # hands the connection to the waiter, which has not run yet ...
        waiter.cancel()  # ... and is cancelled before it does
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert engine.idle_connections == 1 and engine.waiting == 0
        again = await engine.request("GET", "/_sandbox/echo/x", [], None, 30)
        await again.read()
        again.release()
        assert engine.connections_opened == 1
        assert await _arrived(async_sandbox) == ["a"]
    finally:
        await engine.aclose()


async def test_queue_timeout_sends_nothing(
    bpoc_address: tuple[str, int], async_sandbox: httpx.AsyncClient, timer: FakeTimer
) -> None:
    """A request that waits the whole queue timeout fails with PoolTimeout, counted, and BPOC never sees it;
    the wait for a connection does not count toward the request's own timeout."""
    engine = Engine("http", *bpoc_address, max_connections=1, queue_timeout=60, clock=timer)
    try:
        held = asyncio.create_task(engine.request("GET", "/_sandbox/hold/a", [], None, 1000))
        await until(lambda: engine.open_connections == 1)
        patient = asyncio.create_task(engine.request("GET", "/_sandbox/hold/b", [], None, 5))
        await until(lambda: engine.waiting == 1)
        timer.advance(
            30
        )  # past the waiting request's 5 s timeout: waiting for a connection is not BPOC's delay
        engine.deadlines.check()
        assert not patient.done()
        timer.advance(30)  # the queue timeout
        engine.deadlines.check()
        with pytest.raises(PoolTimeout, match="no connection to BPOC came free within 60 s"):
            await patient
        assert engine.queue_timeouts == 1 and engine.waiting == 0
        await async_sandbox.post("/_sandbox/release/a")
        assert await _answer(held) == b'{"held":"a"}'
        assert await _arrived(async_sandbox) == ["a"]
    finally:
        await engine.aclose()


async def test_idle_connections_are_reaped_after_a_burst(
    bpoc_address: tuple[str, int], async_sandbox: httpx.AsyncClient
) -> None:
    """After a burst, idle connections close when their keep-alive expiry passes, with no further request."""
    engine = Engine("http", *bpoc_address, keepalive_expiry=0.2)
    try:
        burst = [
            asyncio.create_task(engine.request("GET", f"/_sandbox/hold/burst{i}", [], None, 30))
            for i in range(5)
        ]
        await until(lambda: engine.open_connections == 5)
        await async_sandbox.post("/_sandbox/release/*")
        for request in burst:
            await _answer(request)
        assert engine.open_connections == 5
        # Nothing uses the pool from here on: the connection-closed events come from the reaper alone.
        await until(lambda: engine.open_connections == 0)
        assert engine.idle_connections == 0 and engine.connections_opened == 5
    finally:
        await engine.aclose()


async def test_reaping_keeps_the_fresh_connections(bpoc_address: tuple[str, int], timer: FakeTimer) -> None:
    """Only connections idle for the whole expiry are closed; younger ones stay pooled for reuse."""
    engine = Engine("http", *bpoc_address, keepalive_expiry=4, clock=timer)
    try:
        old, young = (engine.request("GET", "/_sandbox/echo/x", [], None, 5) for _ in range(2))
        first, second = await asyncio.gather(old, young)
        await first.read()
        first.release()
        timer.advance(3)
        await second.read()
        second.release()
        timer.advance(0.9)
        engine.reap()
        assert engine.idle_connections == 2
        timer.advance(0.1)  # the first has been idle 4 s, the second 1 s
        engine.reap()  # what the timer does when the first expires (it keeps the loop's time, not this clock)
        assert engine.idle_connections == 1
        await until(lambda: engine.open_connections == 1)
        response = await engine.request("GET", "/_sandbox/echo/x", [], None, 5)
        await response.read()
        response.release()
        assert engine.connections_opened == 2
    finally:
        await engine.aclose()


# --- through the proxy -------------------------------------------------------------------------------------


@pytest.fixture
def pooled_proxy(bpoc_url: str) -> Iterator[Callable[..., tuple[str, ProxyApp]]]:
    """A proxy on uvicorn in front of the sandbox, with its app, to read the pool's state beside a client's view."""
    with ExitStack() as stack:

        def start(**overrides: str) -> tuple[str, ProxyApp]:
            app = create_app(Settings.from_environ(base_env(bpoc_url, **overrides)))
            return stack.enter_context(serve_in_thread(app, **SERVER_OPTIONS)), app

        yield start


def _hold(url: str, name: str) -> httpx.Response:
    return httpx.get(f"{url}/_sandbox/hold/{name}", headers=auth(), timeout=60, trust_env=False)


def test_bpoc_sees_at_most_max_connections_and_the_queue_keeps_arrival_order(
    pooled_proxy: Callable[..., tuple[str, ProxyApp]], sandbox: Sandbox
) -> None:
    """With PROXY_UPSTREAM_MAX_CONNECTIONS=2 and five slow requests, BPOC sees two connections; the other three
    wait and reach BPOC in the order they came, each as a connection comes free."""
    url, app = pooled_proxy(PROXY_UPSTREAM_MAX_CONNECTIONS="2", PROXY_UPSTREAM_QUEUE_TIMEOUT="60")
    answers: dict[str, Future[httpx.Response]] = {}
    with ThreadPoolExecutor(max_workers=5) as clients:
        for name in ("a", "b"):
            answers[name] = clients.submit(_hold, url, name)
            wait_for(functools.partial(sandbox.has_arrived, name))
        for waiting, name in enumerate(("c", "d", "e"), start=1):
            answers[name] = clients.submit(_hold, url, name)
            wait_for(functools.partial(_waiting, app.upstream, waiting))
        assert sandbox.arrived() == ["a", "b"]

        for freed, expected in (("a", ["a", "b", "c"]), ("b", ["a", "b", "c", "d"]), ("c", list("abcde"))):
            sandbox.release(freed)
            assert answers[freed].result(timeout=30).json() == {"held": freed}
            wait_for(functools.partial(sandbox.arrived_are, expected))
        sandbox.release("*")
        for name, answer in answers.items():
            assert answer.result(timeout=30).json() == {"held": name}

    report = sandbox.report()
    assert report["peak"] == 2 and report["connections"] == 2
    assert app.upstream.open_connections == 2 and app.upstream.idle_connections == 2
    assert app.upstream.waiting == 0 and app.upstream.queue_timeouts == 0


def test_no_free_connection_within_the_queue_timeout_is_503(
    pooled_proxy: Callable[..., tuple[str, ProxyApp]],
    sandbox: Sandbox,
    bpoc_state: BpocState,
    client: httpx.Client,
) -> None:
    """Past PROXY_UPSTREAM_QUEUE_TIMEOUT: JSON 503 upstream_busy with Retry-After: 1 and the request id, and BPOC
    received nothing for it."""
    url, app = pooled_proxy(PROXY_UPSTREAM_MAX_CONNECTIONS="1", PROXY_UPSTREAM_QUEUE_TIMEOUT="0.2")
    with ThreadPoolExecutor(max_workers=1) as clients:
        held = clients.submit(_hold, url, "a")
        wait_for(lambda: sandbox.arrived() == ["a"])
        bpoc_state.reset_requests()

        response = client.post(
            url + "/_sandbox/echo/overflow", headers={**auth(), "X-Request-Id": "overflow-1"}, content=b"x"
        )
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.headers["x-request-id"] == "overflow-1"
        body = response.json()
        assert body["code"] == "upstream_busy" and body["status"] == 503 and body["requestId"] == "overflow-1"
        assert "PROXY_UPSTREAM_QUEUE_TIMEOUT (0.2 s)" in body["error"]
        assert bpoc_state.requests == []
        assert app.upstream.queue_timeouts == 1 and app.upstream.waiting == 0

        sandbox.release("a")
        assert held.result(timeout=30).status_code == 200
    assert client.get(url + "/_sandbox/echo/after", headers=auth()).status_code == 200
    assert sandbox.report()["connections"] == 1


def test_stale_recruiter_replay_takes_a_connection_like_any_request(
    start_proxy: ProxyFactory, bpoc_url: str, client: httpx.Client, bpoc_state: BpocState
) -> None:
    """With a single connection to BPOC, the replay after a stale recruiter ID waits for it and is served:
    the refused first answer gives its connection back before the replay asks for one."""
    env = base_env(bpoc_url, PROXY_UPSTREAM_MAX_CONNECTIONS="1", PROXY_UPSTREAM_QUEUE_TIMEOUT="2")
    url = start_warm(start_proxy, bpoc_state, client, env)
    assert post_job(client, url, auth(BOB), title="before").status_code == 201
    new_bob = bpoc_state.recreate_recruiter(BOB)
    bpoc_state.reset_requests()

    response = post_job(client, url, auth(BOB), title="after")
    assert response.status_code == 201, response.text
    assert response.json()["postedBy"] == new_bob.id
    assert [body["postedBy"] for body in bodies_received(bpoc_state)][1:] == [new_bob.id]


# --- settings ----------------------------------------------------------------------------------------------


def test_pool_settings_defaults() -> None:
    """100 connections per worker and a 5 s queue unless told otherwise."""
    settings = Settings.from_environ(base_env("http://127.0.0.1:9"))
    assert settings.upstream_max_connections == 100 and settings.upstream_queue_timeout == 5.0
    tuned = Settings.from_environ(
        base_env(
            "http://127.0.0.1:9", PROXY_UPSTREAM_MAX_CONNECTIONS="1_000", PROXY_UPSTREAM_QUEUE_TIMEOUT="0"
        )
    )
    assert tuned.upstream_max_connections == 1000 and tuned.upstream_queue_timeout == 0.0


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("PROXY_UPSTREAM_MAX_CONNECTIONS", "0", "PROXY_UPSTREAM_MAX_CONNECTIONS must be at least 1"),
        ("PROXY_UPSTREAM_MAX_CONNECTIONS", "many", "PROXY_UPSTREAM_MAX_CONNECTIONS must be a whole number"),
        ("PROXY_UPSTREAM_MAX_CONNECTIONS", "2.5", "PROXY_UPSTREAM_MAX_CONNECTIONS must be a whole number"),
        ("PROXY_UPSTREAM_QUEUE_TIMEOUT", "-1", "PROXY_UPSTREAM_QUEUE_TIMEOUT must be a finite number"),
        ("PROXY_UPSTREAM_QUEUE_TIMEOUT", "soon", "PROXY_UPSTREAM_QUEUE_TIMEOUT must be a number of seconds"),
        ("PROXY_UPSTREAM_QUEUE_TIMEOUT", "inf", "PROXY_UPSTREAM_QUEUE_TIMEOUT must be a finite number"),
    ],
)
def test_bad_pool_settings_are_one_line_naming_the_setting(name: str, value: str, expected: str) -> None:
    """A bad pool setting stops start-up with one line that names it."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_environ(base_env("http://127.0.0.1:9", **{name: value}))
    assert str(caught.value).startswith(expected) and "\n" not in str(caught.value)


def test_bad_pool_setting_stops_serve_with_exit_2() -> None:
    """`bpoc-proxy serve` with PROXY_UPSTREAM_MAX_CONNECTIONS=0 exits 2 with one line, no traceback."""
    env = {"PATH": "/usr/bin:/bin", **base_env("http://127.0.0.1:9", PROXY_UPSTREAM_MAX_CONNECTIONS="0")}
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "bpoc-proxy: PROXY_UPSTREAM_MAX_CONNECTIONS must be at least 1 and at most 100000, got 0"
    ]
