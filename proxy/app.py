"""The ASGI application: the proxy's own endpoints, the lifespan that owns clients and background tasks, and the
pipeline for everything else.

Two listeners, two entry points. The main listener (``ProxyApp`` itself) answers ``/healthz`` and ``/readyz`` and
sends every other path to the pipeline, untouched by any framework, which is where the hot path's time budget goes
(README, "Performance"). The admin listener (``ProxyApp.admin``) answers ``/healthz``, ``/readyz`` and
``/metrics``, forwards nothing, and refuses any other path with a JSON 404. Neither needs a session.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson

from . import logs
from .auth import build_authenticator
from .errors import MethodNotAllowed, NotFound
from .exchange import Receive, Scope, Send
from .metrics import CONTENT_TYPE, OWN, Metrics
from .metrics import create as create_metrics
from .pipeline import Pipeline
from .ratelimit import build_rate_limit
from .recruiters import RecruiterDirectory
from .reload import RulesHolder
from .rules import RuleSet
from .rules_file import load_rules
from .settings import Settings
from .upstream import ApiKey, Upstream

log = logging.getLogger("proxy.app")

OWN_PATHS = frozenset({"/healthz", "/readyz"})
ADMIN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
WARM_UP_SECONDS = 3.0
METRICS_TICK_SECONDS = 1.0
_JSON = b"application/json"

OwnAnswer = tuple[int, bytes, bytes]  # status, content type, body


class ProxyApp:
    def __init__(
        self,
        settings: Settings,
        rules: RuleSet,
        *,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or create_metrics(settings.metrics)
        self.rules = RulesHolder(settings.rules_path, rules, self.metrics)
        self.api_key = ApiKey(settings)
        self.http = httpx.AsyncClient(
            timeout=settings.portal_timeout, follow_redirects=False, trust_env=False
        )
        self.upstream = Upstream(settings, self.api_key)
        # The clock of every cache and back-off (sessions, keys, directory): tests move it instead of sleeping.
        self.authenticator = build_authenticator(settings, self.http, timer=clock)
        self.directory = RecruiterDirectory(
            settings, self.http, self.api_key.get, timer=clock, metrics=self.metrics
        )
        self.rate_limit = build_rate_limit(settings)
        self.pipeline = Pipeline(
            settings,
            self.rules.get,
            self.authenticator,
            self.directory,
            self.upstream,
            self.rate_limit,
            self.metrics,
        )
        self.ready = False
        self.draining = False
        self._tasks: list[asyncio.Task[None]] = []
        self._own: dict[str, Callable[[], OwnAnswer]] = {
            "/healthz": self._healthz,
            "/readyz": self._readyz,
            "/metrics": self._metrics,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The main listener: /healthz and /readyz; every other path belongs to BPOC."""
        kind = scope["type"]
        if kind == "http":
            if scope["path"] in OWN_PATHS:
                await self._own_endpoint(scope, send)
            else:
                await self.pipeline(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await self.pipeline.refuse_websocket(scope, receive, send)

    async def admin(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The admin listener: /healthz, /readyz and /metrics; nothing is forwarded. Its lifespan is the main
        listener's (``bpoc-proxy serve`` starts the app once for both)."""
        if scope["type"] == "http":
            if scope["path"] in ADMIN_PATHS:
                await self._own_endpoint(scope, send)
            else:
                error = NotFound(
                    f"The admin listener serves /healthz, /readyz and /metrics only, not {scope['path']}."
                )
                await self.pipeline.refuse(scope, send, error, route=OWN)
        elif scope["type"] == "websocket":
            await self.pipeline.refuse_websocket(scope, receive, send)

    def begin_drain(self) -> None:
        """Shutdown has begun: /readyz answers 503 on both listeners from now on (README "Start and stop")."""
        self.ready = False
        self.draining = True

    async def _own_endpoint(self, scope: Scope, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        if method not in ("GET", "HEAD"):
            error = MethodNotAllowed(f"{path} answers GET and HEAD only.", headers={"Allow": "GET, HEAD"})
            await self.pipeline.refuse(scope, send, error, route=OWN)
            return
        started = time.perf_counter()
        if path == "/metrics" and not self.metrics.enabled:
            await self.pipeline.refuse(
                scope, send, NotFound("Metrics are off (PROXY_METRICS=false)."), route=OWN
            )
            return
        status, content_type, body = self._own[path]()
        headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
        self.metrics.request_done(OWN, method, status, time.perf_counter() - started)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:  # one line for the operator, not a traceback
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        await self.upstream.start()
        await self.authenticator.start()
        await self.rate_limit.start()
        await self._warm_directory()
        self._spawn(self.directory.run_sync())
        self._spawn(self._flush_logs())
        if self.metrics.enabled:
            self._spawn(self._metrics_tick())
        if self.settings.rules_reload:
            self._spawn(self.rules.watch(self.settings.rules_reload_interval))
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            # Only the main thread may own signals (not so under the tests' threaded servers).
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_sighup)
        # Everything built so far lives as long as the worker: frozen, out of the collector's sight, so a full
        # collection stays short. A request's objects die by reference count within a millisecond or two, and
        # a young generation of 50,000 lets them die before a collection scans them (the default of 700
        # collects every few dozen requests). Cyclic garbage waits a little longer: a few MB at most.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 10, 10)
        self.ready = not self.draining

    async def shutdown(self) -> None:
        self.ready = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        await self.upstream.close()
        await self.rate_limit.close()
        await self.http.aclose()
        self.metrics.flush()
        logs.flush_all()

    def _on_sighup(self) -> None:
        self.rules.reload(reason="SIGHUP")

    def _spawn(self, coroutine: Any) -> None:
        self._tasks.append(asyncio.create_task(coroutine))

    async def _warm_directory(self) -> None:
        """Load BPOC's directory before serving, so the first attributed requests do not wait for it.

        Waits at most WARM_UP_SECONDS: a slow or absent BPOC must not keep the proxy from starting; the fetch
        then finishes (or fails, and is retried on demand) in the background.
        """
        warm = asyncio.ensure_future(self.directory.refresh())
        done, _ = await asyncio.wait({warm}, timeout=WARM_UP_SECONDS)
        if warm not in done:
            self._tasks.append(warm)
            log.warning("BPOC's recruiter directory is slow to answer; starting without it")
        elif warm.exception() is not None:
            log.warning(
                "the first recruiter directory load failed; it is retried on demand: %s", warm.exception()
            )

    async def _flush_logs(self) -> None:
        while True:
            await asyncio.sleep(logs.FLUSH_INTERVAL)
            logs.flush_all()

    async def _metrics_tick(self) -> None:
        """Once a second, this worker's tallies and its upstream pool's gauges go to its metrics files, so that a
        scrape answered by any worker reads every worker's (proxy/metrics.py)."""
        while True:
            await asyncio.sleep(METRICS_TICK_SECONDS)
            self.metrics.flush()
            self.metrics.sample_pool(self.upstream)

    def _healthz(self) -> OwnAnswer:
        return 200, _JSON, b'{"status":"ok"}'

    def _readyz(self) -> OwnAnswer:
        rules = self.rules.current
        state = "ready" if self.ready else "draining" if self.draining else "starting"
        body = {
            "status": state,
            "rules": len(rules.rules),
            "routes": len(rules.routes),
            "authMode": self.settings.auth_mode,
        }
        return (200 if self.ready else 503), _JSON, orjson.dumps(body)

    def _metrics(self) -> OwnAnswer:
        self.metrics.sample_pool(self.upstream)
        return 200, CONTENT_TYPE.encode(), self.metrics.render() or b""


def create_app(
    settings: Settings,
    rules: RuleSet | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    metrics: Metrics | None = None,
) -> ProxyApp:
    """Build the app; a bad rules file raises ConfigError here, before a socket is opened. ``clock`` is the
    monotonic clock of the caches and back-offs (tests pass one they can move)."""
    rules = rules if rules is not None else load_rules(settings.rules_path)
    return ProxyApp(settings, rules, clock=clock, metrics=metrics)
