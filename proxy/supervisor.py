"""Several workers: ``Supervisor`` starts PROXY_WORKERS worker processes on the inherited listeners, says "ready"
once every one serves, forwards signals, replaces a worker that dies, and exits 0 only if every worker drained
cleanly (README "Start and stop"). The exit statuses and the "ready" line are shared with a single worker
(``server.py``).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any

from . import __version__
from .listeners import Listener
from .settings import Settings

log = logging.getLogger("proxy.server")

EXIT_OK = 0
EXIT_CUT = 1  # the grace ran out with requests in flight, or a worker did not drain cleanly
EXIT_STARTUP = 2  # any start-up failure, as for a bad setting
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

#: A worker process's entry point: the settings, the inherited listeners, and the pipe it reports on.
WorkerMain = Callable[[Settings, list[Listener], Connection], None]


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

    def __init__(
        self, settings: Settings, listeners: list[Listener], metrics_dir: Path | None, target: WorkerMain
    ) -> None:
        self.settings = settings
        self._target = target
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
            target=self._target,
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


def stop_on_signals(stop: Callable[[int], None]) -> None:
    """SIGTERM and SIGINT call ``stop`` until the worker's event loop takes them over: a signal that arrives while
    the worker is still starting is acted on once it serves (it drains at once), never a traceback or status 143."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda sig, frame: stop(sig))
