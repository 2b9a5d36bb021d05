"""``python -m bench [--quick] [...]``: the command line of the benchmark."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from .options import FULL, QUICK, RESULTS_DIR
from .run import run


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark bpoc-proxy against a Starlette ceiling, nginx and two forwarding engines.",
        epilog="python -m bench soak [--duration S] ...: the soak (python -m bench soak --help).",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run for CI: short runs, Python upstream and load generator, 8 MB streams",
    )
    parser.add_argument(
        "--duration", type=float, help=f"seconds per measured run (default {FULL.duration:g})"
    )
    parser.add_argument("--warmup", type=float, help=f"seconds of warm-up per case (default {FULL.warmup:g})")
    parser.add_argument("--repeat", type=int, help=f"interleaved repetitions (default {FULL.repeat})")
    parser.add_argument(
        "--connections", type=int, help=f"concurrent connections (default {FULL.connections})"
    )
    parser.add_argument(
        "--stream-mb", type=int, help="size of the streamed download and upload (default 200)"
    )
    parser.add_argument("--loadgen", choices=("wrk", "python"), help="default: wrk if installed, else Python")
    parser.add_argument(
        "--upstream", choices=("nginx", "python"), help="default: nginx if installed, else Python"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--results-dir", type=Path, help=f"where the JSON goes (default {RESULTS_DIR})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["soak"]:
        from .soak.cli import main as soak

        return soak(argv[1:])
    args = _parser().parse_args(argv)
    options = QUICK if args.quick else FULL
    given = {
        "duration": args.duration,
        "warmup": args.warmup,
        "repeat": args.repeat,
        "connections": args.connections,
        "stream_bytes": args.stream_mb * 1024 * 1024 if args.stream_mb else None,
        "loadgen": args.loadgen,
        "upstream": args.upstream,
        "results_dir": args.results_dir,
    }
    options = dataclasses.replace(options, **{k: v for k, v in given.items() if v is not None})
    if args.no_pin:
        options = dataclasses.replace(options, pin=False)
    # A plain kill stops the run the way Ctrl-C does: the servers it started are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    try:
        return run(options)
    except RuntimeError as exc:  # a server that would not start: its log's tail is in the message
        print(f"bench: {exc}", file=sys.stderr)
        return 1
