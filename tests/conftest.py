"""Fixtures: the BPOC sandbox and the proxy, each on uvicorn on a free 127.0.0.1 port, over real sockets.

The proxy runs in a thread for most tests (fast), and as a real ``bpoc-proxy serve`` process where a test needs
to see the process from outside (memory, signals, start-up errors).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.app import create_app
from proxy.protocol import SERVER_OPTIONS
from proxy.sandbox.bpoc import create_bpoc_app
from proxy.sandbox.seed import BpocState
from proxy.sandbox.server import bind_socket, serve_in_thread
from proxy.sandbox.tokens import mint_hs
from proxy.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "test-agency-key-7f3d9c2e"
JWT_SECRET = "test-portal-secret-0123456789abcdef0123456789abcdef"


@pytest.fixture
def bpoc_state() -> BpocState:
    return BpocState.seeded(API_KEY)


@pytest.fixture
def bpoc_url(bpoc_state: BpocState) -> Iterator[str]:
    with serve_in_thread(create_bpoc_app(bpoc_state)) as url:
        yield url


def base_env(bpoc_url: str, **overrides: str) -> dict[str, str]:
    env = {
        "BPOC_BASE_URL": bpoc_url,
        "BPOC_API_KEY": API_KEY,
        "PORTAL_JWT_SECRET": JWT_SECRET,
        "PROXY_RULES": str(ROOT / "rules.yaml"),
        "RECRUITER_SYNC_INTERVAL": "0",
        "PROXY_UPSTREAM_TIMEOUT": "5",
    }
    env.update(overrides)
    return env


ProxyFactory = Callable[..., str]


@pytest.fixture
def start_proxy(bpoc_url: str) -> Iterator[ProxyFactory]:
    """Start a proxy in front of the sandbox; keyword arguments are environment overrides."""
    with ExitStack() as stack:

        def start(
            env: Mapping[str, str] | None = None,
            *,
            clock: Callable[[], float] = time.monotonic,
            **overrides: str,
        ) -> str:
            settings = Settings.from_environ(
                dict(env) if env is not None else base_env(bpoc_url, **overrides)
            )
            app = create_app(settings, clock=clock)
            return stack.enter_context(serve_in_thread(app, **SERVER_OPTIONS))

        yield start


@pytest.fixture
def proxy_url(start_proxy: ProxyFactory) -> str:
    return start_proxy()


def token_for(email: str = "bob@agency.example", *, sub: str | None = None, **claims: Any) -> str:
    return mint_hs(JWT_SECRET, sub=sub or email.split("@")[0], email=email, **claims)


def auth(email: str = "bob@agency.example", **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for(email, **claims)}"}


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30, trust_env=False) as c:
        yield c


class FakeTimer:
    """A monotonic clock that moves only when told (cachetools' tests/test_ttl.py does the same)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def timer() -> FakeTimer:
    return FakeTimer()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client for tests that drive the proxy's modules directly."""
    async with httpx.AsyncClient(trust_env=False) as client:
        yield client


@dataclass
class ProxyProcess:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    admin_url: str | None = None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_port() -> int:
    sock = bind_socket()
    port: int = sock.getsockname()[1]
    sock.close()
    return port


def proxy_environ(env: Mapping[str, str]) -> dict[str, str]:
    """The environment of a ``bpoc-proxy serve`` process: this one's without any setting, then ``env``; both
    listeners on free 127.0.0.1 ports unless ``env`` says otherwise."""
    full_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("BPOC_", "PROXY_", "PORTAL_", "RECRUITER_"))
    }
    full_env.update({"PROXY_HOST": "127.0.0.1", "PROXY_PORT": str(free_port())})
    full_env.update({"PROXY_ADMIN_HOST": "127.0.0.1", "PROXY_ADMIN_PORT": str(free_port())})
    full_env.update(env)
    return full_env


