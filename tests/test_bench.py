"""A smoke test of the benchmark harness (``python -m bench --quick``): Python upstream and load generator, no
timings judged. It checks the report's shape, not a fixed list of cases, so a new benchmark case needs no change
here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT


def test_quick_benchmark_writes_every_case(tmp_path: Path) -> None:
    """`python -m bench --quick` exits 0 and writes a JSON file with every case measured and every target judged."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench", "--quick", "--results-dir", str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.terminate()  # the benchmark stops the servers it started on SIGTERM
        stdout, stderr = process.communicate(timeout=30)
        raise AssertionError(f"python -m bench --quick took over 120 s:\n{stdout}\n{stderr}") from None
    assert process.returncode == 0, stdout + stderr

    [written] = tmp_path.glob("*.json")
    assert f"results written to {written}" in stdout
    results = json.loads(written.read_text())
    assert results["cases"] and results["streaming"], "the report has throughput and streaming cases"
    assert {"ceiling_post", "proxy_x1_post_cache"} <= set(results["cases"]), "the baseline and the main case"
    for key, case in {**results["cases"], **results["streaming"]}.items():
        assert case["error"] is None, f"{key}: {case['error']}"
        assert case["runs"], key
    assert results["matcher"]["error"] is None and results["matcher"]["timings"]
    assert results["idle_rss_mb"]
    assert results["targets"], "every target is judged"
    for target in results["targets"]:
        assert target["value"] is not None, target
