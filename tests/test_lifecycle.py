"""Start and stop of real ``bpoc-proxy serve`` processes: "ready" once everything serves, one line and exit status 2
for a start-up failure, the drain on SIGTERM and SIGINT with its exit statuses, workers that die, PID 1, and
starting from any directory."""

from __future__ import annotations

import inspect
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil  # type: ignore[import-untyped]  # no types-psutil in the test extras
import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from proxy.errors import ConfigError
from proxy.sandbox.seed import BOB_ID, BpocState
from proxy.sandbox.server import bind_socket
from proxy.settings import Settings, packaged_rules

from .conftest import ROOT, ProxyProcess, auth, base_env, proxy_environ, spawn_proxy
from .running import record, records, wait_for, wait_for_record, wait_for_value

JOB = {"title": "Backend Engineer"}


class InFlight:
    """A request sent from a thread; ``response`` or ``error`` once it ends."""

    def __init__(self, url: str) -> None:
        self.response: httpx.Response | None = None
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._send, args=(url,), daemon=True)
        self._thread.start()

    def _send(self, url: str) -> None:
        try:
            self.response = httpx.get(url, headers=auth(), timeout=60, trust_env=False)
        except httpx.HTTPError as exc:
            self.error = exc

    def join(self) -> None:
        self._thread.join(timeout=60)
        assert not self._thread.is_alive()


def refused(url: str) -> bool:
    try:
        httpx.get(url, timeout=5, trust_env=False)
    except httpx.ConnectError:
        return True
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_drains_and_exits_0(
    proxy_process: Callable[..., ProxyProcess], bpoc_state: BpocState, sig: signal.Signals
) -> None:
    """Not ready at once on both listeners while still serving for PROXY_SHUTDOWN_DELAY; then no new connections,
    the request in flight finishes with Connection: close, and the process exits 0."""
    proxy = proxy_process(PROXY_SHUTDOWN_DELAY="3", PROXY_SHUTDOWN_GRACE="60", PROXY_UPSTREAM_TIMEOUT="60")
    admin = proxy.admin_url
    assert admin is not None
    slow = InFlight(proxy.url + "/_sandbox/slow?seconds=6")
    wait_for(lambda: bpoc_state.requests_to("/_sandbox/slow"), "the slow request to reach BPOC")
    proxy.process.send_signal(sig)

    wait_for(lambda: httpx.get(admin + "/readyz").status_code == 503, "/readyz to answer 503")
    during = httpx.get(proxy.url + "/readyz")
    assert during.status_code == 503 and during.json()["status"] == "draining"
    assert httpx.get(proxy.url + "/api/v1/jobs", headers=auth()).status_code == 200  # served as usual
    assert httpx.get(admin + "/healthz").status_code == 200

    wait_for_record(proxy, "listeners closed")
    assert refused(proxy.url + "/healthz") and refused(admin + "/healthz")
    slow.join()
    assert slow.response is not None, slow.error
    assert slow.response.status_code == 200 and slow.response.json() == {"slept": 6.0}
    assert slow.response.headers["connection"] == "close"
    assert proxy.process.wait(timeout=60) == 0
    drained = record(proxy, "drained")
    assert drained is not None and drained["inFlight"] == 1
    assert "Traceback" not in proxy.logs()


def test_requests_still_running_when_the_grace_ends_are_cut_with_exit_1(
    proxy_process: Callable[..., ProxyProcess], bpoc_state: BpocState
) -> None:
    """PROXY_SHUTDOWN_GRACE ran out: the request is cut, the log says how many were, and the exit status is 1."""
    proxy = proxy_process(PROXY_SHUTDOWN_GRACE="0.5", PROXY_UPSTREAM_TIMEOUT="60")
    slow = InFlight(proxy.url + "/_sandbox/slow?seconds=60")
    wait_for(lambda: bpoc_state.requests_to("/_sandbox/slow"), "the slow request to reach BPOC")
    proxy.process.terminate()
    assert proxy.process.wait(timeout=60) == 1
    cut = record(proxy, "the shutdown grace ran out")
    assert cut is not None and cut["cut"] == 1 and cut["level"] == "error"
    slow.join()
    assert slow.response is None and isinstance(slow.error, httpx.TransportError)
    assert "Traceback" not in proxy.logs()