def spawn_proxy(
    env: Mapping[str, str], tmp_path: Path, *, argv: Sequence[str] = (), cwd: Path | None = None
) -> ProxyProcess:
    """Run ``python -m proxy serve`` (after ``argv``, such as an ``unshare`` command) as a real process and wait
    until it answers /healthz."""
    full_env = proxy_environ(env)
    port = full_env["PROXY_PORT"]
    log_path = tmp_path / f"proxy-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*argv, sys.executable, "-m", "proxy", "serve"],
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
        )
    url = f"http://127.0.0.1:{port}"
    admin = full_env["PROXY_ADMIN_PORT"]
    admin_url = f"http://127.0.0.1:{admin}" if admin != "0" else None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the proxy exited: {log_path.read_text()}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return ProxyProcess(url, process, log_path, admin_url)
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the proxy did not start in time")


@pytest.fixture
def proxy_process(bpoc_url: str, tmp_path: Path) -> Iterator[Callable[..., ProxyProcess]]:
    started: list[ProxyProcess] = []

    def start(**overrides: str) -> ProxyProcess:
        started.append(spawn_proxy(base_env(bpoc_url, **overrides), tmp_path))
        return started[-1]

    yield start
    for proxy in started:
        proxy.process.terminate()
        try:
            proxy.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proxy.process.kill()
            proxy.process.wait()


REDIS_SERVER = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/bin:/usr/sbin")


@dataclass
class RedisServer:
    """A real redis-server on a free loopback port, with no persistence, in its own temporary directory."""

    port: int
    process: subprocess.Popen[bytes]
    password: str | None = None
    ca: Path | None = None  # TLS only (rediss://), with this CA

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"{'rediss' if self.ca else 'redis'}://{auth}127.0.0.1:{self.port}/0"

    def command(self, *args: str) -> bytes:
        """Send one command and return the raw reply (RESP2), enough for PING, KEYS and the like."""
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        context = ssl.create_default_context(cafile=self.ca) if self.ca else None
        with context.wrap_socket(raw, server_hostname="127.0.0.1") if context else raw as sock:
            if self.password:
                sock.sendall(_resp("AUTH", self.password))
                sock.recv(1024)
            sock.sendall(_resp(*args))
            return sock.recv(65536)

    def keys(self) -> list[bytes]:
        lines = self.command("KEYS", "*").split(b"\r\n")
        return lines[2:-1:2]  # *N, then $len and the key for each

    def pause(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.resume()
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _resp(*args: str) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def start_redis(
    directory: Path, *, password: str | None = None, tls: tuple[Path, Path, Path] | None = None
) -> RedisServer:
    """Start redis-server and wait until it answers PING (skips the calling test where it is not installed).

    ``tls`` is (CA, certificate, key): the server then speaks TLS only."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server not found (Debian: apt-get install redis-server); the Redis tests need it")
    sock = bind_socket()
    port = sock.getsockname()[1]
    sock.close()
    args = [REDIS_SERVER, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(directory)]
    if tls is None:
        args += ["--port", str(port)]
    else:
        ca, cert, key = map(str, tls)
        args += ["--port", "0", "--tls-port", str(port), "--tls-cert-file", cert, "--tls-key-file", key]
        args += ["--tls-ca-cert-file", ca, "--tls-auth-clients", "no"]
    if password:
        args += ["--requirepass", password]
    log_path = directory / f"redis-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=directory)
    server = RedisServer(port, process, password, tls[0] if tls else None)
    try:
        _wait_for_ping(server, log_path)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_for_ping(server: RedisServer, log_path: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"redis-server exited: {log_path.read_text()}")
        with contextlib.suppress(OSError):
            if server.command("PING").startswith(b"+PONG"):
                return
        time.sleep(0.02)
    raise RuntimeError("redis-server did not answer PING in time")


@pytest.fixture
def redis_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RedisServer]]:
    """Start real Redis servers (keyword arguments as start_redis takes them); all are stopped at teardown."""
    started: list[RedisServer] = []

    def start(**options: object) -> RedisServer:
        started.append(start_redis(tmp_path_factory.mktemp("redis"), **options))  # type: ignore[arg-type]
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def redis_server(redis_factory: Callable[..., RedisServer]) -> RedisServer:
    return redis_factory()
