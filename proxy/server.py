"""Serving the proxy: bind the listeners, run the workers, and stop by the drain protocol (README "Start and stop").

    serve(settings, rules)  ``bpoc-proxy serve``: binds both listeners first, then serves in this process
                            (PROXY_WORKERS=1) or supervises worker processes that inherit the bound sockets
    Worker                  one process's event loop: the app started once, both listeners, the drain
    Supervisor              starts the workers, says "ready" when every one serves, forwards signals,
                            restarts a worker that dies, and exits 0 only if every worker drained cleanly

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
import errno
import logging
import logging.config
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from . import __version__
from .app import ProxyApp, create_app
from .errors import ConfigError
from .logs import flush_all, logging_config
from .protocol import SERVER_OPTIONS, ProxyHttpProtocol
from .rules import RuleSet
from .settings import Settings

log = logging.getLogger("proxy.server")

EXIT_OK = 0
EXIT_CUT = 1  # the grace ran out with requests in flight, or a worker did not drain cleanly
EXIT_STARTUP = 2  # any start-up failure, as for a bad setting
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
BACKLOG = 2048
PARENT_CHECK_SECONDS = 1.0

#: How a worker tells whoever started it that it serves (None) or could not start (one line): a Supervisor's
#: pipe, or the demo's banner.
Report = Callable[[str | None], None]


@dataclass(frozen=True)
class Listener:
    """A bound socket, and whether it is the admin listener (``/healthz``, ``/readyz``, ``/metrics`` only)."""

    sock: socket.socket
    admin: bool

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def bind_listeners(settings: Settings) -> list[Listener]:
    """Bind the main listener and, unless PROXY_ADMIN_PORT is 0, the admin listener; a ConfigError naming the
    address and the setting when either cannot be bound."""
    main = bind(settings.host, settings.port, "PROXY_HOST", "PROXY_PORT")
    if not settings.admin_port:
        return [Listener(main, admin=False)]
    try:
        admin = bind(settings.admin_host, settings.admin_port, "PROXY_ADMIN_HOST", "PROXY_ADMIN_PORT")
    except ConfigError:
        main.close()
        raise
    return [Listener(main, admin=False), Listener(admin, admin=True)]


def bind(host: str, port: int, host_setting: str, port_setting: str) -> socket.socket:
    """A socket bound to host:port, inheritable by worker processes; a ConfigError naming the address and the
    setting (the host's when the address is unknown here, else the port's) when it cannot be bound."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        unknown_host = isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL
        reason = exc.strerror or str(exc)
        setting = host_setting if unknown_host else port_setting
        raise ConfigError(f"cannot listen on {shown} ({setting}): {reason[:1].lower()}{reason[1:]}") from None
    sock.set_inheritable(True)
    return sock


@contextlib.contextmanager
def metrics_directory(settings: Settings) -> Iterator[Path | None]:
    """Where the workers' metric files go, for the whole run: PROXY_METRICS_DIR with its stale files cleared, or a
    private temporary directory removed at exit. Workers inherit PROMETHEUS_MULTIPROC_DIR, which prometheus-client
    reads when it is first imported (proxy/metrics.py imports it when a worker makes its metrics)."""
    if not settings.metrics:
        yield None
        return
    made = settings.metrics_dir is None
    directory = _make_temporary() if made else _clear(settings.metrics_dir)  # type: ignore[arg-type]
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    try:
        yield directory
    finally:
        if made:
            shutil.rmtree(directory, ignore_errors=True)


def _make_temporary() -> Path:
    try:
        return Path(tempfile.mkdtemp(prefix="bpoc-proxy-metrics-"))
    except OSError as exc:
        raise ConfigError(
            f"cannot make a temporary directory for the metrics files ({exc.strerror}); "
            "set PROXY_METRICS_DIR to a writable directory, or PROXY_METRICS=false"
        ) from None


