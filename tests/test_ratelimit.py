"""Per-user rate limits (PROXY_RATE_LIMIT), in memory and in a real Redis: what a client, BPOC and the operator see."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import limits
import limits.aio.storage.memory
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proxy.app import create_app
from proxy.environ import masked_url
from proxy.errors import RateLimited
from proxy.ratelimit import (
    NoRateLimit,
    UserRateLimit,
    _memory_storage,
    _QuietMemoryStorage,
    describe,
)
from proxy.sandbox.seed import BpocState
from proxy.settings import Settings

from .conftest import (
    ROOT,
    FakeTimer,
    ProxyFactory,
    ProxyProcess,
    RedisServer,
    auth,
    base_env,
    token_for,
)
from .test_cli import run

ECHO = "/_sandbox/echo/limited"
PORTAL = "https://portal.agency.example"
PASSWORD = "hunter2-redis-pw-5b8e"


def forwarded(state: BpocState) -> int:
    return len(state.requests_to("/_sandbox/echo/"))


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "proxy.ratelimit" and r.levelno == logging.WARNING]


def assert_rate_limited(response: httpx.Response) -> int:
    """The refusal a client meets: 429 JSON with the request id and a whole-second Retry-After of at least 1."""
    assert response.status_code == 429, response.text
    body = response.json()
    assert body["code"] == "rate_limited"
    assert body["status"] == 429
    assert body["requestId"] == response.headers["x-request-id"]
    assert "try again in" in body["error"]
    retry_after = int(response.headers["retry-after"])
    assert retry_after >= 1
    return retry_after


# --- Memory storage: one proxy, one budget per user -------------------------------------------------------------


def test_the_request_over_the_limit_gets_429_and_never_reaches_bpoc(
    start_proxy: ProxyFactory, bpoc_url: str, client: httpx.Client, bpoc_state: BpocState
) -> None:
    """N requests pass; the N+1th is a 429 with Retry-After, and BPOC received exactly N."""
    proxy = start_proxy(base_env(bpoc_url, PROXY_RATE_LIMIT="3/hour"))
    statuses = [client.get(proxy + ECHO, headers=auth()).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    refused = client.get(proxy + ECHO, headers=auth())
    assert assert_rate_limited(refused) <= 3600
    assert refused.headers["cache-control"] == "no-store"
    assert forwarded(bpoc_state) == 3


def test_an_attributed_post_over_the_limit_is_refused_before_bpoc(
    start_proxy: ProxyFactory, bpoc_url: str, client: httpx.Client, bpoc_state: BpocState
) -> None:
    """Rule routes count like any other; a refused POST creates no job."""
    proxy = start_proxy(base_env(bpoc_url, PROXY_RATE_LIMIT="1/hour"))
    created = client.post(proxy + "/api/v1/jobs/create", headers=auth(), json={"title": "first"})
    assert created.status_code == 201
    refused = client.post(proxy + "/api/v1/jobs/create", headers=auth(), json={"title": "second"})
    assert_rate_limited(refused)
    assert "x-attribution-id" not in refused.headers
    assert len(bpoc_state.requests_to("/api/v1/jobs/create")) == 1


def test_users_have_separate_budgets(
    start_proxy: ProxyFactory, bpoc_url: str, client: httpx.Client, bpoc_state: BpocState
) -> None:
    """One user at the limit does not slow another down."""
    proxy = start_proxy(base_env(bpoc_url, PROXY_RATE_LIMIT="2/hour"))
    bob, alice = auth("bob@agency.example"), auth("alice@agency.example")
    assert [client.get(proxy + ECHO, headers=bob).status_code for _ in range(2)] == [200, 200]
    assert_rate_limited(client.get(proxy + ECHO, headers=bob))
    assert [client.get(proxy + ECHO, headers=alice).status_code for _ in range(2)] == [200, 200]
    assert_rate_limited(client.get(proxy + ECHO, headers=alice))
    assert forwarded(bpoc_state) == 4


def test_the_shortest_window_that_is_full_decides(
    start_proxy: ProxyFactory, bpoc_url: str, client: httpx.Client, bpoc_state: BpocState
) -> None:
    """With several rates, each is enforced; the refusal names the one that is full."""
    proxy = start_proxy(base_env(bpoc_url, PROXY_RATE_LIMIT="5/hour;2/minute"))
    assert [client.get(proxy + ECHO, headers=auth()).status_code for _ in range(2)] == [200, 200]
    refused = client.get(proxy + ECHO, headers=auth())
    assert assert_rate_limited(refused) <= 60
    assert "2 per minute" in refused.json()["error"]
    assert forwarded(bpoc_state) == 2


def test_a_request_refused_later_still_counts(
    start_proxy: ProxyFactory, bpoc_url: str, client: httpx.Client, bpoc_state: BpocState
) -> None:
    """The limit is checked before the body is read: a request then refused with 400 has spent its place."""
    proxy = start_proxy(base_env(bpoc_url, PROXY_RATE_LIMIT="2/hour"))
    bad = client.post(
        proxy + "/api/v1/jobs/create",
        headers={**auth(), "Content-Type": "application/json"},
        content=b"[1, 2]",
    )
    assert bad.status_code == 400
    assert client.get(proxy + ECHO, headers=auth()).status_code == 200
    assert_rate_limited(client.get(proxy + ECHO, headers=auth()))
    assert forwarded(bpoc_state) == 1
    assert bpoc_state.requests_to("/api/v1/jobs/create") == []


def test_public_paths_preflights_and_own_endpoints_are_not_counted(
    start_proxy: ProxyFactory, bpoc_url: str, client: httpx.Client, bpoc_state: BpocState, tmp_path: Path
) -> None:
    """Only authenticated requests count: public paths, CORS preflights, /healthz and /readyz never do."""
    rules = tmp_path / "rules.yaml"
    text = (ROOT / "rules.yaml").read_text()
    rules.write_text(text.replace("\npublic: []\n", "\npublic: ['GET /_sandbox/echo/public']\n"))
    env = base_env(bpoc_url, PROXY_RATE_LIMIT="2/hour", PROXY_CORS_ORIGINS=PORTAL, PROXY_RULES=str(rules))
    proxy = start_proxy(env)
    preflight = {"Origin": PORTAL, "Access-Control-Request-Method": "POST"}
    for _ in range(4):
        assert client.get(proxy + "/_sandbox/echo/public").status_code == 200
        assert client.get(proxy + "/_sandbox/echo/public", headers=auth()).status_code == 200
        assert client.options(proxy + "/api/v1/jobs/create", headers=preflight).status_code == 204
        assert client.get(proxy + "/healthz", headers=auth()).status_code == 200
        assert client.get(proxy + "/readyz", headers=auth()).status_code == 200
    assert [client.get(proxy + ECHO, headers=auth()).status_code for _ in range(2)] == [200, 200]
    assert_rate_limited(client.get(proxy + ECHO, headers=auth()))
    assert forwarded(bpoc_state) == 8 + 2


def test_a_refusal_is_logged_with_the_user_id_and_never_the_token(
    start_proxy: ProxyFactory, bpoc_url: str, client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    """The operator sees who was refused, for which limit, under which request id; the session stays secret."""
    proxy = start_proxy(base_env(bpoc_url, PROXY_RATE_LIMIT="1/hour"))
    token = token_for("bob@agency.example")
    headers = {"Authorization": f"Bearer {token}", "X-Request-Id": "rl-test-1"}
    with caplog.at_level(logging.INFO, logger="proxy"):
        client.get(proxy + ECHO, headers=headers)
        assert_rate_limited(client.get(proxy + ECHO, headers=headers))
    refusals = [r for r in caplog.records if r.name == "proxy.ratelimit"]
    assert len(refusals) == 1
    fields = refusals[0].fields  # type: ignore[attr-defined]
    assert fields["userId"] == "bob"
    assert fields["requestId"] == "rl-test-1"
    assert fields["limit"] == "1 per hour"
    access = [r for r in caplog.records if r.name == "proxy.access" and r.fields["status"] == 429]  # type: ignore[attr-defined]
    assert access[0].fields["userId"] == "bob"  # type: ignore[attr-defined]
    assert all(token not in str(record.__dict__) for record in caplog.records)


def test_off_by_default_the_pipeline_gets_the_no_op(bpoc_url: str) -> None:
    """Without PROXY_RATE_LIMIT the app chooses the no-op limiter once; nothing is counted per request."""
    app = create_app(Settings.from_environ(base_env(bpoc_url)))
    assert isinstance(app.rate_limit, NoRateLimit)
    limited = create_app(Settings.from_environ(base_env(bpoc_url, PROXY_RATE_LIMIT="5/minute")))
    assert isinstance(limited.rate_limit, UserRateLimit)


async def test_memory_storage_does_no_housekeeping_per_request() -> None:
    """limits' MemoryStorage would start a housekeeping pass after every hit (a task and a thread hop per key);
    ours leaves that to a timer. This pins the library hook it overrides: if limits renames it, this fails."""
    storage = _memory_storage()
    assert isinstance(storage, _QuietMemoryStorage)
    assert await storage.acquire_entry("k", 5, 60)
    assert await storage.acquire_entry("k", 5, 60)
    assert storage.timer is None
    assert (await storage.get_moving_window("k", 5, 60))[1] == 2  # the counting itself is the library's


async def test_a_burst_refused_by_the_short_rate_does_not_spend_the_long_one(
    bpoc_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rates are checked shortest window first: a request the per-second rate refuses leaves the hour alone."""
    clock = FakeTimer()
    monkeypatch.setattr(limits.aio.storage.memory, "time", clock_module(clock))
    settings = Settings.from_environ(base_env(bpoc_url, PROXY_RATE_LIMIT="3/hour;1/second"))
    limiter = UserRateLimit(settings)
    await limiter.start()
    try:
        await limiter.check("dave", "r1")
        for attempt in range(5):  # a burst: each refused by 1/second
            with pytest.raises(RateLimited, match="1 per second"):
                await limiter.check("dave", f"burst{attempt}")
        clock.advance(2)
        await limiter.check("dave", "r2")
        clock.advance(2)
        await limiter.check("dave", "r3")  # the hour's third request: the burst spent none of it
        clock.advance(2)
        with pytest.raises(RateLimited, match="3 per hour"):
            await limiter.check("dave", "r4")
    finally:
        await limiter.close()


