"""One benchmark run, in order: the matcher microbenchmark, start the servers, check every case answers 2xx,
idle memory, warm-up, interleaved repetitions of the throughput cases, the streaming cases; then the report."""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import cases, matcher, report
from .cases import Case, StreamCase, Tokens
from .fleet import Fleet, FleetPlan, running
from .load import WRK_INSTALL_HINT, Tool, find_wrk, probe, run_load
from .measure import MB, PeakSampler
from .nginx import INSTALL_HINT as NGINX_INSTALL_HINT
from .nginx import find_nginx
from .options import Options
from .procs import ROOT, Cores, pin_self
from .results import CaseResult, Results, StreamResult, StreamRun, ThroughputRun
from .streaming import Transfer, download, upload
from .targets import evaluate
from .upstream import RECRUITER_EMAIL, RECRUITER_ID

JWT_SECRET = "bench-portal-secret-" + uuid.uuid4().hex + uuid.uuid4().hex


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(options: Options) -> int:
    tool, nginx, warnings = _tools(options)
    cores = Cores.detect(options.pin)
    pin_self(cores.load)
    environment = _environment(tool, nginx, cores, warnings)
    for warning in warnings:
        say(f"warning: {warning}")
    results = Results(_now(), environment, _settings(options))
    _run_matcher(results, options)
    with tempfile.TemporaryDirectory(prefix="bpoc-bench-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)  # nginx may serve the download from here as "nobody"
        plan = FleetPlan(workdir, cores, nginx, options.stream_bytes, JWT_SECRET, ROOT / "rules.yaml")
        say(f"starting servers ({cores.describe()}) ...")
        with running(plan) as fleet:
            _measure(results, fleet, options, tool, workdir, cores)
    results.finished = _now()
    targets = evaluate(results)
    document = report.to_json(results, targets, cases.CEILING_CASE)
    print(report.table(results, targets, cases.CEILING_CASE))
    path = report.write_json(document, options.results_dir)
    print(f"\nresults written to {path}")
    every: list[CaseResult | StreamResult] = [*results.cases.values(), *results.streams.values()]
    failed = [r for r in every if r.error is not None]
    return 1 if failed or results.matcher_error else 0


def _measure(
    results: Results, fleet: Fleet, options: Options, tool: Tool, workdir: Path, cores: Cores
) -> None:
    tokens = _tokens()
    urls = {key: server.url for key, server in fleet.servers.items()}
    for case in cases.throughput_cases(urls, tokens):
        results.cases[case.key] = CaseResult(case, error=_precheck(case))
    _idle_memory(fleet, results)
    runnable = [r.case for r in results.cases.values() if r.error is None]

    def load(case: Case, seconds: float) -> ThroughputRun:
        return _throughput_run(case, fleet, options, tool, workdir, cores, seconds)

    say(f"warming up ({options.warmup:g} s per case) ...")
    for case in runnable:
        _record(results, case, load, options.warmup, keep=False)
    for repetition in range(1, options.repeat + 1):
        say(f"repetition {repetition}/{options.repeat} ({options.duration:g} s per case) ...")
        for case in runnable:
            _record(results, case, load, options.duration, keep=True)
    for stream in cases.stream_cases():
        results.streams[stream.key] = StreamResult(stream)
    say(f"streaming {options.stream_bytes // MB} MB, {options.repeat} times each ...")
    # Warm the upstreams only (nginx's file into the page cache); the proxy's first transfer counts, memory and all.
    for stream in cases.stream_cases():
        if stream.direct is None:
            _stream(StreamResult(stream), fleet, options, tokens, quiet=True)
    for _ in range(options.repeat):
        for stream in cases.stream_cases():
            _stream(results.streams[stream.key], fleet, options, tokens)


def _record(
    results: Results, case: Case, load: Callable[[Case, float], ThroughputRun], seconds: float, *, keep: bool
) -> None:
    result = results.cases[case.key]
    if result.error is not None:
        return
    try:
        run = load(case, seconds)
    except RuntimeError as exc:
        result.error = str(exc)
        return
    if keep:
        result.runs.append(run)
        say(f"  {case.label:<52} {run.rps:>9,.0f} req/s  p99 {run.p99_ms:7.2f} ms")


def _throughput_run(
    case: Case, fleet: Fleet, options: Options, tool: Tool, workdir: Path, cores: Cores, seconds: float
) -> ThroughputRun:
    tree = fleet.tree(case.server)
    tree.reset_peaks()
    cpu_before = tree.cpu_seconds()
    measured = run_load(tool, case.load, options.connections, seconds, workdir, cores.load)
    cpu = tree.cpu_seconds() - cpu_before
    handled = measured.requests + measured.errors
    return ThroughputRun(
        rps=measured.rps,
        p50_ms=measured.p50_ms,
        p99_ms=measured.p99_ms,
        cpu_us_per_request=cpu / handled * 1e6 if handled else 0.0,
        peak_rss_mb=tree.peak_rss() / MB,
        requests=measured.requests,
        non_2xx=measured.non_2xx,
        errors=measured.errors,
        seconds=measured.seconds,
    )


def _stream(
    result: StreamResult, fleet: Fleet, options: Options, tokens: Tokens, *, quiet: bool = False
) -> None:
    if result.error is not None:
        return
    stream: StreamCase = result.case
    port = fleet.port(stream.server)
    headers = {"Authorization": f"Bearer {tokens.without_recruiter}"}

    def transfer() -> Transfer:
        if stream.direction == "download":
            return download(port, cases.BIG_PATH, headers, options.stream_bytes)
        return upload(port, cases.UPLOAD_PATH, headers, options.stream_bytes)

    try:
        if stream.server in (cases.PROXY_1, cases.PROXY_UPLOAD):
            with PeakSampler(fleet.tree(stream.server)) as sampler:
                done = transfer()
            run = StreamRun(done.mb_per_s, done.seconds, sampler.before / MB, sampler.peak / MB)
        else:
            done = transfer()
            run = StreamRun(done.mb_per_s, done.seconds, None, None)
    except (OSError, RuntimeError) as exc:
        result.error = str(exc)
        return
    result.runs.append(run)
    growth = f"  RSS +{run.growth_mb:.1f} MB" if run.growth_mb is not None else ""
    if not quiet:
        say(f"  {stream.label:<52} {run.mb_per_s:>9,.0f} MB/s{growth}")


def _precheck(case: Case) -> str | None:
    """One request first: a case that does not answer 2xx is reported as failed, not timed."""
    try:
        status, body = probe(case.load)
    except OSError as exc:
        return f"no answer: {exc}"
    if not 200 <= status < 300:
        return f"answered {status}: {body[:300].decode(errors='replace')}"
    return None


def _idle_memory(fleet: Fleet, results: Results) -> None:
    """Each proxy worker's memory after a few requests of every kind (so lazy imports are done), then a pause."""
    probes = [r.case.load for r in results.cases.values() if r.case.server in (cases.PROXY_1, cases.PROXY_2)]
    for _ in range(10):  # enough fresh connections for both workers of proxy x2 to see some
        for load in probes:
            try:
                probe(load)
            except OSError:
                pass
    time.sleep(1.0)
    for name, key in (("proxy x1", cases.PROXY_1), ("proxy x2", cases.PROXY_2)):
        tree = fleet.tree(key)
        results.idle_rss_mb[name] = tree.rss() / MB
        results.idle_uss_mb[name] = tree.uss() / MB


def _run_matcher(results: Results, options: Options) -> None:
    say("rule matching microbenchmark ...")
    try:
        results.matcher = matcher.run(number=options.match_number, repeat=5)
    except Exception as exc:  # the proxy's rules module is someone else's work in progress: report, go on
        results.matcher_error = f"{type(exc).__name__}: {exc}"
        say(f"error: rule matching microbenchmark: {results.matcher_error}")


def _tokens() -> Tokens:
    from proxy.sandbox.tokens import mint_hs

    return Tokens(
        with_recruiter=mint_hs(
            JWT_SECRET, sub="u1", email=RECRUITER_EMAIL, recruiter_id=RECRUITER_ID, exp_in=86400
        ),
        without_recruiter=mint_hs(JWT_SECRET, sub="u1", email=RECRUITER_EMAIL, exp_in=86400),
    )


def _tools(options: Options) -> tuple[Tool, str | None, list[str]]:
    warnings = []
    wrk = find_wrk()
    tool: Tool = options.loadgen or ("wrk" if wrk else "python")
    if tool == "wrk" and wrk is None:
        raise SystemExit(f"bench: --loadgen wrk, but wrk is not installed ({WRK_INSTALL_HINT})")
    if tool == "python" and not options.quick:
        reason = "by request" if options.loadgen else f"wrk is not installed; {WRK_INSTALL_HINT}"
        warnings.append(f"Python load generator ({reason}): it saturates before fast servers do")
    nginx = find_nginx()
    if options.upstream == "nginx" and nginx is None:
        raise SystemExit(f"bench: --upstream nginx, but nginx is not installed ({NGINX_INSTALL_HINT})")
    if options.upstream == "python" or nginx is None:
        if not options.quick:
            reason = "by request" if options.upstream else f"nginx is not installed; {NGINX_INSTALL_HINT}"
            warnings.append(f"Python upstream ({reason}): direct-to-upstream figures are lower than nginx's")
        nginx = None
    return tool, nginx, warnings


def _environment(tool: Tool, nginx: str | None, cores: Cores, warnings: list[str]) -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "pinning": cores.describe(),
        "load_generator": tool,
        "upstream": "nginx" if nginx else "python",
        "warnings": warnings,
    }


def _settings(options: Options) -> dict[str, Any]:
    return {
        "quick": options.quick,
        "duration_s": options.duration,
        "warmup_s": options.warmup,
        "repeat": options.repeat,
        "connections": options.connections,
        "stream_bytes": options.stream_bytes,
        "match_calls": options.match_number,
        "proxy_workers": {"proxy x1": 1, "proxy x2": 2},
    }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
