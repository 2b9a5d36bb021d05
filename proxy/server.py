"""Serving the proxy: bind the listeners, run the workers, and stop by the drain protocol (README "Start and stop").

    serve(settings, rules)  ``bpoc-proxy serve``: binds both listeners first (``listeners.py``), then serves in
                            this process (PROXY_WORKERS=1) or supervises worker processes that inherit the bound
                            sockets (``supervisor.py``)
    Worker                  one process's event loop: the app started once, both listeners, the drain

uvicorn provides the HTTP/1.1 protocol (``proxy/protocol.py``) and its per-connection machinery; the process around
it is ours, because the proxy starts and stops unlike ``uvicorn.run``: two listeners serving two entry points of
one app, one line and exit status 2 for any start-up failure, a drain with a readiness delay and a grace, and exit
status 0 after a clean drain (uvicorn re-raises the signal and ends with status 143).

What this takes from uvicorn beyond its public ``Config``: ``ServerState`` (the ``connections`` and ``tasks`` shared
by the protocols), the protocol's constructor ``(config, server_state, app_state, _loop)``, its ``shutdown()`` (close
when idle, else answer with ``Connection: close``) and its ``transport``. tests/test_lifecycle.py checks that they
are still there (uvicorn is pinned below 0.55), and the drain tests check what they do.

The drain, the same in every worker, on SIGTERM or SIGINT:

1. ``/readyz`` answers 503 on both listeners; for PROXY_SHUTDOWN_DELAY seconds everything else is served as usual
   (load balancers and Kubernetes endpoints stop sending new requests);
2. the listeners close, idle keep-alive connections are closed, and requests in flight get PROXY_SHUTDOWN_GRACE
   seconds to finish, each answered with ``Connection: close``;
3. exit status 0 when every one finished, 1 when the grace ran out (the log says how many were cut).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import logging.config
import os
import signal
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from .app import ProxyApp, create_app
from .listeners import Listener, bind_listeners, metrics_directory
from .logs import flush_all, logging_config
from .protocol import SERVER_OPTIONS, ProxyHttpProtocol
from .rules import RuleSet
from .settings import Settings
from .supervisor import (
    EXIT_CUT,
    EXIT_OK,
    EXIT_STARTUP,
    STOP_SIGNALS,
    Supervisor,
    ready_fields,
    stop_on_signals,
)

log = logging.getLogger("proxy.server")

BACKLOG = 2048
PARENT_CHECK_SECONDS = 1.0

#: How a worker tells whoever started it that it serves (None) or could not start (one line): a Supervisor's
#: pipe, or the demo's banner.
Report = Callable[[str | None], None]


def serve(settings: Settings, rules: RuleSet) -> int:
    """``bpoc-proxy serve``: the listeners are bound before anything else happens (a taken port is one line and
    exit status 2, before any call to BPOC), then one worker serves here or several under a Supervisor."""
    logging.config.dictConfig(logging_config(settings.log_level))
    listeners = bind_listeners(settings)
    try:
        with metrics_directory(settings) as directory:
            if settings.workers > 1:
                status = Supervisor(settings, listeners, directory, _worker_main).run()
            else:
                worker = Worker(settings, listeners, rules)
                stop_on_signals(worker.stop)
                status = worker.run()
            stop_on_signals(lambda sig: None)  # the drain is over: a late signal must not change the status
        log.info("bpoc-proxy stopped", extra={"fields": {"exitStatus": status}})
        return status
    finally:
        for listener in listeners:
            listener.sock.close()
        flush_all()


class Worker:
    """One process serving the app on every listener until SIGTERM or SIGINT, then draining.

    ``report`` is how it says that it serves, or why it could not start; without one it logs "bpoc-proxy ready"
    itself, or prints the failure as one line on stderr.
    """

    def __init__(
        self,
        settings: Settings,
        listeners: list[Listener],
        rules: RuleSet | None = None,
        *,
        report: Report | None = None,
        supervised: bool = False,
    ) -> None:
        self.settings = settings
        self.listeners = listeners
        self._rules = rules
        self._report = report
        self._supervised = supervised
        self._state = ServerState()
        self._servers: list[asyncio.AbstractServer] = []
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._signalled: int | None = None

    def run(self) -> int:
        """Serve until stopped; the exit status (0 drained, 1 requests cut, 2 start-up failed)."""
        loop_factory = uvicorn.Config(_no_app, log_config=None, **SERVER_OPTIONS).get_loop_factory()
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(self.serve())

    def stop(self, sig: int | None = None) -> None:
        """Begin the drain (the first call; later ones change nothing: the drain is bounded by its settings).
        Safe from any thread and from a signal handler; before the worker serves, it drains as soon as it does."""
        if self._signalled is not None:
            return
        self._signalled = sig or 0
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    async def serve(self) -> int:
        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        if self._signalled is not None:
            self._stop.set()
        self._handle_signals()
        app: ProxyApp | None = None
        try:
            app = create_app(self.settings, self._rules)
            await app.startup()
            await self._listen(app)
        except Exception as exc:  # one line for the operator, not a traceback
            if app is not None:
                with contextlib.suppress(Exception):
                    await app.shutdown()
            self._started(f"cannot start: {exc}")
            return EXIT_STARTUP
        self._started(None)
        watch = asyncio.ensure_future(self._watch_parent()) if self._supervised else None
        await self._stop.wait()
        if watch is not None:
            watch.cancel()
        status = await self._drain(app)
        await app.shutdown()
        return status

    def _handle_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals belong to the main thread (the demo's self-test and the tests run workers in threads)
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self.stop, sig)

    async def _listen(self, app: ProxyApp) -> None:
        loop = asyncio.get_running_loop()
        for listener in self.listeners:
            entry = app.admin if listener.admin else app
            # interface="asgi3": uvicorn's detection takes a bound method (app.admin) for an ASGI 2 app.
            config = uvicorn.Config(
                entry, lifespan="off", interface="asgi3", log_config=None, **SERVER_OPTIONS
            )
            config.load()
            server = await loop.create_server(
                self._protocol_factory(config, loop), sock=listener.sock, backlog=BACKLOG
            )
            self._servers.append(server)

    def _protocol_factory(
        self, config: uvicorn.Config, loop: asyncio.AbstractEventLoop
    ) -> Callable[[], asyncio.Protocol]:
        state = self._state  # shared by both listeners: the drain waits for every connection and request

        def create() -> asyncio.Protocol:
            return ProxyHttpProtocol(config=config, server_state=state, app_state={}, _loop=loop)

        return create

    def _started(self, failure: str | None) -> None:
        if self._report is not None:
            self._report(failure)
        elif failure is not None:
            print(f"bpoc-proxy: {failure}", file=sys.stderr, flush=True)
        else:
            log.info(
                "bpoc-proxy ready",
                extra={"fields": ready_fields(self.settings, self.listeners, [os.getpid()])},
            )

    async def _watch_parent(self) -> None:
        """A worker whose supervisor died (SIGKILL, out of memory) drains instead of serving on as an orphan."""
        parent = os.getppid()
        while os.getppid() == parent:
            await asyncio.sleep(PARENT_CHECK_SECONDS)
        log.error("the supervising process is gone; draining")
        self.stop()

    async def _drain(self, app: ProxyApp) -> int:
        settings, loop = self.settings, asyncio.get_running_loop()
        app.begin_drain()
        name = signal.Signals(self._signalled).name if self._signalled else "stop"
        log.info(
            "draining: /readyz answers 503; the listeners close in %g s",
            settings.shutdown_delay,
            extra={"fields": {"signal": name, "pid": os.getpid()}},
        )
        if settings.shutdown_delay:
            await asyncio.sleep(settings.shutdown_delay)
        for server in self._servers:
            server.close()
        for connection in list(self._state.connections):
            connection.shutdown()  # idle: closed now; busy: answered with Connection: close, then closed
        in_flight = len(self._state.tasks)
        log.info(
            "listeners closed; %d request(s) in flight may take %g s to finish",
            in_flight,
            settings.shutdown_grace,
            extra={"fields": {"inFlight": in_flight, "pid": os.getpid()}},
        )
        deadline = loop.time() + settings.shutdown_grace
        while self._state.tasks and loop.time() < deadline:
            await asyncio.wait(set(self._state.tasks), timeout=deadline - loop.time())
        while self._state.connections and loop.time() < deadline:
            await asyncio.sleep(0.01)  # their last bytes are being written before the close
        cut = len(self._state.tasks)
        if cut:
            log.error(
                "the shutdown grace ran out (PROXY_SHUTDOWN_GRACE=%g s): %d request(s) in flight cut",
                settings.shutdown_grace,
                cut,
                extra={"fields": {"cut": cut, "inFlight": in_flight, "pid": os.getpid()}},
            )
            await self._cut()
            return EXIT_CUT
        fields = {"inFlight": in_flight, "pid": os.getpid()}
        log.info("drained: every request in flight finished", extra={"fields": fields})
        return EXIT_OK

    async def _cut(self) -> None:
        """Close the connections of the requests still in flight and cancel them. uvicorn would log each
        cancellation as an application error with a traceback; the one line above says what happened."""
        logging.getLogger("uvicorn.error").addFilter(_not_a_cancellation)
        for connection in list(self._state.connections):
            connection.transport.abort()
        tasks = set(self._state.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=1.0)


def _not_a_cancellation(record: logging.LogRecord) -> bool:
    return not (record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError))


async def _no_app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - never served
    """A placeholder app for the uvicorn.Config that only chooses the event loop."""


def _worker_main(settings: Settings, listeners: list[Listener], conn: Connection) -> None:
    """The entry point of a worker process (spawned: a fresh interpreter that inherits the environment)."""
    worker = Worker(settings, listeners, report=conn.send, supervised=True)
    stop_on_signals(worker.stop)
    logging.config.dictConfig(logging_config(settings.log_level))
    status = worker.run()
    flush_all()
    sys.exit(status)
