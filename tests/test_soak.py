"""A smoke test of the soak harness (``python -m bench soak``): a few seconds of the mixed load with the Python
load generator, no timings judged. It checks the report's shape and what needs no timing: every request
answered, every body attributed, the descriptors measured after the load."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT


def test_short_soak_reports_every_figure(tmp_path: Path) -> None:
    """`python -m bench soak --duration 3` exits 0 and writes every figure, with no error and no unattributed body."""
    command = [sys.executable, "-m", "bench", "soak", "--duration", "3", "--connections", "10"]
    command += ["--callers", "4", "--interval", "1", "--loadgen", "python", "--results-dir", str(tmp_path)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.terminate()  # the soak stops the servers it started on SIGTERM
        stdout, stderr = process.communicate(timeout=30)
        raise AssertionError(f"python -m bench soak took over 120 s:\n{stdout}\n{stderr}") from None
    assert process.returncode == 0, stdout + stderr

    [written] = tmp_path.glob("soak-*.json")
    assert f"results written to {written}" in stdout
    result = json.loads(written.read_text())
    assert result["error"] is None
    assert result["load"]["requests"] > 0
    assert result["errors"] == 0, result["load"]
    received = result["upstream"]["received"]
    assert received["attributed"] > 0 and received["spoofed"] > 0 and received["GET /api/v1/jobs"] > 0
    assert result["unattributed"] == 0, result["upstream"]["unattributed"]
    assert result["rows"] and result["samples"], "RSS and descriptors were read during the load"
    assert result["baseline"]["fds"] > 0 and result["rss"]["growth_mb"] is not None
    assert result["fds_after_load"]["samples"], "the descriptors were watched after the load"
    assert [t["name"] for t in result["targets"]] == [
        "errors (non-2xx, socket errors, timeouts)",
        "bodies at the upstream without the caller's ID",
        "RSS growth from the half-way point to the end",
        "file descriptors back to the pre-load count after the load",
    ]