async def test_memory_housekeeping_drops_expired_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Expired entries are dropped by our timer's pass, so memory does not grow with users gone quiet."""
    clock = FakeTimer()
    monkeypatch.setattr(limits.aio.storage.memory, "time", clock_module(clock))
    storage = _memory_storage()
    assert isinstance(storage, _QuietMemoryStorage)
    assert await storage.acquire_entry("quiet-user", 5, 1)
    assert "quiet-user" in storage.events
    clock.advance(2)  # the entry's window is over
    housekeeping = asyncio.create_task(storage.housekeeping(0.01))
    try:
        for _ in range(500):  # a generous bound; the first pass normally does it
            if "quiet-user" not in storage.events:
                break
            await asyncio.sleep(0.01)
        assert "quiet-user" not in storage.events
    finally:
        housekeeping.cancel()


def clock_module(clock: FakeTimer) -> object:
    """Stands in for the ``time`` module inside limits' memory storage: its time() is the fake clock."""
    return type("FakeTime", (), {"time": staticmethod(clock)})()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        pytest.param("memory://", "memory://", id="memory"),
        pytest.param("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0", id="no-password"),
        pytest.param("redis://:s3cret@redis:6379/0", "redis://:***@redis:6379/0", id="password"),
        pytest.param(
            "rediss://app:s3cret@redis:6380/2", "rediss://app:***@redis:6380/2", id="user-and-password"
        ),
        pytest.param("redis://s3cret@redis:6379", "redis://***@redis:6379", id="lone-user-part"),
        pytest.param("redis://:s3@c:ret@redis:6379/0", "redis://:***@redis:6379/0", id="at-in-password"),
        pytest.param("redis://:s3cret@[::1/0", "redis://***", id="unparseable"),
    ],
)
def test_masked_url(url: str, shown: str) -> None:
    assert masked_url(url) == shown