def _clear(directory: Path) -> Path:
    """Make the directory if needed and remove a previous run's files (stale counters would be summed in)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
        probe = directory / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"PROXY_METRICS_DIR names {str(directory)!r}, which is not a writable directory: {exc.strerror}"
        ) from None
    return directory


def serve(settings: Settings, rules: RuleSet) -> int:
    """``bpoc-proxy serve``: the listeners are bound before anything else happens (a taken port is one line and
    exit status 2, before any call to BPOC), then one worker serves here or several under a Supervisor."""
    logging.config.dictConfig(logging_config(settings.log_level))
    listeners = bind_listeners(settings)
    try:
        with metrics_directory(settings) as directory:
            if settings.workers > 1:
                status = Supervisor(settings, listeners, directory).run()
            else:
                worker = Worker(settings, listeners, rules)
                _stop_on_signals(worker.stop)
                status = worker.run()
            _stop_on_signals(lambda sig: None)  # the drain is over: a late signal must not change the status
        log.info("bpoc-proxy stopped", extra={"fields": {"exitStatus": status}})
        return status
    finally:
        for listener in listeners:
            listener.sock.close()
        flush_all()


def ready_fields(settings: Settings, listeners: list[Listener], pids: list[int]) -> dict[str, Any]:
    """What the "bpoc-proxy ready" line says: where it listens, what it loaded, and the workers' pids."""
    return {
        "version": __version__,
        "upstream": settings.bpoc_base_url,
        "listen": next(listener.url for listener in listeners if not listener.admin),
        "admin": next((listener.url for listener in listeners if listener.admin), None),
        "rules": str(settings.rules_path),
        "metrics": settings.metrics,
        "pid": os.getpid(),
        "workers": pids,
    }


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


# -- Several workers ------------------------------------------------------------------------------------------


@dataclass
class _Child:
    """A worker process and the pipe it reports on."""

    process: BaseProcess
    conn: Connection
    serving: bool = False
    failure: str | None = None
    reported: bool = False  # the pipe is closed: nothing more to read from it


