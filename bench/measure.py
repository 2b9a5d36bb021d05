"""What the benchmark reads from a server process: CPU time, resident memory, and its peak.

A server is a process tree: uvicorn with one worker is a single process; with PROXY_WORKERS=2 it is a supervisor
and two worker processes. CPU time is summed over the tree; memory is reported per worker (the largest), as the
targets are per worker.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import TracebackType

import psutil  # type: ignore[import-untyped]  # no types-psutil in the test extras

MB = 1024 * 1024


class ProcessTree:
    def __init__(self, pid: int) -> None:
        self._root = psutil.Process(pid)

    def processes(self) -> list[psutil.Process]:
        try:
            return [self._root, *self._root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def workers(self) -> list[psutil.Process]:
        """The processes that serve requests: the children of a supervisor, else the process itself."""
        children = self.processes()[1:]
        serving = [child for child in children if not _is_helper(child)]
        return serving or [self._root]

    def cpu_seconds(self) -> float:
        total = 0.0
        for process in self.processes():
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += float(times.user) + float(times.system)
        return total

    def rss(self) -> int:
        """The largest worker's resident set now, in bytes."""
        return max((_rss(process) for process in self.workers()), default=0)

    def uss(self) -> int:
        """The largest worker's unique set size now (memory no other process shares), in bytes."""
        return max((_uss(process) for process in self.workers()), default=0)

    def reset_peaks(self) -> bool:
        """Reset each worker's VmHWM to its current RSS (Linux ``clear_refs``); False where that is not possible."""
        done = True
        for process in self.workers():
            try:
                Path(f"/proc/{process.pid}/clear_refs").write_text("5")
            except OSError:
                done = False
        return done

    def peak_rss(self) -> int:
        """The largest worker's peak resident set (VmHWM) in bytes, or its RSS now where there is no VmHWM."""
        return max((_peak(process) for process in self.workers()), default=0)


class PeakSampler:
    """Peak RSS of a server's largest worker over a block: VmHWM reset at the start, RSS sampled as a fallback."""

    def __init__(self, tree: ProcessTree, interval: float = 0.01) -> None:
        self._tree = tree
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.before = 0
        self.sampled = 0
        self.peak = 0

    def __enter__(self) -> PeakSampler:
        self._tree.reset_peaks()
        self.before = self._tree.rss()
        self.sampled = self.before
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.sampled, self._tree.peak_rss())

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            self.sampled = max(self.sampled, self._tree.rss())


def _is_helper(process: psutil.Process) -> bool:
    try:
        return "resource_tracker" in " ".join(process.cmdline())
    except psutil.Error:
        return True


def _rss(process: psutil.Process) -> int:
    try:
        return int(process.memory_info().rss)
    except psutil.Error:
        return 0


def _uss(process: psutil.Process) -> int:
    try:
        return int(process.memory_full_info().uss)
    except psutil.Error:
        return 0


def _peak(process: psutil.Process) -> int:
    try:
        for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return _rss(process)
