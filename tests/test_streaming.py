"""Streaming through a real `bpoc-proxy serve` process: big bodies pass with flat memory."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx

from .conftest import auth

SIZE = 50 * 1024 * 1024
CHUNK = b"0123456789abcdef" * 4096  # 64 KiB
# A buffered 50 MB body would grow the peak by at least 50 MB; streaming stays well under this.
MAX_GROWTH = 25 * 1024 * 1024


def peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc")


def upload_body() -> Iterator[bytes]:
    for _ in range(SIZE // len(CHUNK)):
        yield CHUNK


def test_50mb_upload_and_download_stream_with_flat_memory(proxy_process) -> None:
    """A 50 MB upload and a 50 MB download pass intact while the proxy's peak RSS barely moves."""
    proxy = proxy_process()
    with httpx.Client(timeout=60, trust_env=False) as client:
        client.post(proxy.url + "/_sandbox/upload", headers=auth(), content=b"warm-up")
        client.get(proxy.url + "/_sandbox/download?size=1048576", headers=auth())
        before = peak_rss(proxy.process.pid)

        response = client.post(proxy.url + "/_sandbox/upload", headers=auth(), content=upload_body())
        assert response.status_code == 200
        expected = hashlib.sha256()
        for chunk in upload_body():
            expected.update(chunk)
        assert response.json() == {"size": SIZE, "sha256": expected.hexdigest()}

        received = 0
        with client.stream("GET", f"{proxy.url}/_sandbox/download?size={SIZE}", headers=auth()) as download:
            assert download.status_code == 200
            for chunk in download.iter_raw():
                received += len(chunk)
        assert received == SIZE

        growth = peak_rss(proxy.process.pid) - before
    assert growth < MAX_GROWTH, f"peak RSS grew by {growth / 1e6:.1f} MB"


def test_client_hanging_up_mid_download_leaves_the_proxy_healthy(proxy_process) -> None:
    """A client that drops a big download does not wedge the proxy."""
    proxy = proxy_process()
    with httpx.Client(timeout=30, trust_env=False) as client:
        with client.stream("GET", f"{proxy.url}/_sandbox/download?size={SIZE}", headers=auth()) as download:
            for _ in download.iter_raw():
                break
        for _ in range(5):
            assert client.get(proxy.url + "/_sandbox/echo/after", headers=auth()).status_code == 200
    assert "Traceback" not in proxy.logs()
