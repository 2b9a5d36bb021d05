"""The benchmark's knobs, from the command line; ``--quick`` is the CI smoke run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .load import Tool

UpstreamKind = Literal["nginx", "python"]
RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Options:
    quick: bool = False
    duration: float = 5.0  # seconds per measured run
    warmup: float = 2.0  # seconds per case, once, before the first repetition
    repeat: int = 3  # interleaved repetitions of every case
    connections: int = 64
    stream_bytes: int = 200 * 1024 * 1024
    loadgen: Tool | None = None  # None: wrk if installed, else Python
    upstream: UpstreamKind | None = None  # None: nginx if installed, else Python
    pin: bool = True
    match_number: int = 20_000  # calls per timing in the rule-matching microbenchmark
    results_dir: Path = RESULTS_DIR


FULL = Options()
# End to end in well under a minute, with nothing from Debian: the Python upstream and load generator.
QUICK = Options(
    quick=True,
    duration=0.5,
    warmup=0.2,
    repeat=1,
    connections=16,
    stream_bytes=8 * 1024 * 1024,
    loadgen="python",
    upstream="python",
    match_number=2_000,
)
