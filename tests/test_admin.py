"""The admin listener and /metrics of real ``bpoc-proxy serve`` processes, over real sockets: what a kubelet probe
and a Prometheus scrape see, on one worker and summed over two."""

from __future__ import annotations

import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from proxy import __version__
from proxy.sandbox.seed import BpocState

from .conftest import ProxyProcess, auth
from .running import records, scrape, value, wait_for, wait_for_record, wait_for_value

JOB = {"title": "Backend Engineer"}
CREATE = "POST /api/v1/jobs/create"
APPROVE = "POST /api/v1/jobs/{id}/approve"


def assert_refusal(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    """A refusal as every refusal of the proxy: JSON, one sentence, the request id in body and header."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, object] = response.json()
    assert body["code"] == code and body["status"] == status
    assert body["requestId"] == response.headers["x-request-id"]
    message = str(body["error"])
    assert message.endswith(".") and message.count(". ") == 0, message
    return body


def test_admin_listener_serves_probes_and_metrics_and_forwards_nothing(
    proxy_process: Callable[..., ProxyProcess], bpoc_state: BpocState, client: httpx.Client
) -> None:
    """The admin port answers /healthz, /readyz and /metrics (GET and HEAD) without a session; any other path is a
    JSON 404 and any other method a JSON 405, and nothing reaches BPOC."""
    proxy = proxy_process()
    assert proxy.admin_url is not None
    bpoc_state.reset_requests()

    health = client.get(proxy.admin_url + "/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    ready = client.get(proxy.admin_url + "/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    head = client.head(proxy.admin_url + "/readyz")
    assert head.status_code == 200 and head.content == b""
    metrics = client.get(proxy.admin_url + "/metrics")
    assert metrics.status_code == 200
    assert f'bpoc_proxy_build_info{{version="{__version__}"}} 1.0' in metrics.text

    body = assert_refusal(client.get(proxy.admin_url + "/api/v1/jobs", headers=auth()), 404, "not_found")
    assert "/api/v1/jobs" in str(body["error"])
    assert_refusal(client.get(proxy.admin_url + "/"), 404, "not_found")
    for path in ("/healthz", "/readyz", "/metrics"):
        refused = client.post(proxy.admin_url + path)
        assert_refusal(refused, 405, "method_not_allowed")
        assert refused.headers["allow"] == "GET, HEAD"
    assert bpoc_state.requests == []


def test_main_port_keeps_its_endpoints_and_forwards_metrics(
    proxy_process: Callable[..., ProxyProcess], bpoc_state: BpocState, client: httpx.Client
) -> None:
    """On the main port /healthz and /readyz answer as before, and /metrics belongs to BPOC like any other path."""
    proxy = proxy_process()
    assert client.get(proxy.url + "/healthz").json() == {"status": "ok"}
    assert client.get(proxy.url + "/readyz").json()["status"] == "ready"
    assert_refusal(client.post(proxy.url + "/readyz"), 405, "method_not_allowed")

    bpoc_state.reset_requests()
    assert_refusal(client.get(proxy.url + "/metrics"), 401, "unauthenticated")  # a BPOC path needs a session
    forwarded = client.get(proxy.url + "/metrics", headers=auth())
    assert forwarded.status_code == 404 and "bpoc_proxy" not in forwarded.text  # the sandbox's own answer
    assert [r.path for r in bpoc_state.requests] == ["/metrics"]


def test_metrics_move_with_traffic_and_labels_stay_bounded(
    proxy_process: Callable[..., ProxyProcess], bpoc_state: BpocState, client: httpx.Client
) -> None:
    """Requests, their durations and refusals are counted by route template (never the raw path), method and
    status; the rules' load time and the build are there from the start."""
    proxy = proxy_process()
    assert proxy.admin_url is not None
    before = scrape(proxy.admin_url)
    assert value(before, "bpoc_proxy_rules_loaded_timestamp_seconds") > 1_600_000_000
    job_id = "0d5bd3f0-7a52-4f0e-9a51-5c0f5f0e3b77"

    for _ in range(3):
        assert client.post(proxy.url + "/api/v1/jobs/create", headers=auth(), json=JOB).status_code == 201
    assert client.get(proxy.url + "/api/v1/jobs").status_code == 401
    approve = client.post(proxy.url + f"/api/v1/jobs/{job_id}/approve", headers=auth(), json={})
    assert approve.status_code == 403  # bob is a recruiter; approving needs admin or manager

    after = scrape(proxy.admin_url)
    created = {"route": CREATE, "method": "POST", "status": "201"}
    assert (
        value(after, "bpoc_proxy_requests_total", **created)
        - value(before, "bpoc_proxy_requests_total", **created)
        == 3
    )
    assert value(after, "bpoc_proxy_request_duration_seconds_count", route=CREATE, method="POST") == 3
    assert value(after, "bpoc_proxy_requests_total", route="unlisted", method="GET", status="401") == 1
    assert value(after, "bpoc_proxy_requests_total", route=APPROVE, method="POST", status="403") == 1
    assert value(after, "bpoc_proxy_refusals_total", code="unauthenticated") == 1
    assert value(after, "bpoc_proxy_refusals_total", code="forbidden") == 1
    assert (
        value(after, "bpoc_proxy_requests_total", route="own", method="GET", status="200") >= 1
    )  # the scrape
    assert value(after, "bpoc_proxy_build_info", version=__version__) == 1

    text = httpx.get(proxy.admin_url + "/metrics", timeout=10).text
    assert job_id not in text and "bob" not in text
    routes = set(re.findall(r'route="([^"]*)"', text))
    assert routes <= {CREATE, APPROVE, "unlisted", "own"}, routes


def test_two_workers_are_summed_in_one_scrape(
    proxy_process: Callable[..., ProxyProcess], client: httpx.Client
) -> None:
    """With PROXY_WORKERS=2 both workers serve both listeners, each access line names its worker's pid, and one
    scrape reports the requests of both; the constant build info stays 1 (a maximum, not a sum)."""
    proxy = proxy_process(PROXY_WORKERS="2")
    assert proxy.admin_url is not None
    pids = set(wait_for_record(proxy, "bpoc-proxy ready")["workers"])
    assert len(pids) == 2

    def one_request(_: int) -> int:
        # A new connection each time, so that either worker may accept it.
        return httpx.get(proxy.url + "/api/v1/jobs", headers=auth(), timeout=30, trust_env=False).status_code

    sent = 0

    def served_by_both() -> bool:
        nonlocal sent
        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(one_request, range(16))) == {200}
        sent += 16
        lines = [r for r in records(proxy) if r.get("logger") == "proxy.access" and r.get("status") == 200]
        return {r["pid"] for r in lines} == pids

    wait_for(served_by_both, "requests served by both workers")
    served = {"route": "unlisted", "method": "GET", "status": "200"}
    # Every worker's requests are in the sum, whichever worker answers the scrape (each scrape is a new connection;
    # each worker writes its counts within a second).
    wait_for_value(proxy.admin_url, "bpoc_proxy_requests_total", sent, **served)
    for _ in range(4):
        assert value(scrape(proxy.admin_url), "bpoc_proxy_requests_total", **served) == sent
    assert value(scrape(proxy.admin_url), "bpoc_proxy_build_info", version=__version__) == 1
    assert client.get(proxy.admin_url + "/healthz").status_code == 200


