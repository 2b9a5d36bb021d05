"""The benchmark runs end to end (``python -m bench --quick``): Python upstream and load generator, no timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT

THROUGHPUT_CASES = {
    "ceiling_post",
    "upstream_post",
    "upstream_get",
    "engine_httpx",
    "engine_aiohttp",
    "proxy_x1_post_session",
    "proxy_x1_post_cache",
    "proxy_x1_post_cache_no_metrics",
    "proxy_x1_get",
    "proxy_x2_post_cache",
    "proxy_x2_get",
}
STREAM_CASES = {"download_direct", "download_proxy", "upload_direct", "upload_proxy"}


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
    assert set(results["cases"]) == THROUGHPUT_CASES
    assert set(results["streaming"]) == STREAM_CASES
    for key, case in {**results["cases"], **results["streaming"]}.items():
        assert case["error"] is None, f"{key}: {case['error']}"
        assert case["runs"], key
    assert results["matcher"]["error"] is None
    assert {t["rules"] for t in results["matcher"]["timings"]} == {10, 10_000}
    assert set(results["idle_rss_mb"]) == {"proxy x1", "proxy x2"}
    assert len(results["targets"]) == 11
    assert all(target["value"] is not None for target in results["targets"])
