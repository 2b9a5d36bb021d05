"""Per-user rate limits (PROXY_RATE_LIMIT): a moving window per portal user, counted by the ``limits`` library in
the worker's memory or in Redis, where every worker and replica shares one budget.

The app builds one object at start-up and the pipeline calls its ``check`` right after authentication:
``NoRateLimit`` when the setting is off (nothing is counted, nothing is decided per request), ``UserRateLimit``
when it is on. The limiter guards BPOC's quota; it must never take the portal down with it. So a check waits at
most CHECK_TIMEOUT for its storage and then lets the request through (it fails open), skips the storage for
PAUSE_AFTER_FAILURE so an outage does not cost every request the full wait, and warns at most once a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import quote, urlsplit

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

from . import logs
from .environ import masked_url
from .errors import RateLimited
from .settings import Settings

if TYPE_CHECKING:  # redis-py is imported only when the storage is Redis: a worker without it stays smaller
    import redis.asyncio

log = logging.getLogger("proxy.ratelimit")

T = TypeVar("T")
_PROBE = RateLimitItemPerSecond(1_000_000)
Refusal = tuple[RateLimitItem, int]  # the rate that is full, and the seconds until it frees a request

#: The longest a request waits for the storage (the issue's bound).
CHECK_TIMEOUT = 0.1
#: The Redis client's connect and read timeouts: a call a request stopped waiting for ends within this, one way or
#: the other, in the background (a late answer still counts the request).
REDIS_TIMEOUT = 1.0
#: The longest start-up waits for its one call to Redis; longer than REDIS_TIMEOUT, so the client says what failed.
PROBE_TIMEOUT = 2.0
#: Calls given up on but not yet ended, at most; beyond it requests do not start new ones (they fail open).
MAX_ABANDONED = 32
#: A failing storage is warned about at most this often.
WARNING_INTERVAL = 60.0
#: After a failed check, requests skip the storage this long (fail open at once), as the directory does.
PAUSE_AFTER_FAILURE = 1.0
#: How often the in-memory storage drops expired entries (see _QuietMemoryStorage).
MEMORY_EXPIRY_INTERVAL = 10.0
#: Every Redis key of the proxy starts with this, so a shared Redis holds no key another program could collide with.
KEY_PREFIX = "bpoc-proxy"


class RateLimit(Protocol):
    async def start(self) -> None: ...

    async def check(self, user_id: str, request_id: str) -> None:
        """Count one request of ``user_id``; raise RateLimited when it is over the limit."""

    async def close(self) -> None: ...


class NoRateLimit:
    """PROXY_RATE_LIMIT is off: the pipeline's one call costs an empty coroutine, and nothing is counted."""

    async def start(self) -> None:
        pass

    async def check(self, user_id: str, request_id: str) -> None:
        pass

    async def close(self) -> None:
        pass


def build_rate_limit(settings: Settings) -> RateLimit:
    return UserRateLimit(settings) if settings.rate_limit else NoRateLimit()


def summary(settings: Settings) -> str:
    """What ``check`` and the start-up log say about the limit; the storage's password is masked."""
    if not settings.rate_limit:
        return "off"
    rates = "; ".join(describe(item) for item in settings.rate_limit)
    return f"{rates} per user (moving window), storage {masked_url(settings.rate_limit_storage)}"


def describe(item: RateLimitItem) -> str:
    unit = item.GRANULARITY.name
    return (
        f"{item.amount} per {unit}" if item.multiples == 1 else f"{item.amount} per {item.multiples} {unit}s"
    )