def test_metrics_off(
    proxy_process: Callable[..., ProxyProcess], client: httpx.Client, tmp_path: Path
) -> None:
    """PROXY_METRICS=false: /metrics is a JSON 404 saying so, the probes still answer, and no file is written."""
    directory = tmp_path / "metrics"
    proxy = proxy_process(PROXY_METRICS="false", PROXY_METRICS_DIR=str(directory))
    assert proxy.admin_url is not None
    assert client.post(proxy.url + "/api/v1/jobs/create", headers=auth(), json=JOB).status_code == 201
    body = assert_refusal(client.get(proxy.admin_url + "/metrics"), 404, "not_found")
    assert "off" in str(body["error"])
    assert client.get(proxy.admin_url + "/readyz").status_code == 200
    assert not directory.exists() or list(directory.iterdir()) == []


def test_metrics_directory_is_cleared_at_start_and_the_private_one_removed_at_exit(
    proxy_process: Callable[..., ProxyProcess], client: httpx.Client, tmp_path: Path
) -> None:
    """A PROXY_METRICS_DIR's stale files from an earlier run are removed before the workers write theirs; without
    the setting, the private temporary directory is gone once the proxy exits."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "counter_4242424.db").write_bytes(b"not a metrics file")
    proxy = proxy_process(PROXY_METRICS_DIR=str(directory))
    assert proxy.admin_url is not None
    assert client.post(proxy.url + "/api/v1/jobs/create", headers=auth(), json=JOB).status_code == 201
    samples = scrape(proxy.admin_url)  # a leftover file would break the scrape
    assert value(samples, "bpoc_proxy_requests_total", route=CREATE, method="POST", status="201") == 1
    assert not (directory / "counter_4242424.db").exists()
    assert list(directory.glob("*.db"))

    temporary = tmp_path / "tmp"
    temporary.mkdir()
    private = proxy_process(TMPDIR=str(temporary))
    made = list(temporary.glob("bpoc-proxy-metrics-*"))
    assert len(made) == 1 and list(made[0].glob("*.db"))
    private.process.terminate()
    assert private.process.wait(timeout=30) == 0
    assert list(temporary.iterdir()) == []


def test_every_instrumented_event_moves_its_metric(
    proxy_process: Callable[..., ProxyProcess], bpoc_state: BpocState, client: httpx.Client
) -> None:
    """Attributions, BPOC's latency, session failures, directory lookups and syncs, a provisioned recruiter, a
    stale-recruiter replay and a refusal made before the app are each counted, under bounded labels."""
    proxy = proxy_process(RECRUITER_AUTO_PROVISION="true")
    assert proxy.admin_url is not None
    bob = auth("bob@agency.example")
    assert client.post(proxy.url + "/api/v1/jobs/create", headers=bob, json=JOB).status_code == 201
    bpoc_state.recreate_recruiter("bob@agency.example")  # BPOC now refuses Bob's cached ID: one replay
    assert client.post(proxy.url + "/api/v1/jobs/create", headers=bob, json=JOB).status_code == 201
    newcomer = auth(
        "newcomer@agency.example", first_name="New", last_name="Comer"
    )  # created by auto-provisioning
    assert client.post(proxy.url + "/api/v1/jobs/create", headers=newcomer, json=JOB).status_code == 201
    assert (
        client.get(proxy.url + "/api/v1/jobs", headers={"Authorization": "Bearer not.a.jwt"}).status_code
        == 401
    )
    expired = auth("bob@agency.example", exp_in=-3600)
    assert client.get(proxy.url + "/api/v1/jobs", headers=expired).status_code == 401
    assert client.get(proxy.url + "/api/v1/jobs", headers={"X-Big": "x" * 70_000}).status_code == 431

    wait_for_value(proxy.admin_url, "bpoc_proxy_stale_recruiter_replays_total", 1)
    after = scrape(proxy.admin_url)
    # Each body forwarded counts: three requests, one of them sent twice (the replay).
    assert value(after, "bpoc_proxy_attributions_total", route=CREATE, field="postedBy", mode="set") == 4
    assert value(after, "bpoc_proxy_upstream_duration_seconds_count", route=CREATE) == 4  # the replay too
    assert value(after, "bpoc_proxy_session_failures_total", reason="malformed") == 1
    assert value(after, "bpoc_proxy_session_failures_total", reason="expired") == 1
    assert value(after, "bpoc_proxy_directory_lookups_total", result="hit") >= 1
    assert value(after, "bpoc_proxy_directory_lookups_total", result="miss") >= 1
    assert value(after, "bpoc_proxy_directory_last_sync_timestamp_seconds") > 1_600_000_000
    assert value(after, "bpoc_proxy_recruiters_provisioned_total") == 1
    assert value(after, "bpoc_proxy_refusals_total", code="headers_too_large") == 1
    assert value(after, "bpoc_proxy_requests_total", route="unlisted", method="GET", status="431") == 1
