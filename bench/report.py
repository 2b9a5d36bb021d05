"""The run's one table and target list on stdout, and the same as JSON in bench/results/<timestamp>.json."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .results import CaseResult, Results, StreamResult
from .targets import Target

_COLUMNS = ("case", "throughput", "p50 ms", "p99 ms", "CPU us/req", "peak RSS MB", "x ceiling", "x direct")
_WIDTHS = (52, 13, 9, 9, 11, 14, 10, 9)


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _row(cells: tuple[str, ...]) -> str:
    first, *rest = cells
    return f"{first:<{_WIDTHS[0]}}" + "".join(
        f"{cell:>{width}}" for cell, width in zip(rest, _WIDTHS[1:], strict=True)
    )


def _case_row(result: CaseResult, results: Results, ceiling: str) -> str:
    key = result.case.key
    if result.error is not None:
        return _row((result.case.label, "FAILED", "-", "-", "-", "-", "-", "-"))
    rps = result.median("rps")
    return _row(
        (
            result.case.label,
            f"{_num(rps, 0)} req/s",
            _num(result.median("p50_ms"), 2),
            _num(result.median("p99_ms"), 2),
            _num(result.median("cpu_us_per_request"), 0),
            _num(result.peak_rss_mb()),
            _num(results.ratio(key, ceiling), 2),
            _num(results.ratio(key, result.case.direct), 2) if result.case.direct != key else "1.00",
        )
    )


def _stream_row(result: StreamResult, results: Results) -> str:
    if result.error is not None:
        return _row((result.case.label, "FAILED", "-", "-", "-", "-", "-", "-"))
    growth = result.max_growth_mb()
    peak = _num(result.peak_rss_mb()) + (f" (+{growth:.1f})" if growth is not None else "")
    ratio = results.stream_ratio(result.case.key)
    return _row(
        (result.case.label, f"{_num(result.mb_per_s(), 0)} MB/s", "-", "-", "-", peak, "-", _num(ratio, 2))
    )


def table(results: Results, targets: list[Target], ceiling: str) -> str:
    lines = [_row(_COLUMNS), "-" * sum(_WIDTHS)]
    lines += [_case_row(result, results, ceiling) for result in results.cases.values()]
    lines += [_stream_row(result, results) for result in results.streams.values()]
    lines.append("")
    for timing in results.matcher:
        lines.append(f"rule match, {timing.rules:>6,} rules, {timing.lookup:<29} {timing.ns:8,.0f} ns/lookup")
    for name, mb in results.idle_rss_mb.items():
        uss = results.idle_uss_mb.get(name)
        unique = f" (USS {uss:.1f} MB)" if uss is not None else ""
        lines.append(f"idle RSS, {name:<40} {mb:8.1f} MB per worker{unique}")
    lines += ["", "targets:"]
    for target in targets:
        verdict = "MET    " if target.met else "NOT MET"
        value = "n/a (case failed)" if target.value is None else f"{target.value:,.2f} {target.unit}"
        lines.append(f"  {verdict}  {target.name}: {value} (needs {target.compare} {target.limit:g})")
    failures = [r.case.label for r in results.cases.values() if r.error is None and r.failures()]
    if failures:
        lines.append("")
        lines.append(
            "warning: non-2xx answers or socket errors (not counted as throughput) in: " + "; ".join(failures)
        )
    problems: list[CaseResult | StreamResult] = [*results.cases.values(), *results.streams.values()]
    for problem in problems:
        if problem.error is not None:
            lines.append(f"error: {problem.case.label}: {problem.error}")
    return "\n".join(lines)


def to_json(results: Results, targets: list[Target], ceiling: str) -> dict[str, Any]:
    cases = {
        key: {
            "label": r.case.label,
            "server": r.case.server,
            "request": {
                "method": r.case.load.method,
                "url": r.case.load.url,
                "body_bytes": len(r.case.load.body),
            },
            "error": r.error,
            "runs": [dataclasses.asdict(run) for run in r.runs],
            "median": {name: r.median(name) for name in ("rps", "p50_ms", "p99_ms", "cpu_us_per_request")},
            "peak_rss_mb": r.peak_rss_mb(),
            "ratio_to_ceiling": results.ratio(key, ceiling),
            "ratio_to_direct": results.ratio(key, r.case.direct),
        }
        for key, r in results.cases.items()
    }
    streams = {
        key: {
            "label": r.case.label,
            "server": r.case.server,
            "error": r.error,
            "runs": [{**dataclasses.asdict(run), "growth_mb": run.growth_mb} for run in r.runs],
            "median_mb_per_s": r.mb_per_s(),
            "max_rss_growth_mb": r.max_growth_mb(),
            "ratio_to_direct": results.stream_ratio(key),
        }
        for key, r in results.streams.items()
    }
    return {
        "started": results.started,
        "finished": results.finished,
        "environment": results.environment,
        "settings": results.settings,
        "cases": cases,
        "streaming": streams,
        "matcher": {
            "error": results.matcher_error,
            "timings": [dataclasses.asdict(t) for t in results.matcher],
        },
        "idle_rss_mb": results.idle_rss_mb,
        "idle_uss_mb": results.idle_uss_mb,
        "targets": [{**dataclasses.asdict(t), "met": t.met} for t in targets],
    }


def write_json(document: dict[str, Any], directory: Path, stamp: str | None = None) -> Path:
    """``document`` as ``directory/<stamp>.json`` (default stamp: the UTC time now), never over an older file."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = stamp or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = directory / f"{stamp}.json"
    suffix = 1
    while path.exists():
        path = directory / f"{stamp}-{suffix}.json"
        suffix += 1
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path