def test_idle_keep_alive_connections_are_closed_when_the_listeners_close(
    proxy_process: Callable[..., ProxyProcess],
) -> None:
    """A client holding an idle keep-alive connection does not keep the proxy from exiting."""
    proxy = proxy_process()
    with httpx.Client(trust_env=False, timeout=30) as client:
        assert client.get(proxy.url + "/api/v1/jobs", headers=auth()).status_code == 200
        proxy.process.terminate()
        assert proxy.process.wait(timeout=60) == 0


@pytest.mark.parametrize(
    ("taken", "workers"),
    [("PROXY_PORT", "1"), ("PROXY_ADMIN_PORT", "1"), ("PROXY_PORT", "2")],
    ids=["main", "admin", "main-two-workers"],
)
def test_a_taken_port_is_one_line_and_exit_2(
    bpoc_url: str, bpoc_state: BpocState, taken: str, workers: str
) -> None:
    """A port in use: one line naming the address and the setting, exit status 2, no traceback, no uvicorn line,
    no "ready", and no call to BPOC."""
    blocker = bind_socket()
    blocker.listen()
    port = blocker.getsockname()[1]
    env = proxy_environ(base_env(bpoc_url, PROXY_WORKERS=workers, **{taken: str(port)}))
    bpoc_state.reset_requests()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "proxy", "serve"], env=env, capture_output=True, text=True, timeout=60
        )
    finally:
        blocker.close()
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"bpoc-proxy: cannot listen on 127.0.0.1:{port} ({taken}): address already in use"
    ]
    assert bpoc_state.requests == []


def test_both_listeners_on_one_port_is_refused(bpoc_url: str) -> None:
    """PROXY_ADMIN_PORT equal to PROXY_PORT on an overlapping address is a start-up error naming both settings."""
    env = proxy_environ(
        base_env(bpoc_url, PROXY_HOST="0.0.0.0", PROXY_PORT="18080", PROXY_ADMIN_PORT="18080")
    )
    env["PROXY_ADMIN_HOST"] = "127.0.0.1"
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "PROXY_ADMIN_PORT" in lines[0] and "PROXY_PORT" in lines[0], result.stderr


def test_ready_is_logged_once_when_every_worker_serves(proxy_process: Callable[..., ProxyProcess]) -> None:
    """With two workers, one "bpoc-proxy ready" line names both; SIGTERM drains both and the supervisor exits 0."""
    proxy = proxy_process(PROXY_WORKERS="2")
    ready = wait_for_record(proxy, "bpoc-proxy ready")
    assert len(set(ready["workers"])) == 2 and os.getpid() not in ready["workers"]
    assert ready["listen"] == proxy.url and ready["admin"] == proxy.admin_url
    proxy.process.terminate()
    assert proxy.process.wait(timeout=60) == 0
    assert [r["msg"] for r in records(proxy)].count("bpoc-proxy ready") == 1
    drained = {r["pid"] for r in records(proxy) if r["msg"].startswith("drained")}
    assert drained == set(ready["workers"])