class Supervisor:
    """Runs PROXY_WORKERS worker processes on the inherited listeners.

    It logs "bpoc-proxy ready" once every worker serves; a worker that cannot start stops them all (exit status 2,
    the worker's one line on stderr). SIGTERM and SIGINT are forwarded to every worker, which drain on their own;
    SIGHUP is forwarded too (each worker reloads its rules). A worker that dies while the proxy runs is logged and
    replaced. The exit status is 0 only if every worker drained cleanly.
    """

    def __init__(self, settings: Settings, listeners: list[Listener], metrics_dir: Path | None) -> None:
        self.settings = settings
        self.listeners = listeners
        self._metrics_dir = metrics_dir
        self._context = multiprocessing.get_context("spawn")
        self._children: list[_Child] = []
        self._signals: list[int] = []
        self._stopping = False
        self._announced = False
        self._status = EXIT_OK

    def run(self) -> int:
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_read, False)
        os.set_blocking(wake_write, False)
        previous = signal.set_wakeup_fd(wake_write)
        handlers = {sig: signal.signal(sig, self._on_signal) for sig in (*STOP_SIGNALS, signal.SIGHUP)}
        try:
            self._children = [self._spawn() for _ in range(self.settings.workers)]
            while self._children:
                wait([wake_read, *self._waitables()])
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_read, 512)
                self._step()
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(previous)
            os.close(wake_read)
            os.close(wake_write)
        return self._status

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self._signals.append(sig)

    def _spawn(self) -> _Child:
        parent_end, child_end = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_worker_main,
            args=(self.settings, self.listeners, child_end),
            name="bpoc-proxy-worker",
        )
        process.start()
        child_end.close()
        return _Child(process, parent_end)

    def _waitables(self) -> list[Any]:
        pipes = [child.conn for child in self._children if not child.reported]
        return [*pipes, *(child.process.sentinel for child in self._children)]

    def _step(self) -> None:
        for sig in self._take_signals():
            self._forward(sig)
        for child in list(self._children):
            self._read_reports(child)
            if not child.process.is_alive():
                self._exited(child)
        if not self._announced and not self._stopping and all(child.serving for child in self._children):
            self._announced = True
            pids = [child.process.pid or 0 for child in self._children]
            log.info("bpoc-proxy ready", extra={"fields": ready_fields(self.settings, self.listeners, pids)})

    def _begin_stopping(self) -> None:
        """No more workers are started; the supervisor's copies of the listening sockets close, so that the
        sockets stop accepting as soon as every worker closes its own (drain step 2)."""
        self._stopping = True
        for listener in self.listeners:
            listener.sock.close()

    def _take_signals(self) -> list[int]:
        taken, self._signals = self._signals, []
        return taken

    def _forward(self, sig: int) -> None:
        if sig in STOP_SIGNALS and not self._stopping:
            self._begin_stopping()
            log.info(
                "%s: every worker drains",
                signal.Signals(sig).name,
                extra={"fields": {"workers": len(self._children)}},
            )
        elif sig == signal.SIGHUP:
            log.info("SIGHUP: every worker reloads its rules")
        for child in self._children:
            if child.process.pid is not None and child.process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.process.pid, sig)

    def _read_reports(self, child: _Child) -> None:
        try:
            while not child.reported and child.conn.poll():
                failure = child.conn.recv()
                if failure is None:
                    child.serving = True
                    if self._announced:
                        pid = child.process.pid
                        log.info("a replacement worker serves", extra={"fields": {"pid": pid}})
                else:
                    child.failure = failure
        except (EOFError, OSError):
            child.reported = True

    def _exited(self, child: _Child) -> None:
        child.process.join()
        child.conn.close()
        self._children.remove(child)
        pid, code = child.process.pid or 0, child.process.exitcode
        if self._metrics_dir is not None:
            from prometheus_client.multiprocess import mark_process_dead

            # Its live gauges go; its counters stay in the sums (a counter never goes down).
            mark_process_dead(pid, str(self._metrics_dir))  # type: ignore[no-untyped-call]  # untyped upstream
        if self._stopping:
            if code != EXIT_OK:
                self._status = EXIT_CUT if self._status == EXIT_OK else self._status
            return
        if not child.serving:  # it never served: every replacement would fail the same way
            self._start_failed(child, code)
            return
        log.error(
            "worker %d died unexpectedly (%s); starting another",
            pid,
            _describe(code),
            extra={"fields": {"pid": pid}},
        )
        self._children.append(self._spawn())

    def _start_failed(self, child: _Child, code: int | None) -> None:
        failure = child.failure or f"a worker exited while starting ({_describe(code)})"
        if self._announced:
            log.error("a replacement worker could not start: %s; stopping", failure)
            self._status = EXIT_CUT
        else:
            print(f"bpoc-proxy: {failure}", file=sys.stderr, flush=True)
            self._status = EXIT_STARTUP
        self._begin_stopping()
        for other in self._children:
            if other.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(other.process.pid, signal.SIGTERM)


def _describe(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


def _stop_on_signals(stop: Callable[[int], None]) -> None:
    """SIGTERM and SIGINT call ``stop`` until the worker's event loop takes them over: a signal that arrives while
    the worker is still starting is acted on once it serves (it drains at once), never a traceback or status 143."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda sig, frame: stop(sig))


def _worker_main(settings: Settings, listeners: list[Listener], conn: Connection) -> None:
    """The entry point of a worker process (spawned: a fresh interpreter that inherits the environment)."""
    worker = Worker(settings, listeners, report=conn.send, supervised=True)
    _stop_on_signals(worker.stop)
    logging.config.dictConfig(logging_config(settings.log_level))
    status = worker.run()
    flush_all()
    sys.exit(status)
