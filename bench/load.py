"""Load generation: one run of N keep-alive connections for D seconds, with wrk or the Python fallback.

Both report the same fields; throughput counts only 2xx answers, so a server that answers quickly with errors
cannot look fast (non-2xx answers and socket errors are reported beside the figure).
"""

from __future__ import annotations

import http.client
import json
import math
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from .procs import ROOT, child_env, pinned

Tool = Literal["wrk", "python"]
WRK_INSTALL_HINT = "apt-get install wrk"


@dataclass(frozen=True)
class Load:
    """The request one case sends, over and over."""

    url: str
    method: str = "GET"
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class LoadResult:
    requests: int
    non_2xx: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    timeouts: int = 0  # of ``errors``: requests unanswered within the tool's timeout (wrk only)

    @property
    def ok(self) -> int:
        return self.requests - self.non_2xx

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0


def find_wrk() -> str | None:
    return shutil.which("wrk")


def run_load(
    tool: Tool, load: Load, connections: int, seconds: float, workdir: Path, cores: frozenset[int] | None
) -> LoadResult:
    body_file = workdir / "load-body"
    body_file.write_bytes(load.body)
    if tool == "wrk":
        script = workdir / "load.lua"
        script.write_text(_lua(load, body_file))
        command = wrk_command(script, load.url, connections, seconds, cores)
    else:
        command = _python_command(load, connections, seconds, body_file)
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        env=child_env({}),
        cwd=ROOT,
        check=False,
        preexec_fn=pinned(cores),
    )
    return parse_result(tool, done.returncode, done.stdout, done.stderr)


def parse_result(tool: Tool, returncode: int, stdout: str, stderr: str) -> LoadResult:
    """The figures from the last JSON line the tool printed (wrk's ``done`` in DONE_LUA, or bench.loadgen)."""
    line = next((x for x in reversed(stdout.splitlines()) if x.startswith("{")), None)
    if returncode != 0 or line is None:
        raise RuntimeError(f"{tool} failed ({returncode}): {stdout[-2000:]}{stderr[-2000:]}")
    raw = json.loads(line)
    return LoadResult(
        requests=int(raw["requests"]),
        non_2xx=int(raw["non_2xx"]),
        errors=int(raw["errors"]),
        seconds=float(raw["seconds"]),
        p50_ms=float(raw["p50_us"]) / 1000,
        p99_ms=float(raw["p99_us"]) / 1000,
        timeouts=int(raw.get("timeouts", 0)),
    )


def _python_command(load: Load, connections: int, seconds: float, body_file: Path) -> list[str]:
    command = [sys.executable, "-m", "bench.loadgen", load.url, "--method", load.method]
    command += ["--body-file", str(body_file), "-c", str(connections), "-d", f"{seconds:g}"]
    for name, value in load.headers:
        command += ["--header", f"{name}: {value}"]
    return command


def wrk_command(
    script: Path, url: str, connections: int, seconds: float, cores: frozenset[int] | None
) -> list[str]:
    threads = max(1, min(connections, len(cores) if cores else 2))
    duration = f"{max(1, math.ceil(seconds))}s"
    return [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        duration,
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]


def lua_string(text: str) -> str:
    """A Lua long string; inside brackets it needs spaces around it (``t[ [==[k]==] ]``), as ``[[`` opens one."""
    return "[==[" + text + "]==]"


# wrk's ``done``: one JSON line with the fields parse_result reads. wrk counts a status >= 400 as an error.
DONE_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"non_2xx":%d,"errors":%d,"timeouts":%d,"seconds":%f,"p50_us":%d,"p99_us":%d}\\n',
    summary.requests, e.status, e.connect + e.read + e.write + e.timeout, e.timeout, summary.duration / 1e6,
    latency:percentile(50), latency:percentile(99)))
end
"""


def _lua(load: Load, body_file: Path) -> str:
    headers = "\n".join(f"wrk.headers[ {lua_string(k)} ] = {lua_string(v)}" for k, v in load.headers)
    return (
        f"""
wrk.method = {lua_string(load.method)}
local f = io.open({lua_string(str(body_file))}, "rb")
local body = f:read("*a")
f:close()
if #body > 0 then wrk.body = body end
{headers}
"""
        + DONE_LUA
    )


def probe(load: Load, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send the case's request once, on a fresh connection: the status and the body."""
    parts = urlsplit(load.url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
    try:
        connection.request(load.method, parts.path, body=load.body or None, headers=dict(load.headers))
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()
