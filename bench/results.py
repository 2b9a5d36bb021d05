"""What one benchmark run found: every repetition of every case, and the medians the targets are judged on."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from .cases import Case, StreamCase
from .matcher import MatchTiming


@dataclass(frozen=True)
class ThroughputRun:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float
    peak_rss_mb: float
    requests: int
    non_2xx: int
    errors: int
    seconds: float


@dataclass(frozen=True)
class StreamRun:
    mb_per_s: float
    seconds: float
    rss_before_mb: float | None  # None when the server is not the proxy (direct to the upstream)
    peak_rss_mb: float | None

    @property
    def growth_mb(self) -> float | None:
        if self.rss_before_mb is None or self.peak_rss_mb is None:
            return None
        return self.peak_rss_mb - self.rss_before_mb


@dataclass
class CaseResult:
    case: Case
    runs: list[ThroughputRun] = field(default_factory=list)
    error: str | None = None

    def median(self, name: str) -> float | None:
        values = [float(getattr(run, name)) for run in self.runs]
        return statistics.median(values) if values and self.error is None else None

    def peak_rss_mb(self) -> float | None:
        return max((run.peak_rss_mb for run in self.runs), default=None)

    def failures(self) -> int:
        return sum(run.non_2xx + run.errors for run in self.runs)


@dataclass
class StreamResult:
    case: StreamCase
    runs: list[StreamRun] = field(default_factory=list)
    error: str | None = None

    def mb_per_s(self) -> float | None:
        values = [run.mb_per_s for run in self.runs]
        return statistics.median(values) if values and self.error is None else None

    def max_growth_mb(self) -> float | None:
        growths = [g for g in (run.growth_mb for run in self.runs) if g is not None]
        return max(growths) if growths and self.error is None else None

    def peak_rss_mb(self) -> float | None:
        peaks = [run.peak_rss_mb for run in self.runs if run.peak_rss_mb is not None]
        return max(peaks, default=None)


@dataclass
class Results:
    started: str
    environment: dict[str, Any]
    settings: dict[str, Any]
    cases: dict[str, CaseResult] = field(default_factory=dict)
    streams: dict[str, StreamResult] = field(default_factory=dict)
    matcher: list[MatchTiming] = field(default_factory=list)
    matcher_error: str | None = None
    idle_rss_mb: dict[str, float] = field(default_factory=dict)
    idle_uss_mb: dict[str, float] = field(default_factory=dict)  # for information: RSS less shared pages
    finished: str = ""

    def ratio(self, key: str, other: str | None, name: str = "rps") -> float | None:
        """``key``'s median ``name`` divided by ``other``'s, or None if either is missing."""
        if other is None or key not in self.cases or other not in self.cases:
            return None
        mine, theirs = self.cases[key].median(name), self.cases[other].median(name)
        return mine / theirs if mine is not None and theirs else None

    def stream_ratio(self, key: str) -> float | None:
        result = self.streams.get(key)
        if result is None or result.case.direct is None or result.case.direct not in self.streams:
            return None
        mine, theirs = result.mb_per_s(), self.streams[result.case.direct].mb_per_s()
        return mine / theirs if mine is not None and theirs else None
