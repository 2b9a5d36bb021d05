"""The soak's report: rows every interval, totals and targets on stdout, the same as JSON in bench/results/."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..targets import Target
from .result import SoakResult


def table(result: SoakResult, targets: list[Target]) -> str:
    lines = [f"{'time':>8}  {'RSS MB':>8}  {'fds':>5}  {'req/s at the upstream':>22}", "-" * 49]
    lines.append(f"{'before':>8}  {result.baseline_rss_mb:8.1f}  {result.baseline_fds:5d}  {'-':>22}")
    for row in result.rows:
        lines.append(f"{row.t:7.0f}s  {row.rss_mb:8.1f}  {row.fds:5d}  {row.rate:22,.0f}")
    lines += ["", *_totals(result), "", "targets:"]
    for target in targets:
        verdict = "MET    " if target.met else "NOT MET"
        value = "not measured" if target.value is None else f"{target.value:,.2f} {target.unit}"
        lines.append(f"  {verdict}  {target.name}: {value} (needs {target.compare} {target.limit:g})")
    if result.error is not None:
        lines += ["", f"error: {result.error}"]
    return "\n".join(lines)


def _totals(result: SoakResult) -> list[str]:
    lines = []
    load = result.load
    if load is not None:
        rate = load.requests / load.seconds if load.seconds else 0.0
        lines.append(
            f"requests          {load.requests:,} in {load.seconds:,.0f} s ({rate:,.0f} req/s), "
            f"p50 {load.p50_ms:.2f} ms, p99 {load.p99_ms:.2f} ms"
        )
        lines.append(
            f"errors            {load.non_2xx + load.errors:,} (non-2xx {load.non_2xx:,}, "
            f"socket errors {load.errors - load.timeouts:,}, timeouts {load.timeouts:,})"
        )
    if result.tally:
        received = result.tally["received"]
        kinds = ", ".join(f"{kind} {n:,}" for kind, n in sorted(received.items()))
        opened = result.tally.get("connections", {}).get("opened", 0)
        lines.append(f"at the upstream   {kinds}; over {opened:,} connections")
        reasons = ", ".join(f"{reason} {n:,}" for reason, n in result.tally["unattributed"].items())
        lines.append(f"unattributed      {result.unattributed:,} of {result.bodies():,} bodies ({reasons})")
    half, end, growth = result.rss_half_mb(), result.rss_end_mb(), result.rss_growth_mb()
    if half is not None and end is not None and growth is not None:
        slope = result.rss_slope()
        trend = f", {slope:+.2f} MB/min fitted over that half" if slope is not None else ""
        lines.append(
            f"RSS               {half:.1f} MB at {result.load_seconds / 2:,.0f} s, {end:.1f} MB at "
            f"{result.load_seconds:,.0f} s: {growth:+.2f} MB{trend}"
        )
    if result.rows:
        peak = max(row.fds for row in result.rows)
        back = (
            f"back to {result.baseline_fds} {result.fd_settle_s:.1f} s after it"
            if result.fd_settle_s is not None
            else f"still {result.after[-1].fds} {result.after[-1].t:.0f} s after it"
        ) if result.after else "not watched after it"  # fmt: skip
        lines.append(
            f"descriptors       {result.baseline_fds} before the load, up to {peak} during it, {back}"
        )
    if result.cpu_percent:
        cpu = ", ".join(f"{name} {percent:.0f}%" for name, percent in result.cpu_percent.items())
        lines.append(f"CPU of one core   {cpu}")
    return lines


def to_json(result: SoakResult, targets: list[Target]) -> dict[str, Any]:
    return {
        "kind": "soak",
        "started": result.started,
        "finished": result.finished,
        "environment": result.environment,
        "settings": result.settings,
        "error": result.error,
        "load": dataclasses.asdict(result.load) if result.load is not None else None,
        "errors": result.errors,
        "upstream": result.tally,
        "unattributed": result.unattributed,
        "bodies": result.bodies(),
        "rows": [dataclasses.asdict(row) for row in result.rows],
        "samples": [dataclasses.asdict(sample) for sample in result.samples],
        "baseline": {"rss_mb": result.baseline_rss_mb, "fds": result.baseline_fds},
        "rss": {
            "half_mb": result.rss_half_mb(),
            "end_mb": result.rss_end_mb(),
            "growth_mb": result.rss_growth_mb(),
            "slope_mb_per_min": result.rss_slope(),
            "window_s": result.rss_window(),
        },
        "fds_after_load": {
            "settle_s": result.fd_settle_s,
            "samples": [dataclasses.asdict(sample) for sample in result.after],
        },
        "cpu_percent": result.cpu_percent,
        "tracemalloc_report": result.tracemalloc_report,
        "targets": [{**dataclasses.asdict(t), "met": t.met} for t in targets],
    }
