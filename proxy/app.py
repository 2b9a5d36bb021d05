"""The ASGI application: the proxy's own endpoints, the lifespan that owns clients and background tasks, and the
pipeline for everything else.

The proxy's own endpoints (``/healthz``, ``/readyz``, ``/metrics``) are served by a small Starlette router and are
never forwarded; every other path goes to the pipeline untouched by Starlette's middleware, which is where the
hot path's time budget goes (README, "Performance").
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
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router

from . import __version__, logs
from .auth import build_authenticator
from .errors import ConfigError, MethodNotAllowed
from .pipeline import Pipeline, Receive, Scope, Send
from .ratelimit import build_rate_limit
from .recruiters import RecruiterDirectory
from .reload import RulesHolder
from .rules import RuleSet
from .rules_file import load_rules
from .settings import Settings
from .upstream import ApiKey, Upstream

log = logging.getLogger("proxy.app")

OWN_PATHS = frozenset({"/healthz", "/readyz"})
WARM_UP_SECONDS = 3.0


class ProxyApp:
    def __init__(
        self, settings: Settings, rules: RuleSet, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self.rules = RulesHolder(settings.rules_path, rules)
        self.api_key = ApiKey(settings)
        self.http = httpx.AsyncClient(
            timeout=settings.portal_timeout, follow_redirects=False, trust_env=False
        )
        self.upstream = Upstream(settings, self.api_key)
        # The clock of every cache and back-off (sessions, keys, directory): tests move it instead of sleeping.
        self.authenticator = build_authenticator(settings, self.http, timer=clock)
        self.directory = RecruiterDirectory(settings, self.http, self.api_key.get, timer=clock)
        self.rate_limit = build_rate_limit(settings)
        self.pipeline = Pipeline(
            settings, self.rules.get, self.authenticator, self.directory, self.upstream, self.rate_limit
        )
        self.ready = False
        self._tasks: list[asyncio.Task[None]] = []
        self._router = Router(routes=[Route("/healthz", self._healthz), Route("/readyz", self._readyz)])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if scope["path"] in OWN_PATHS and scope["method"] not in ("GET", "HEAD"):
                error = MethodNotAllowed(
                    f"{scope['path']} answers GET and HEAD only.", headers={"Allow": "GET, HEAD"}
                )
                await self.pipeline.refuse(scope, send, error)
            elif scope["path"] in OWN_PATHS:
                await self._router(scope, receive, send)
            else:
                await self.pipeline(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await self.pipeline.refuse_websocket(scope, receive, send)

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
        self.ready = True
        log.info(
            "bpoc-proxy ready",
            extra={"fields": {"version": __version__, "upstream": self.settings.bpoc_base_url}},
        )

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

    async def _healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def _readyz(self, request: Request) -> Response:
        rules = self.rules.current
        body = {
            "status": "ready" if self.ready else "starting",
            "rules": len(rules.rules),
            "routes": len(rules.routes),
            "authMode": self.settings.auth_mode,
        }
        return JSONResponse(body, status_code=200 if self.ready else 503)


def create_app(
    settings: Settings, rules: RuleSet | None = None, *, clock: Callable[[], float] = time.monotonic
) -> ProxyApp:
    """Build the app; a bad rules file raises ConfigError here, before a socket is opened. ``clock`` is the
    monotonic clock of the caches and back-offs (tests pass one they can move)."""
    rules = rules if rules is not None else load_rules(settings.rules_path)
    return ProxyApp(settings, rules, clock=clock)


def from_environ() -> ProxyApp:
    """The uvicorn factory used by ``bpoc-proxy serve`` (each worker process builds its own app)."""
    try:
        return create_app(Settings.from_environ())
    except ConfigError as exc:
        raise SystemExit(f"bpoc-proxy: {exc}") from None
