"""One soak run, in order: start the recording upstream and one proxy worker, check every kind of request once,
read the pre-load descriptors, run the load while reading the proxy every second, watch the descriptors fall
back after it, ask the upstream what it received; then the report."""

from __future__ import annotations

import http.client
import json
import os
import platform
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import report as bench_report
from ..fleet import FleetPlan, proxy_env
from ..load import WRK_INSTALL_HINT, Tool, find_wrk
from ..measure import ProcessTree
from ..procs import HOST, ROOT, Cores, Server, free_port, pin_self, spawn
from . import report
from .callers import KINDS, raw_requests
from .mixload import MixLoad
from .options import SoakOptions
from .result import Row, SoakResult, evaluate
from .upstream import TALLY_PATH
from .watch import Watched

JWT_SECRET = "bench-soak-secret-" + uuid.uuid4().hex + uuid.uuid4().hex


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(options: SoakOptions) -> int:
    tool, warnings = _tool(options)
    cores = Cores.detect(options.pin)
    pin_self(cores.load)
    for warning in warnings:
        say(f"warning: {warning}")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    result = SoakResult(_now(), _environment(tool, cores, warnings), _settings(options))
    with tempfile.TemporaryDirectory(prefix="bpoc-soak-") as tmp:
        workdir = Path(tmp)
        trace = options.results_dir / f"soak-{stamp}-tracemalloc.txt" if options.tracemalloc else None
        say(f"starting the upstream and the proxy ({cores.describe()}) ...")
        with _servers(options, workdir, cores, trace) as (upstream, proxy):
            _soak(result, options, tool, workdir, cores, upstream, proxy)
        result.tracemalloc_report = str(trace) if trace is not None and trace.exists() else None
    result.finished = _now()
    result.environment["load_average_end"] = os.getloadavg()
    targets = evaluate(result, options)
    print(report.table(result, targets))
    path = bench_report.write_json(report.to_json(result, targets), options.results_dir, f"soak-{stamp}")
    print(f"\nresults written to {path}")
    if result.tracemalloc_report:
        print(f"tracemalloc report: {result.tracemalloc_report}")
    return 1 if result.error is not None else 0


@contextmanager
def _servers(
    options: SoakOptions, workdir: Path, cores: Cores, trace: Path | None
) -> Iterator[tuple[Server, Server]]:
    servers: list[Server] = []
    try:
        port = free_port()
        argv = ["python", "-m", "bench.soak.upstream", "--port", str(port), "--callers", str(options.callers)]
        argv += ["--keepalive-requests", str(options.keepalive_requests)]
        upstream = spawn("soak upstream", argv, port=port, logs=workdir, cores=cores.load)
        servers.append(upstream)
        upstream.wait_ready(TALLY_PATH)
        port = free_port()
        env, argv = _proxy_command(options, workdir, cores, upstream.url, port, trace)
        proxy = spawn("proxy", argv, port=port, logs=workdir, env=env, cores=cores.server)
        servers.append(proxy)
        proxy.wait_ready()
        yield upstream, proxy
    finally:
        for server in reversed(servers):
            server.stop()


def _proxy_command(
    options: SoakOptions, workdir: Path, cores: Cores, upstream: str, port: int, trace: Path | None
) -> tuple[dict[str, str], list[str]]:
    plan = FleetPlan(workdir, cores, None, 0, JWT_SECRET, ROOT / "rules.yaml")
    env = proxy_env(plan, upstream, port, workers=1)
    env.pop("RECRUITER_SYNC_INTERVAL", None)  # the production default: the directory is read again meanwhile
    # The admin listener (and its metrics) on, as in production, never on its default port; a proxy without
    # one ignores these. Readiness is read from the main port's /healthz, which both versions answer.
    env.setdefault("PROXY_ADMIN_HOST", HOST)
    env.setdefault("PROXY_ADMIN_PORT", str(free_port()))
    if trace is None:
        return env, ["python", "-m", "proxy", "serve"]
    trace.parent.mkdir(parents=True, exist_ok=True)
    env["BENCH_TRACEMALLOC"] = str(trace)
    env["BENCH_TRACEMALLOC_INTERVAL"] = f"{max(5.0, options.duration / 4):g}"  # baseline at a quarter
    return env, ["python", "-m", "bench.soak.memtrace", "serve"]


def _soak(
    result: SoakResult,
    options: SoakOptions,
    tool: Tool,
    workdir: Path,
    cores: Cores,
    upstream: Server,
    proxy: Server,
) -> None:
    port = int(proxy.url.rsplit(":", 1)[1])
    tokens = _tokens(options)
    result.error = _precheck(port, raw_requests(HOST, port, tokens, KINDS))
    if result.error is not None:
        return
    watched = Watched(proxy.pid)
    result.baseline_fds, result.baseline_rss_mb = watched.fds(), watched.rss_mb()
    say(
        f"{options.duration:g} s of load: {options.connections} connections, {options.callers} callers, {tool}; "
        f"proxy {result.baseline_rss_mb:.1f} MB, {result.baseline_fds} descriptors before it"
    )
    requests = raw_requests(HOST, port, tokens)
    load = MixLoad(tool, proxy.url, requests, options.connections, options.duration, workdir, cores.load)
    try:
        _during(result, options, load, watched, {"proxy": proxy, "upstream": upstream})
        _after(result, options, watched, upstream)
    except (OSError, RuntimeError) as exc:  # the proxy died, or the load generator failed
        load.stop()
        result.error = f"{type(exc).__name__}: {exc}"


