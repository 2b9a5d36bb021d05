"""The request log of a real ``bpoc-proxy serve`` process: one JSON line per request, the audit record on
attributed routes, nothing lost at shutdown, and no secret in any line."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx

from proxy.sandbox.seed import BOB_ID

from .conftest import API_KEY, ProxyProcess, auth, token_for

JOB = {"title": "Backend Engineer", "description": "secret-description"}


def records(proxy: ProxyProcess) -> list[dict[str, Any]]:
    lines = proxy.logs().splitlines()
    parsed = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(parsed) == len([line for line in lines if line.strip()]), "every log line is one JSON object"
    return parsed


def stop(proxy: ProxyProcess) -> None:
    proxy.process.terminate()
    proxy.process.wait(timeout=10)


def test_each_request_writes_one_line_and_shutdown_flushes_them(
    proxy_process: Callable[..., ProxyProcess],
) -> None:
    proxy = proxy_process(PROXY_LOG_LEVEL="info")
    token = token_for()
    with httpx.Client(trust_env=False, timeout=10) as client:
        created = client.post(proxy.url + "/api/v1/jobs/create", headers=auth(), json=JOB)
        listed = client.get(
            proxy.url + "/api/v1/jobs", headers={**auth(), "X-Request-Id": "client-chosen-id-1"}
        )
        refused = client.get(proxy.url + "/api/v1/jobs")
    assert (created.status_code, listed.status_code, refused.status_code) == (201, 200, 401)
    # Stopped at once: the lines are still in the 0.25 s buffer, and must be written on the way out.
    stop(proxy)
    lines = records(proxy)
    by_id = {
        line.get("requestId"): line for line in lines if line["logger"] in ("proxy.access", "proxy.audit")
    }

    audit = by_id[created.headers["x-request-id"]]
    assert audit["logger"] == "proxy.audit"
    assert audit["msg"] == "POST /api/v1/jobs/create 201"
    assert audit["status"] == 201
    assert audit["attributionId"] == created.headers["x-attribution-id"]
    assert audit["writes"] == {"postedBy": BOB_ID}
    assert audit["rule"] == "POST /api/v1/jobs/create"
    assert audit["level"] == "info" and audit["ts"].endswith("Z")

    access = by_id["client-chosen-id-1"]
    assert (access["logger"], access["msg"], access["status"]) == (
        "proxy.access",
        "GET /api/v1/jobs 200",
        200,
    )
    assert by_id[refused.json()["requestId"]]["status"] == 401

    text = proxy.logs()
    for secret in (API_KEY, token, "secret-description"):
        assert secret not in text


def test_a_quiet_proxy_flushes_its_last_line_within_a_second(
    proxy_process: Callable[..., ProxyProcess],
) -> None:
    proxy = proxy_process(PROXY_LOG_LEVEL="info")
    response = httpx.get(proxy.url + "/api/v1/jobs", headers=auth(), timeout=10, trust_env=False)
    request_id = response.headers["x-request-id"]
    deadline = time.monotonic() + 3
    while request_id not in proxy.logs():
        assert time.monotonic() < deadline, "the request line never reached stderr"
        time.sleep(0.05)


def test_warning_level_drops_the_request_lines(proxy_process: Callable[..., ProxyProcess]) -> None:
    proxy = proxy_process(PROXY_LOG_LEVEL="warning")
    response = httpx.post(proxy.url + "/api/v1/jobs/create", headers=auth(), json=JOB, timeout=10)
    assert response.status_code == 201
    stop(proxy)
    assert not [line for line in records(proxy) if line["logger"] in ("proxy.access", "proxy.audit")]