class UserRateLimit:
    """One budget per portal user id, for each rate of PROXY_RATE_LIMIT."""

    _limiter: MovingWindowRateLimiter

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        # Shortest window first: a request refused by a burst rate never spends the longer windows' budget.
        self._items = tuple(sorted(settings.rate_limit, key=lambda item: item.get_expiry()))
        self._uri = settings.rate_limit_storage
        self._ssl_cert_file = settings.ssl_cert_file
        self._summary = summary(settings)
        self._clock = clock
        self._pool: redis.asyncio.ConnectionPool | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._count: Callable[[tuple[str, str]], Awaitable[Refusal | None]] = self._hit
        self._abandoned: set[asyncio.Future[Any]] = set()
        self._paused_until = -math.inf
        self._next_warning = -math.inf
        self._failing = False
        self._uncounted = 0  # requests let through unchecked since the last warning

    async def start(self) -> None:
        if self._uri == "memory://":
            storage: Storage = _memory_storage()
            if isinstance(storage, _QuietMemoryStorage):
                self._housekeeping = asyncio.create_task(storage.housekeeping(MEMORY_EXPIRY_INTERVAL))
        else:
            self._pool = _redis_pool(self._uri, self._ssl_cert_file)
            storage = _redis_storage(self._uri, self._pool)
            self._count = self._hit_within_bound  # memory answers at once; only Redis needs the bound
        self._limiter = MovingWindowRateLimiter(storage)
        log.info("per-user rate limit on", extra={"fields": {"rateLimit": self._summary}})
        if self._pool is not None:
            await self._probe()

    async def close(self) -> None:
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping
        for task in list(self._abandoned):
            task.cancel()
        if self._pool is not None:
            await self._pool.aclose()

    async def check(self, user_id: str, request_id: str) -> None:
        if self._clock() < self._paused_until:
            self._uncounted += 1  # the storage failed a moment ago: fail open without waiting for it again
            return
        # Percent-encoded: a key stays one plain token whatever a portal puts in its user ids ("/", spaces).
        identifiers = ("user", quote(user_id, safe=""))
        try:
            refusal = await self._count(identifiers)
        except Exception as exc:  # whatever the storage raised, it must not refuse the request
            self._storage_failed(exc)
            return
        if self._failing:
            self._recovered()
        if refusal is not None:
            raise self._refuse(user_id, request_id, *refusal)

    async def _hit_within_bound(self, identifiers: tuple[str, str]) -> Refusal | None:
        return await self._within(self._hit(identifiers), CHECK_TIMEOUT)

    async def _hit(self, identifiers: tuple[str, str]) -> Refusal | None:
        """Count the request against each rate; on the first that is full, how long until it frees a request."""
        for item in self._items:
            if not await self._limiter.hit(item, *identifiers):
                stats = await self._limiter.get_window_stats(item, *identifiers)
                return item, max(1, math.ceil(stats.reset_time - time.time()))
        return None

    def _refuse(self, user_id: str, request_id: str, item: RateLimitItem, retry_after: int) -> RateLimited:
        fields = {
            "requestId": request_id,
            "userId": user_id,
            "limit": describe(item),
            "retryAfter": retry_after,
        }
        logs.request_line(log, "request refused: over the per-user rate limit", fields)
        return RateLimited(
            f"Too many requests: each user may send {describe(item)} through this proxy; "
            f"try again in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )

    async def _probe(self) -> None:
        """Use Redis once before serving, as a request would: it opens a connection and loads both Lua scripts
        (so the first requests need one round trip each), and a wrong address or password shows in the
        start-up log rather than on the first request. Its key expires within a second."""
        try:
            await self._within(self._hit_probe(), PROBE_TIMEOUT)
        except Exception as exc:
            self._storage_failed(exc, pause=False)

    async def _hit_probe(self) -> None:
        await self._limiter.hit(_PROBE, "start-up probe")
        await self._limiter.get_window_stats(_PROBE, "start-up probe")

    async def _within(self, work: Awaitable[T], timeout: float) -> T:
        """``work``'s result, or TimeoutError once ``timeout`` has passed.

        The work runs as a task of its own and is given up on, not cancelled: a bound that relied on the client
        giving way to cancellation would only be as good as the client (coredis was seen to hang for good, even
        when cancelled), and a Redis command cancelled halfway may have run anyway. A given-up call ends
        within REDIS_TIMEOUT, by the client's own timeouts, and is then forgotten.
        """
        if len(self._abandoned) >= MAX_ABANDONED:
            raise TimeoutError  # the storage is stuck: do not pile more work on it
        task = asyncio.ensure_future(work)
        try:
            done, _ = await asyncio.wait((task,), timeout=timeout)
        finally:
            if not task.done():
                self._abandon(task)
        if not done:
            raise TimeoutError
        return task.result()

    def _abandon(self, task: asyncio.Future[Any]) -> None:
        self._abandoned.add(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Future[Any]) -> None:
        self._abandoned.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log it as never retrieved

    def _storage_failed(self, exc: Exception, *, pause: bool = True) -> None:
        now = self._clock()
        if pause:
            self._paused_until = now + PAUSE_AFTER_FAILURE
        self._failing = True
        self._uncounted += 1
        if now < self._next_warning:
            return
        self._next_warning = now + WARNING_INTERVAL
        log.warning(
            "the rate limit storage failed; requests are let through uncounted until it answers (fails open)",
            extra={
                "fields": {
                    "storage": masked_url(self._uri),
                    "error": self._error_text(exc),
                    "uncountedRequests": self._uncounted,
                }
            },
        )
        self._uncounted = 0

    def _recovered(self) -> None:
        self._failing = False
        log.info(
            "the rate limit storage answers again; requests are counted",
            extra={"fields": {"storage": masked_url(self._uri), "uncountedRequests": self._uncounted}},
        )
        self._uncounted = 0

    def _error_text(self, exc: Exception) -> str:
        if isinstance(exc, TimeoutError):
            return f"no answer within {CHECK_TIMEOUT * 1000:.0f} ms"
        cause = getattr(exc, "storage_error", None) or exc  # limits wraps the client's error in StorageError
        text = f"{type(cause).__name__}: {cause}"
        password = urlsplit(self._uri).password
        return text.replace(password, "***") if password else text


class _QuietMemoryStorage(MemoryStorage):
    """limits' MemoryStorage, with its housekeeping (dropping expired entries) on a timer of ours.

    The library starts a housekeeping pass (a task, and a thread hop per key) after every hit whose previous pass
    has finished: 50 to 90 µs of CPU per request on the benchmark machine, where a whole proxied request costs
    about 140. The counting is the library's, untouched; only when the pass runs changes, so the memory held
    for expired entries is bounded by MEMORY_EXPIRY_INTERVAL instead of being freed at once.
    """

    # The library's private hook, overridden by its mangled name (_memory_storage checks it still exists).
    async def _MemoryStorage__schedule_expiry(self) -> None:
        return None

    async def housekeeping(self, interval: float) -> None:
        expire = getattr(self, _EXPIRE_EVENTS)
        while True:
            await asyncio.sleep(interval)
            try:
                await expire()
            except Exception:
                log.exception("dropping expired rate limit entries failed; retrying later")


_SCHEDULE_EXPIRY = "_MemoryStorage__schedule_expiry"
_EXPIRE_EVENTS = "_MemoryStorage__expire_events"


def _memory_storage() -> Storage:
    """Our quieter storage while the library keeps the private names it overrides; the library's own otherwise
    (slower per request, but correct)."""
    if hasattr(MemoryStorage, _SCHEDULE_EXPIRY) and hasattr(MemoryStorage, _EXPIRE_EVENTS):
        return _QuietMemoryStorage()
    return MemoryStorage()


def _redis_pool(uri: str, ssl_cert_file: Path | None) -> redis.asyncio.ConnectionPool:
    """The connections the Redis storage uses, owned here so that shutdown closes them.

    The client is redis-py's asyncio one, not coredis (what limits' ``async-redis`` extra installs): coredis 5
    reuses a connection's protocol object when it reconnects after an error reply such as NOSCRIPT, and under
    uvloop over TLS the old socket's late close then kills the new one: a rediss:// call hung for good.
    """
    import redis.asyncio
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    options: dict[str, Any] = {
        "socket_connect_timeout": REDIS_TIMEOUT,
        "socket_timeout": REDIS_TIMEOUT,
        # A retry could not finish within CHECK_TIMEOUT anyway; it would only add load to a struggling Redis.
        "retry": Retry(NoBackoff(), 0),
        "client_name": KEY_PREFIX,  # how the proxy shows in CLIENT LIST
    }
    if uri.startswith("rediss://"):
        # The certificate and the host name are checked as any TLS client does; SSL_CERT_FILE names the CA.
        options |= {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
        options["ssl_ca_certs"] = str(ssl_cert_file) if ssl_cert_file else None
    return redis.asyncio.ConnectionPool.from_url(uri, **options)


def _redis_storage(uri: str, pool: redis.asyncio.ConnectionPool) -> RedisStorage:
    options: dict[str, Any] = {"connection_pool": pool, "key_prefix": KEY_PREFIX, "wrap_exceptions": True}
    return RedisStorage(f"async+{uri}", implementation="redispy", **options)
