"""The issue's targets, each judged on figures measured in the same run (ratios, so the machine cancels out)."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass

from . import cases
from .matcher import worst_ratio
from .results import Results

_COMPARE: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le, "<": operator.lt}


@dataclass(frozen=True)
class Target:
    name: str
    value: float | None  # None: the case it needs did not run
    compare: str  # ">=", "<=" or "<"
    limit: float
    unit: str

    @property
    def met(self) -> bool:
        return self.value is not None and _COMPARE[self.compare](self.value, self.limit)


def evaluate(results: Results) -> list[Target]:
    attributed, ceiling = cases.ATTRIBUTED_CACHE, cases.CEILING_CASE
    download, upload = results.streams.get(cases.DOWNLOAD_PROXY), results.streams.get(cases.UPLOAD_PROXY)
    size = f"{results.settings['stream_bytes'] // (1024 * 1024)} MB"
    idle = max(results.idle_rss_mb.values(), default=None)
    matcher = worst_ratio(results.matcher) if results.matcher else None
    metrics_cost = _difference(results, attributed, cases.ATTRIBUTED_NO_METRICS, "cpu_us_per_request")
    held_heads = _difference(results, cases.ATTRIBUTED_PLAIN_WRITES, attributed, "cpu_us_per_request")
    return [
        Target(
            "attributed POST throughput vs ceiling",
            results.ratio(attributed, ceiling),
            ">=",
            0.5,
            "x ceiling req/s",
        ),
        Target(
            "attributed POST p99 latency vs ceiling",
            results.ratio(attributed, ceiling, "p99_ms"),
            "<=",
            3.0,
            "x ceiling p99",
        ),
        Target(
            "pass-through GET throughput vs ceiling",
            results.ratio(cases.PASS_THROUGH, ceiling),
            ">=",
            0.6,
            "x ceiling req/s",
        ),
        Target(
            f"{size} download: peak RSS growth",
            download.max_growth_mb() if download else None,
            "<",
            30.0,
            "MB",
        ),
        Target(
            f"{size} download: throughput vs direct",
            results.stream_ratio(cases.DOWNLOAD_PROXY),
            ">=",
            0.3,
            "x direct MB/s",
        ),
        Target(
            f"{size} upload: peak RSS growth", upload.max_growth_mb() if upload else None, "<", 30.0, "MB"
        ),
        Target(
            f"{size} upload: throughput vs direct",
            results.stream_ratio(cases.UPLOAD_PROXY),
            ">=",
            0.3,
            "x direct MB/s",
        ),
        Target("rule match: 10,000 rules vs 10 (worst lookup)", matcher, "<=", 2.0, "x"),
        Target("idle RSS of a worker", idle, "<", 60.0, "MB"),
        Target(
            "attributed POST throughput vs ceiling, metrics on (issue 10)",
            results.ratio(attributed, ceiling),
            ">=",
            0.55,
            "x ceiling req/s",
        ),
        Target("metrics' CPU cost per attributed POST (on - off)", metrics_cost, "<=", 10.0, "us"),
        # Issue 9: the head-holding transport stays only if it saves at least 5 us per attributed POST.
        Target(
            "head-holding transport's saving per attributed POST (two writes - one)",
            held_heads,
            ">=",
            5.0,
            "us",
        ),
    ]


def _difference(results: Results, key: str, other: str, name: str) -> float | None:
    """``key``'s median ``name`` minus ``other``'s, or None if either is missing."""
    if key not in results.cases or other not in results.cases:
        return None
    mine, theirs = results.cases[key].median(name), results.cases[other].median(name)
    return mine - theirs if mine is not None and theirs is not None else None
