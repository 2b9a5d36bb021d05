"""Starting, pinning, waiting for and stopping the benchmark's server processes, all on 127.0.0.1."""

from __future__ import annotations

import ctypes
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
# Settings of the proxy under test, or of a shell it was started from: never inherited by a benchmark process.
_OWN_PREFIXES = ("BPOC_", "PROXY_", "PORTAL_", "RECRUITER_", "BENCH_")


@dataclass(frozen=True)
class Cores:
    """Where each side runs: the load generator and upstreams on ``load``, the server under test on ``server``.

    None means "not pinned" (fewer than two cores, or no ``os.sched_setaffinity`` on this platform).
    """

    load: frozenset[int] | None
    server: frozenset[int] | None
    every: frozenset[int] | None

    @classmethod
    def detect(cls, enabled: bool = True) -> Cores:
        if not enabled or not hasattr(os, "sched_getaffinity"):
            return cls(None, None, None)
        available = sorted(os.sched_getaffinity(0))
        if len(available) < 2:
            return cls(None, None, None)
        return cls(frozenset(available[:1]), frozenset(available[1:2]), frozenset(available))

    def describe(self) -> str:
        if self.load is None or self.server is None:
            return "not pinned (fewer than two cores available)"
        return f"load generator + upstreams on core {min(self.load)}, server under test on core {min(self.server)}"


def pin_self(cores: frozenset[int] | None) -> None:
    if cores is not None:
        os.sched_setaffinity(0, cores)


def pinned(cores: frozenset[int] | None) -> Callable[[], None]:
    """What a child runs between fork and exec: its cores, and (Linux) to be stopped if the benchmark dies."""

    def setup() -> None:
        if cores is not None:
            os.sched_setaffinity(0, cores)
        if _LIBC is not None:
            _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)  # no orphaned servers after a killed run

    return setup


def _libc() -> ctypes.CDLL | None:
    """Loaded once in the parent: a child between fork and exec should only call, not load."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_PR_SET_PDEATHSIG = 1
_LIBC = _libc()


_GIVEN: set[int] = set()


def free_port() -> int:
    """A port free now and not given out before in this run: a server spawned earlier may not have bound the port
    it was given yet, and the kernel would hand the same one out again."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_PREFIXES)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


@dataclass
class Server:
    """One process the benchmark started; ``url`` is its base URL, its output goes to ``log``."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, path: str = "/healthz", timeout: float = 30.0) -> None:
        port = int(self.url.rsplit(":", 1)[1])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self._tail()}")
            if _answers(port, path):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not answer {path} within {timeout:g} s:\n{self._tail()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def _tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no log)"


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    port: int,
    logs: Path,
    env: Mapping[str, str] | None = None,
    cores: frozenset[int] | None = None,
) -> Server:
    """Start ``argv`` (``python`` means this interpreter) with stdout and stderr going to a file in ``logs``."""
    command = [sys.executable if argv[0] == "python" else argv[0], *argv[1:]]
    log = logs / f"{name.replace(' ', '-').replace(':', '')}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            env=child_env(env or {}),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=pinned(cores),  # set before exec, so uvicorn's workers inherit it
        )
    return Server(name, f"http://{HOST}:{port}", process, log)


def uvicorn_argv(app: str, port: int, *, factory: bool = False) -> list[str]:
    argv = ["python", "-m", "uvicorn", app, "--host", HOST, "--port", str(port)]
    argv += ["--no-access-log", "--loop", "uvloop", "--http", "httptools", "--log-level", "warning"]
    return argv + (["--factory"] if factory else [])


def _answers(port: int, path: str) -> bool:
    connection = http.client.HTTPConnection(HOST, port, timeout=2)
    try:
        connection.request("GET", path)
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()
