"""What a serving process holds before it serves: the bound listening sockets, and the metrics files' directory.

Both are made by ``bpoc-proxy serve`` before anything else (a taken port is one line and exit status 2, before any
call to BPOC), and inherited by the worker processes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .settings import Settings


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
