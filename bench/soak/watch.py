"""What the soak reads of the proxy, from /proc: its resident memory and its open file descriptors."""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

from ..measure import MB, ProcessTree


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the load started (negative: before it)
    rss_mb: float
    fds: int


class Watched:
    """The proxy's worker process (with one worker, uvicorn serves in the process it was started as)."""

    def __init__(self, pid: int) -> None:
        self.pid = ProcessTree(pid).workers()[0].pid

    def rss_mb(self) -> float:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024 / MB
        raise RuntimeError(f"no VmRSS in /proc/{self.pid}/status")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def sample(self, t: float) -> Sample:
        return Sample(t, self.rss_mb(), self.fds())

    def wait_fds(self, baseline: int, limit: float, poll: float = 0.1) -> tuple[float | None, list[Sample]]:
        """Seconds until the open descriptors are back to ``baseline`` or fewer (None: not within ``limit``),
        and the counts seen on the way."""
        started = time.monotonic()
        seen: list[Sample] = []
        while (elapsed := time.monotonic() - started) <= limit:
            sample = self.sample(elapsed)
            seen.append(sample)
            if sample.fds <= baseline:
                return elapsed, seen
            time.sleep(poll)
        return None, seen


def rss_at(samples: list[Sample], t: float, window: float) -> float | None:
    """The median RSS of the samples in (t - window, t]: one figure that a single allocation burst cannot move."""
    values = [s.rss_mb for s in samples if t - window < s.t <= t]
    return statistics.median(values) if values else None


def slope_mb_per_minute(samples: list[Sample], start: float) -> float | None:
    """The least-squares slope of RSS over the samples from ``start`` on, in MB a minute."""
    tail = [s for s in samples if s.t >= start]
    if len(tail) < 3:
        return None
    fit = statistics.linear_regression([s.t for s in tail], [s.rss_mb for s in tail])
    return fit.slope * 60
