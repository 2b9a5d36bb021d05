"""``python -m bench.soak.memtrace serve``: ``bpoc-proxy serve`` with tracemalloc on, for finding what grows.

Honoured only here, never by the proxy itself: when BENCH_TRACEMALLOC names a file, tracemalloc starts before
the proxy is imported (BENCH_TRACEMALLOC_FRAMES frames per allocation, default 1), a first snapshot is taken
after BENCH_TRACEMALLOC_INTERVAL seconds (default 30: start-up and warm-up are not growth), and then every
interval the difference to it is appended to the file: the traced total, the process's RSS, and the biggest
growths by line (and by call stack, with more than one frame). ``python -m bench soak --tracemalloc`` sets the
file and the interval (a quarter of the run). With one worker, uvicorn serves in this process, so the traced
heap is the serving one. The proxy runs several times slower while traced, and slower still with more frames;
a snapshot holds the interpreter for a moment, and it and the comparison take memory of their own (the RSS
figures here jump by tens of MB; the soak's own RSS figures do not apply to a traced run).
"""

from __future__ import annotations

import linecache
import os
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import TextIO

_IGNORED = (
    tracemalloc.Filter(False, tracemalloc.__file__),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
    tracemalloc.Filter(False, "<unknown>"),
    tracemalloc.Filter(False, linecache.__file__),  # the source lines of this file's own reports
)
_TOP_LINES, _TOP_STACKS = 25, 8


def main() -> int:
    target = os.environ.get("BENCH_TRACEMALLOC")
    if target:
        interval = float(os.environ.get("BENCH_TRACEMALLOC_INTERVAL", "30"))
        tracemalloc.start(int(os.environ.get("BENCH_TRACEMALLOC_FRAMES", "1")))
        thread = threading.Thread(target=_watch, args=(Path(target), interval), daemon=True)
        thread.start()
    from proxy.cli import main as proxy_main

    return proxy_main(sys.argv[1:])


def _watch(path: Path, interval: float) -> None:
    time.sleep(interval)
    base = _snapshot()
    started = time.monotonic()
    with path.open("a") as out:
        out.write(
            f"# baseline taken {interval:g} s after start; traced {_traced()}, RSS {_rss_mb():.1f} MB\n"
        )
        out.flush()
        while True:
            time.sleep(interval)
            _dump(out, _snapshot(), base, time.monotonic() - started)


def _snapshot() -> tracemalloc.Snapshot:
    return tracemalloc.take_snapshot().filter_traces(_IGNORED)


def _dump(out: TextIO, snapshot: tracemalloc.Snapshot, base: tracemalloc.Snapshot, elapsed: float) -> None:
    lines = snapshot.compare_to(base, "lineno")
    grown = sum(stat.size_diff for stat in lines)
    out.write(f"\n## {elapsed:.0f} s after the baseline: traced {_traced()}, RSS {_rss_mb():.1f} MB, ")
    out.write(f"traced growth {grown / 1024:+.1f} KiB\n")
    for stat in lines[:_TOP_LINES]:
        out.write(f"{stat}\n")
    if tracemalloc.get_traceback_limit() < 2:
        out.flush()
        return
    out.write("\n### by call stack\n")
    for stat in snapshot.compare_to(base, "traceback")[:_TOP_STACKS]:
        out.write(f"{stat.size_diff / 1024:+.1f} KiB, {stat.count_diff:+d} blocks\n")
        out.writelines(f"    {line}\n" for line in stat.traceback.format())
    out.flush()


def _traced() -> str:
    current, peak = tracemalloc.get_traced_memory()
    return f"{current / 1024 / 1024:.1f} MB (peak {peak / 1024 / 1024:.1f} MB)"


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


if __name__ == "__main__":
    raise SystemExit(main())
