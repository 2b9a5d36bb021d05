"""``python -m bench soak [--duration S] [...]``: the command line of the soak."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from ..options import RESULTS_DIR
from .options import SoakOptions
from .run import run

DEFAULT = SoakOptions()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench soak",
        description="Soak bpoc-proxy: a long mixed load through one worker, checking memory, descriptors and "
        "the attribution of every body that reaches the upstream.",
    )
    parser.add_argument(
        "--duration", type=float, help=f"seconds of load (default {DEFAULT.duration:g}; 60 is a quick run)"
    )
    parser.add_argument(
        "--connections", type=int, help=f"keep-alive connections (default {DEFAULT.connections})"
    )
    parser.add_argument(
        "--callers", type=int, help=f"portal users with their own sessions (default {DEFAULT.callers})"
    )
    parser.add_argument(
        "--interval", type=float, help=f"seconds between report rows (default {DEFAULT.interval:g})"
    )
    parser.add_argument(
        "--upstream-keepalive-requests",
        type=int,
        help="the upstream closes each connection after N requests, as nginx does (default: never)",
    )
    parser.add_argument("--loadgen", choices=("wrk", "python"), help="default: wrk if installed, else Python")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="run the proxy under tracemalloc (bench/soak/memtrace.py) and write its growth report beside the JSON",
    )
    parser.add_argument("--results-dir", type=Path, help=f"where the JSON goes (default {RESULTS_DIR})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    given = {
        "duration": args.duration,
        "connections": args.connections,
        "callers": args.callers,
        "interval": args.interval,
        "keepalive_requests": args.upstream_keepalive_requests,
        "loadgen": args.loadgen,
        "results_dir": args.results_dir,
    }
    options = dataclasses.replace(DEFAULT, **{k: v for k, v in given.items() if v is not None})
    options = dataclasses.replace(options, pin=not args.no_pin, tracemalloc=args.tracemalloc)
    if options.duration <= 0 or options.connections < 1 or options.callers < 1 or options.interval <= 0:
        print(
            "bench soak: --duration, --connections, --callers and --interval must be positive",
            file=sys.stderr,
        )
        return 2
    # A plain kill stops the run the way Ctrl-C does: the servers it started are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    try:
        return run(options)
    except RuntimeError as exc:  # a server that would not start: its log's tail is in the message
        print(f"bench soak: {exc}", file=sys.stderr)
        return 1