def test_a_worker_that_dies_is_replaced(proxy_process: Callable[..., ProxyProcess]) -> None:
    """A worker killed while serving is logged and replaced; the counters it wrote stay in the sums."""
    proxy = proxy_process(PROXY_WORKERS="2")
    assert proxy.admin_url is not None
    victim, survivor = wait_for_record(proxy, "bpoc-proxy ready")["workers"]
    for _ in range(4):
        assert httpx.get(proxy.url + "/api/v1/jobs", headers=auth(), timeout=30).status_code == 200
    served = {"route": "unlisted", "method": "GET", "status": "200"}
    wait_for_value(proxy.admin_url, "bpoc_proxy_requests_total", 4, **served)

    os.kill(victim, signal.SIGKILL)
    died = wait_for_record(proxy, f"worker {victim} died unexpectedly")
    assert died["level"] == "error" and "SIGKILL" in died["msg"]
    replacement = wait_for_record(proxy, "a replacement worker serves")["pid"]
    assert replacement not in (victim, survivor)
    for _ in range(4):
        assert httpx.get(proxy.url + "/api/v1/jobs", headers=auth(), timeout=30).status_code == 200
    wait_for_value(proxy.admin_url, "bpoc_proxy_requests_total", 8, **served)
    proxy.process.terminate()
    assert proxy.process.wait(timeout=60) == 0


