"""The soak's knobs, from ``python -m bench soak``'s command line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..load import Tool
from ..options import RESULTS_DIR


@dataclass(frozen=True)
class SoakOptions:
    duration: float = 600.0  # seconds of load
    connections: int = 200
    callers: int = 16  # portal users, each with its own session and recruiter
    interval: float = 30.0  # seconds between the report's rows
    keepalive_requests: int = 0  # the upstream closes a connection after this many requests (0: never)
    loadgen: Tool | None = None  # None: wrk if installed, else Python
    pin: bool = True
    tracemalloc: bool = False
    results_dir: Path = RESULTS_DIR
    # Targets (issue 11)
    rss_growth_mb: float = 1.0  # from the half-way point to the end
    fd_settle_s: float = 10.0  # descriptors back to the pre-load count after the load stops
    fd_wait_s: float = 30.0  # how long to watch them, so a miss is measured rather than cut off
