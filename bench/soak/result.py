"""What one soak run found, and the issue's targets judged on it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..load import LoadResult
from ..targets import Target
from .options import SoakOptions
from .watch import Sample, rss_at, slope_mb_per_minute


@dataclass(frozen=True)
class Row:
    """One line of the report, every ``interval`` seconds of load."""

    t: float
    rss_mb: float
    fds: int
    received: int  # requests that reached the upstream so far
    rate: float  # of them per second since the previous row


@dataclass
class SoakResult:
    started: str
    environment: dict[str, Any]
    settings: dict[str, Any]
    load: LoadResult | None = None
    tally: dict[str, dict[str, int]] = field(default_factory=dict)  # the upstream's: received, unattributed
    samples: list[Sample] = field(default_factory=list)  # every second of the load
    rows: list[Row] = field(default_factory=list)
    baseline_fds: int = 0
    baseline_rss_mb: float = 0.0
    load_seconds: float = 0.0  # from the load's start to its end, as the harness saw it
    fd_settle_s: float | None = None  # None: not back to the baseline while watched
    after: list[Sample] = field(
        default_factory=list
    )  # descriptors after the load, until back to the baseline
    cpu_percent: dict[str, float] = field(default_factory=dict)  # of one core, over the load
    tracemalloc_report: str | None = None
    error: str | None = None
    finished: str = ""

    @property
    def errors(self) -> int | None:
        return None if self.load is None else self.load.non_2xx + self.load.errors

    @property
    def unattributed(self) -> int | None:
        return sum(self.tally["unattributed"].values()) if self.tally else None

    def bodies(self) -> int:
        received = self.tally.get("received", {})
        return sum(n for kind, n in received.items() if kind in ("attributed", "spoofed", "unmarked"))

    def rss_window(self) -> float:
        """The span each RSS reading is the median over: 10 s, less for a short run (never under two samples)."""
        return max(2.0, min(10.0, self.load_seconds / 6))

    def rss_half_mb(self) -> float | None:
        return rss_at(self.samples, self.load_seconds / 2, self.rss_window())

    def rss_end_mb(self) -> float | None:
        return rss_at(self.samples, self.load_seconds, self.rss_window())

    def rss_growth_mb(self) -> float | None:
        half, end = self.rss_half_mb(), self.rss_end_mb()
        return None if half is None or end is None else end - half

    def rss_slope(self) -> float | None:
        return slope_mb_per_minute(self.samples, self.load_seconds / 2)


def evaluate(result: SoakResult, options: SoakOptions) -> list[Target]:
    errors = result.errors
    return [
        Target("errors (non-2xx, socket errors, timeouts)", errors, "<=", 0, "requests"),
        Target("bodies at the upstream without the caller's ID", result.unattributed, "<=", 0, "bodies"),
        Target(
            "RSS growth from the half-way point to the end",
            result.rss_growth_mb(),
            "<",
            options.rss_growth_mb,
            "MB",
        ),
        Target(
            "file descriptors back to the pre-load count after the load",
            result.fd_settle_s,
            "<=",
            options.fd_settle_s,
            "s",
        ),
    ]