def test_sighup_reloads_the_rules_in_every_worker(
    proxy_process: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    """With workers, the supervisor forwards SIGHUP: each worker reloads, and the reloads are counted."""
    rules = tmp_path / "rules.yaml"
    rules.write_text((ROOT / "rules.yaml").read_text())
    proxy = proxy_process(PROXY_WORKERS="2", PROXY_RULES=str(rules))
    assert proxy.admin_url is not None
    wait_for_record(proxy, "bpoc-proxy ready")
    rules.write_text("rules:\n  - match: POST /api/v1/jobs/create\n    set: {postedBy: recruiter}\n")
    proxy.process.send_signal(signal.SIGHUP)
    wait_for(
        lambda: [r["msg"] for r in records(proxy)].count("rules reloaded") == 2, "both workers to reload"
    )
    wait_for_value(proxy.admin_url, "bpoc_proxy_rules_reloads_total", 2, result="success")


def test_serve_check_and_explain_work_from_any_directory(bpoc_url: str, tmp_path: Path) -> None:
    """Without PROXY_RULES and without ./rules.yaml the packaged rules are used, and their absolute path printed."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = base_env(bpoc_url)
    del env["PROXY_RULES"]
    proxy = spawn_proxy(env, tmp_path, cwd=elsewhere)
    try:
        ready = wait_for_record(proxy, "bpoc-proxy ready")
        assert ready["rules"] == str(packaged_rules()) and Path(ready["rules"]).is_absolute()
        created = httpx.post(proxy.url + "/api/v1/jobs/create", headers=auth(), json=JOB, timeout=30)
        assert created.status_code == 201 and created.json()["postedBy"] == BOB_ID
    finally:
        proxy.process.terminate()
        proxy.process.wait(timeout=60)

    check = run_cli("check", env=env, cwd=elsewhere)
    assert check.returncode == 0, check.stderr
    assert f"rules: OK  ({packaged_rules()}:" in check.stdout
    explain = run_cli(
        "explain", "POST", "/api/v1/jobs/create", "--recruiter-id", BOB_ID, env=env, cwd=elsewhere
    )
    assert explain.returncode == 0 and f'"postedBy":"{BOB_ID}"' in explain.stdout, explain.stderr


def test_rules_in_the_working_directory_win_over_the_packaged_ones(bpoc_url: str, tmp_path: Path) -> None:
    """./rules.yaml is used when PROXY_RULES is not set, and named by its absolute path."""
    (tmp_path / "rules.yaml").write_text(
        "rules:\n  - match: POST /api/v1/things\n    set: {madeBy: recruiter}\n"
    )
    env = base_env(bpoc_url)
    del env["PROXY_RULES"]
    check = run_cli("check", env=env, cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert f"rules: OK  ({tmp_path / 'rules.yaml'}: 1 rules" in check.stdout


@pytest.mark.parametrize("command", ["check", "serve"])
def test_an_unreadable_proxy_rules_names_the_setting_and_the_absolute_path(
    tmp_path: Path, command: str
) -> None:
    env = base_env("http://127.0.0.1:9", PROXY_RULES="missing.yaml")
    result = run_cli(command, env=proxy_environ(env), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"bpoc-proxy: PROXY_RULES names '{tmp_path / 'missing.yaml'}', which cannot be read: No such file or directory"
    ]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_runs_as_pid_1(bpoc_url: str, tmp_path: Path, workers: str) -> None:
    """As a container's PID 1 (here in a new PID namespace), SIGTERM still drains and the exit status is 0."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare(1) is not installed")
    probe = subprocess.run([unshare, "-pf", "--mount-proc", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"new PID namespaces are not permitted here: {probe.stderr.strip()}")
    proxy = spawn_proxy(
        base_env(bpoc_url, PROXY_WORKERS=workers), tmp_path, argv=[unshare, "-pf", "--mount-proc"]
    )
    try:
        ready = wait_for_record(proxy, "bpoc-proxy ready")
        assert ready["pid"] == 1
        assert httpx.post(proxy.url + "/api/v1/jobs/create", headers=auth(), json=JOB).status_code == 201
        pid_1 = psutil.Process(proxy.process.pid).children()[0]  # unshare forks the namespace's first process
        pid_1.send_signal(signal.SIGTERM)
        assert proxy.process.wait(timeout=60) == 0
        assert record(proxy, "bpoc-proxy stopped") is not None
    finally:
        if proxy.process.poll() is None:
            proxy.process.kill()
            proxy.process.wait()


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args], env=full, cwd=cwd, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"PROXY_PORT": "9000", "PROXY_ADMIN_PORT": "9000"}, "PROXY_ADMIN_PORT is 9000"),
        (
            {"PROXY_HOST": "127.0.0.1", "PROXY_PORT": "9000", "PROXY_ADMIN_PORT": "9000"},
            "PROXY_ADMIN_PORT is 9000",
        ),
        ({"PROXY_HOST": "127.0.0.1", "PROXY_ADMIN_HOST": "10.0.0.5", "PROXY_ADMIN_PORT": "8080"}, None),
        ({"PROXY_ADMIN_PORT": "0"}, None),
        ({"PROXY_ADMIN_PORT": "65536"}, "PROXY_ADMIN_PORT must be at least 0 and at most 65535"),
        ({"PROXY_METRICS": "maybe"}, "PROXY_METRICS must be true or false"),
        ({"PROXY_SHUTDOWN_DELAY": "-1"}, "PROXY_SHUTDOWN_DELAY must be"),
        ({"PROXY_SHUTDOWN_GRACE": "soon"}, "PROXY_SHUTDOWN_GRACE must be a number"),
    ],
    ids=[
        "same-port",
        "same-port-wildcard-admin",
        "same-port-other-address",
        "admin-off",
        "admin-port",
        "metrics",
        "delay",
        "grace",
    ],
)
def test_listener_and_shutdown_settings(env: dict[str, str], error: str | None) -> None:
    full = base_env("http://127.0.0.1:9", **env)
    if error is None:
        Settings.from_environ(full)
    else:
        with pytest.raises(ConfigError, match=re.escape(error)):
            Settings.from_environ(full)


def test_the_uvicorn_internals_the_server_relies_on_are_there() -> None:
    """proxy/server.py drives uvicorn's protocol itself: its constructor, shutdown(), transport, and ServerState's
    connections and tasks. A uvicorn that renames one of them fails here, in one sentence, before the pin moves."""
    constructor = list(inspect.signature(HttpToolsProtocol.__init__).parameters)
    assert constructor == ["self", "config", "server_state", "app_state", "_loop"], uvicorn.__version__
    assert list(inspect.signature(HttpToolsProtocol.shutdown).parameters) == ["self"], uvicorn.__version__
    state = ServerState()
    assert isinstance(state.connections, set) and isinstance(state.tasks, set), uvicorn.__version__
    assert "self.transport" in inspect.getsource(HttpToolsProtocol.connection_made), uvicorn.__version__
    assert callable(getattr(uvicorn.Config, "get_loop_factory", None)), uvicorn.__version__
