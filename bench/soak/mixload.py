"""The soak's load: the callers' mix of requests over N keep-alive connections, by wrk or bench/loadgen.py,
started in the background so that the harness can watch the proxy meanwhile.

wrk is the default: one wrk thread keeps 200 connections busy at the proxy's full rate for a small share of the
load core, where the Python load generator needs most of a core for a few thousand requests a second and would
leave the proxy waiting (bench/README.md, "The soak"). wrk sends the mix from a Lua ``request`` function that
hands out pre-built raw requests in turn.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from ..load import DONE_LUA, LoadResult, Tool, parse_result, wrk_command
from ..procs import ROOT, child_env, pinned


class MixLoad:
    """One run of the mix, in a child process pinned to ``cores``."""

    def __init__(
        self,
        tool: Tool,
        url: str,
        requests: Sequence[bytes],
        connections: int,
        seconds: float,
        workdir: Path,
        cores: frozenset[int] | None,
    ) -> None:
        self.tool = tool
        if tool == "wrk":
            script = workdir / "soak.lua"
            script.write_text(mix_lua(requests))
            command = wrk_command(script, url, connections, seconds, cores)
        else:
            mix = workdir / "soak-requests.json"
            mix.write_text(json.dumps([raw.decode("latin-1") for raw in requests]))
            command = [sys.executable, "-m", "bench.loadgen", url, "--requests-file", str(mix)]
            command += ["-c", str(connections), "-d", f"{seconds:g}"]
        self._process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env({}),
            cwd=ROOT,
            preexec_fn=pinned(cores),
        )

    def running(self) -> bool:
        return self._process.poll() is None

    def result(self, timeout: float) -> LoadResult:
        """Wait for the run's end (at most ``timeout`` seconds) and read its figures."""
        try:
            stdout, stderr = self._process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise RuntimeError(f"{self.tool} did not finish within {timeout:g} s of its end") from None
        return parse_result(self.tool, self._process.returncode, stdout, stderr)

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.communicate()


def mix_lua(requests: Sequence[bytes]) -> str:
    """A wrk script sending ``requests`` in turn across a thread's connections (each wrk thread has a Lua state
    and a turn of its own, so the mix holds exactly in each thread)."""
    table = ",\n".join(_lua_bytes(raw) for raw in requests)
    return (
        f"""
local requests = {{
{table}
}}
local turn = 0
request = function()
  turn = turn % #requests + 1
  return requests[turn]
end
"""
        + DONE_LUA
    )


def _lua_bytes(raw: bytes) -> str:
    """A quoted Lua string holding ``raw`` exactly (a long bracket string would turn CRLF into LF)."""
    safe = b"".join(bytes([b]) if 32 <= b < 127 and b not in (34, 92) else f"\\{b:03d}".encode() for b in raw)
    return '"' + safe.decode("ascii") + '"'