def _during(
    result: SoakResult, options: SoakOptions, load: MixLoad, watched: Watched, servers: dict[str, Server]
) -> None:
    """Read the proxy every second while the load runs, with a row every ``interval`` seconds; then the load's
    figures, and each server's CPU over it."""
    trees = {name: ProcessTree(server.pid) for name, server in servers.items()}
    cpu = {name: tree.cpu_seconds() for name, tree in trees.items()}
    upstream = servers["upstream"]
    started = time.monotonic()
    next_row, received = options.interval, (_received(upstream), 0.0)
    while load.running():
        now = time.monotonic() - started
        result.samples.append(watched.sample(now))
        if now >= next_row:
            received = _row(result, now, received, upstream)
            next_row += options.interval
        time.sleep(max(0.0, 1.0 - (time.monotonic() - started - now)))
    result.load_seconds = time.monotonic() - started
    result.samples.append(watched.sample(result.load_seconds))
    _row(result, result.load_seconds, received, upstream)
    for name, tree in trees.items():
        result.cpu_percent[name] = 100 * (tree.cpu_seconds() - cpu[name]) / result.load_seconds
    result.load = load.result(timeout=60)


def _after(result: SoakResult, options: SoakOptions, watched: Watched, upstream: Server) -> None:
    """The descriptors until they are back to the pre-load count, then what the upstream received in all."""
    result.fd_settle_s, result.after = watched.wait_fds(result.baseline_fds, options.fd_wait_s)
    settled = f"{result.fd_settle_s:.1f} s" if result.fd_settle_s is not None else "not yet"
    say(f"load done; descriptors back to {result.baseline_fds} after: {settled}")
    result.tally = _tally(upstream)


def _received(upstream: Server) -> int:
    """Requests the upstream has received so far."""
    return sum(_tally(upstream)["received"].values())


def _row(result: SoakResult, now: float, previous: tuple[int, float], upstream: Server) -> tuple[int, float]:
    sample = result.samples[-1]
    received = _received(upstream)
    rate = (received - previous[0]) / max(now - previous[1], 1e-9)
    result.rows.append(Row(now, sample.rss_mb, sample.fds, received, rate))
    say(
        f"  {now:6.0f} s  RSS {sample.rss_mb:6.1f} MB  {sample.fds:4d} fds  {rate:9,.0f} req/s at the upstream"
    )
    return received, now


def _tally(upstream: Server) -> dict[str, dict[str, int]]:
    port = int(upstream.url.rsplit(":", 1)[1])
    connection = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        connection.request("GET", TALLY_PATH)
        tally: dict[str, dict[str, int]] = json.loads(connection.getresponse().read())
        return tally
    finally:
        connection.close()


def _precheck(port: int, requests: Sequence[bytes]) -> str | None:
    """Each kind of request once per caller, each on a fresh connection: all must be answered 2xx."""
    for raw in requests:
        try:
            with socket.create_connection((HOST, port), timeout=10) as sock:
                sock.sendall(raw)
                response = http.client.HTTPResponse(sock)
                response.begin()
                body = response.read()
        except OSError as exc:
            return f"the proxy did not answer: {exc}"
        if not 200 <= response.status < 300:
            first = raw.split(b"\r\n", 1)[0].decode()
            return f"{first} answered {response.status}: {body[:300].decode(errors='replace')}"
    return None


def _tokens(options: SoakOptions) -> list[str]:
    from proxy.sandbox.tokens import mint_hs

    from .callers import callers

    lifetime = options.duration + 3600
    return [
        mint_hs(
            JWT_SECRET,
            sub=c.user_id,
            email=c.email,
            recruiter_id=c.recruiter_id if c.carries_id else None,
            exp_in=lifetime,
        )
        for c in callers(options.callers)
    ]


def _tool(options: SoakOptions) -> tuple[Tool, list[str]]:
    wrk = find_wrk()
    tool: Tool = options.loadgen or ("wrk" if wrk else "python")
    if tool == "wrk" and wrk is None:
        raise SystemExit(f"bench soak: --loadgen wrk, but wrk is not installed ({WRK_INSTALL_HINT})")
    warnings = []
    if tool == "python":
        reason = "by request" if options.loadgen else f"wrk is not installed; {WRK_INSTALL_HINT}"
        warnings.append(f"Python load generator ({reason}): it cannot keep the proxy busy at full rate")
    return tool, warnings


def _environment(tool: Tool, cores: Cores, warnings: list[str]) -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "pinning": cores.describe(),
        "load_generator": tool,
        "warnings": warnings,
        "load_average_start": os.getloadavg(),
    }


def _settings(options: SoakOptions) -> dict[str, Any]:
    return {
        "duration_s": options.duration,
        "connections": options.connections,
        "callers": options.callers,
        "interval_s": options.interval,
        "upstream_keepalive_requests": options.keepalive_requests,
        "mix": {"attributed POST": 0.6, "spoofed POST": 0.1, "pass-through GET": 0.3},
        "proxy_workers": 1,
        "tracemalloc": options.tracemalloc,
    }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