@pytest.mark.parametrize(
    ("rate", "text"),
    [
        pytest.param("600/minute", "600 per minute", id="one"),
        pytest.param("10 per 2 hours", "10 per 2 hours", id="multiples"),
        pytest.param("1/second", "1 per second", id="second"),
    ],
)
def test_describe(rate: str, text: str) -> None:
    assert describe(limits.parse(rate)) == text


# --- Settings and the command line -------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["check", "serve"])
@pytest.mark.parametrize("value", ["600/fortnight", "lots", "0/minute", "600/minute;"])
def test_a_bad_rate_limit_is_one_line_and_exit_2(command: str, value: str) -> None:
    result = run(command, env=base_env("http://127.0.0.1:9", PROXY_RATE_LIMIT=value), timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bpoc-proxy: PROXY_RATE_LIMIT must")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        pytest.param(
            {"PROXY_RATE_LIMIT_STORAGE": f"redis://:{PASSWORD}@redis:6379/zero"},
            "bpoc-proxy: PROXY_RATE_LIMIT_STORAGE must be memory:// or redis://",
            id="bad-db",
        ),
        pytest.param(
            {"PROXY_RATE_LIMIT_STORAGE": f"memcached://:{PASSWORD}@cache:11211"},
            "bpoc-proxy: PROXY_RATE_LIMIT_STORAGE must be memory:// or redis://",
            id="other-scheme",
        ),
        pytest.param(
            {"PROXY_RATE_LIMIT_STORAGE": "memory://", "PROXY_RATE_LIMIT_STORAGE_FILE": "/etc/hostname"},
            "bpoc-proxy: PROXY_RATE_LIMIT_STORAGE and PROXY_RATE_LIMIT_STORAGE_FILE are both set",
            id="both-set",
        ),
        pytest.param(
            {"PROXY_RATE_LIMIT_STORAGE_FILE": "/nonexistent/redis-url"},
            "bpoc-proxy: PROXY_RATE_LIMIT_STORAGE_FILE names '/nonexistent/redis-url', which cannot be read",
            id="missing-file",
        ),
    ],
)
def test_a_bad_storage_is_one_line_exit_2_and_masked(overrides: dict[str, str], message: str) -> None:
    result = run("check", env=base_env("http://127.0.0.1:9", PROXY_RATE_LIMIT="5/minute", **overrides))
    assert result.returncode == 2
    assert result.stderr.startswith(message), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert PASSWORD not in result.stdout + result.stderr


def test_check_prints_the_limit_and_the_storage_with_its_password_masked(tmp_path: Path) -> None:
    secret = tmp_path / "redis-url"
    secret.write_text(f"redis://:{PASSWORD}@redis.internal:6379/0\n")
    env = base_env(
        "http://127.0.0.1:9",
        PROXY_RATE_LIMIT="600/minute;20/second",
        PROXY_RATE_LIMIT_STORAGE_FILE=str(secret),
    )
    result = run("check", env=env)
    assert result.returncode == 0, result.stderr
    assert (
        "rate limit: 600 per minute; 20 per second per user (moving window), "
        "storage redis://:***@redis.internal:6379/0"
    ) in result.stdout
    assert PASSWORD not in result.stdout + result.stderr
    assert "rate limit: off" in run("check", env=base_env("http://127.0.0.1:9")).stdout


# --- Redis: one budget across processes, and failing open --------------------------------------------------------


def test_two_proxy_processes_sharing_redis_forward_exactly_the_limit(
    proxy_process: Callable[..., ProxyProcess],
    redis_server: RedisServer,
    client: httpx.Client,
    bpoc_state: BpocState,
) -> None:
    """Two `bpoc-proxy serve` processes count one user against one budget in Redis, under namespaced keys."""
    env = {"PROXY_RATE_LIMIT": "5/hour", "PROXY_RATE_LIMIT_STORAGE": redis_server.url}
    first, second = proxy_process(**env), proxy_process(**env)
    statuses = [client.get(p.url + ECHO, headers=auth()).status_code for p in [first, second] * 6]
    assert sorted(statuses) == [200] * 5 + [429] * 7
    assert forwarded(bpoc_state) == 5
    keys = redis_server.keys()
    assert b"bpoc-proxy:LIMITER/user/bob/5/1/hour" in keys
    assert all(key.startswith(b"bpoc-proxy:") for key in keys)


def test_a_password_protected_redis_from_a_file_is_never_logged(
    proxy_process: Callable[..., ProxyProcess],
    redis_factory: Callable[..., RedisServer],
    client: httpx.Client,
    tmp_path: Path,
) -> None:
    """The storage URL comes from PROXY_RATE_LIMIT_STORAGE_FILE; the logs show it with the password masked."""
    redis = redis_factory(password=PASSWORD)
    url_file = tmp_path / "redis-url"
    url_file.write_text(redis.url)
    proxy = proxy_process(PROXY_RATE_LIMIT="2/hour", PROXY_RATE_LIMIT_STORAGE_FILE=str(url_file))
    statuses = [client.get(proxy.url + ECHO, headers=auth()).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    proxy.process.terminate()
    proxy.process.wait(timeout=10)
    logs = proxy.logs()
    assert f"redis://:***@127.0.0.1:{redis.port}/0" in logs
    assert PASSWORD not in logs


def test_a_wrong_redis_password_fails_open_and_is_never_logged(
    proxy_process: Callable[..., ProxyProcess],
    redis_factory: Callable[..., RedisServer],
    client: httpx.Client,
    bpoc_state: BpocState,
) -> None:
    """Redis refusing the proxy is a limiter outage: requests pass, the warning names the error, not the password."""
    redis = redis_factory(password="the-right-one")
    wrong = redis.url.replace("the-right-one", PASSWORD)
    proxy = proxy_process(PROXY_RATE_LIMIT="1/hour", PROXY_RATE_LIMIT_STORAGE=wrong)
    statuses = [client.get(proxy.url + ECHO, headers=auth()).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    assert forwarded(bpoc_state) == 3
    proxy.process.terminate()
    proxy.process.wait(timeout=10)
    logs = proxy.logs()
    assert "the rate limit storage failed" in logs
    assert PASSWORD not in logs


def test_redis_stopped_mid_run_fails_open_with_one_warning(
    start_proxy: ProxyFactory,
    bpoc_url: str,
    redis_server: RedisServer,
    client: httpx.Client,
    bpoc_state: BpocState,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An outage of the limiter is not an outage of the portal: requests go on, /readyz stays 200, one warning."""
    proxy = start_proxy(
        base_env(bpoc_url, PROXY_RATE_LIMIT="3/hour", PROXY_RATE_LIMIT_STORAGE=redis_server.url)
    )
    with caplog.at_level(logging.INFO, logger="proxy.ratelimit"):
        assert [client.get(proxy + ECHO, headers=auth()).status_code for _ in range(2)] == [200, 200]
        redis_server.stop()
        statuses = [client.get(proxy + ECHO, headers=auth()).status_code for _ in range(6)]
        ready = client.get(proxy + "/readyz")
    assert statuses == [200] * 6
    assert forwarded(bpoc_state) == 8
    assert ready.status_code == 200
    assert len(warnings_of(caplog)) == 1
    assert warnings_of(caplog)[0].fields["storage"] == redis_server.url  # type: ignore[attr-defined]


def test_a_paused_redis_fails_open_within_the_bound(
    start_proxy: ProxyFactory,
    bpoc_url: str,
    redis_server: RedisServer,
    client: httpx.Client,
    bpoc_state: BpocState,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A Redis that stops answering (SIGSTOP) costs a request at most the check's bound, then it is forwarded."""
    proxy = start_proxy(
        base_env(bpoc_url, PROXY_RATE_LIMIT="3/hour", PROXY_RATE_LIMIT_STORAGE=redis_server.url)
    )
    assert client.get(proxy + ECHO, headers=auth()).status_code == 200
    redis_server.pause()
    try:
        with caplog.at_level(logging.WARNING, logger="proxy.ratelimit"):
            response = client.get(proxy + ECHO, headers=auth())
    finally:
        redis_server.resume()
    assert response.status_code == 200
    assert forwarded(bpoc_state) == 2
    [warning] = warnings_of(caplog)
    assert warning.fields["error"] == "no answer within 100 ms"  # type: ignore[attr-defined]


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server on loopback that accepts connections and never says a word."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                accepted.append(listener.accept()[0])

    listener.settimeout(0.1)
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    for conn in accepted:
        conn.close()
    listener.close()


def test_a_redis_that_never_answers_fails_open(
    start_proxy: ProxyFactory,
    bpoc_url: str,
    silent_server: int,
    client: httpx.Client,
    bpoc_state: BpocState,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The proxy starts, answers /readyz, and forwards requests when the storage accepts but never replies."""
    storage = f"redis://127.0.0.1:{silent_server}/0"
    with caplog.at_level(logging.WARNING, logger="proxy.ratelimit"):
        proxy = start_proxy(base_env(bpoc_url, PROXY_RATE_LIMIT="1/hour", PROXY_RATE_LIMIT_STORAGE=storage))
        statuses = [client.get(proxy + ECHO, headers=auth()).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    assert forwarded(bpoc_state) == 3
    assert client.get(proxy + "/readyz").status_code == 200
    [warning] = warnings_of(caplog)  # at start-up; the failures after it fall within the same minute
    assert "TimeoutError" in warning.fields["error"]  # type: ignore[attr-defined]


async def test_the_limit_counts_again_once_redis_answers(
    redis_server: RedisServer, timer: FakeTimer, caplog: pytest.LogCaptureFixture
) -> None:
    """After an outage the checks resume (once the pause after a failure is over), and the recovery is logged."""
    settings = Settings.from_environ(
        base_env("http://127.0.0.1:9", PROXY_RATE_LIMIT="2/hour", PROXY_RATE_LIMIT_STORAGE=redis_server.url)
    )
    limiter = UserRateLimit(settings, clock=timer)
    await limiter.start()
    try:
        await limiter.check("carol", "r1")
        redis_server.pause()
        with caplog.at_level(logging.INFO, logger="proxy.ratelimit"):
            await limiter.check("carol", "r2")  # no answer: let through
            await limiter.check("carol", "r3")  # within the pause: not even asked
            redis_server.resume()
            timer.advance(2)
            with pytest.raises(RateLimited) as refused:
                for attempt in range(3):  # the paused request may or may not have reached Redis
                    await limiter.check("carol", f"r{4 + attempt}")
        assert refused.value.headers["Retry-After"].isdigit()
        assert len(warnings_of(caplog)) == 1
        assert any("answers again" in r.getMessage() for r in caplog.records)
    finally:
        redis_server.resume()
        await limiter.close()


# --- rediss:// ---------------------------------------------------------------------------------------------------


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (PEM files: ca, cert, key)."""
    now = datetime.datetime.now(datetime.UTC)

    def build(
        subject: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: x509.Name,
        signer: ec.EllipticCurvePrivateKey,
        ca: bool,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test redis CA")])
    ca_cert = build("test redis CA", ca_key, ca_name, ca_key, True)
    server_cert = build("127.0.0.1", server_key, ca_name, ca_key, False)
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


def test_rediss_verifies_the_certificate_against_ssl_cert_file(
    start_proxy: ProxyFactory,
    bpoc_url: str,
    redis_factory: Callable[..., RedisServer],
    client: httpx.Client,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """rediss:// is TLS with the certificate and host name checked; SSL_CERT_FILE names the CA to trust."""
    ca, cert, key = _certificates(tmp_path)
    redis = redis_factory(tls=(ca, cert, key))
    env = base_env(bpoc_url, PROXY_RATE_LIMIT="1/hour", PROXY_RATE_LIMIT_STORAGE=redis.url)
    trusting = start_proxy({**env, "SSL_CERT_FILE": str(ca)})
    assert client.get(trusting + ECHO, headers=auth()).status_code == 200
    assert_rate_limited(client.get(trusting + ECHO, headers=auth()))
    with caplog.at_level(logging.WARNING, logger="proxy.ratelimit"):
        untrusting = start_proxy(env)  # the system's CAs do not know the test CA: not counted, not refused
        assert client.get(untrusting + ECHO, headers=auth("alice@agency.example")).status_code == 200
    [warning] = warnings_of(caplog)
    assert "certificate" in warning.fields["error"].lower()  # type: ignore[attr-defined]
