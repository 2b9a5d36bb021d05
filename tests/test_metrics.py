"""proxy/metrics.py: the metric names and labels of the public contract, the recording API, the no-op used when
metrics are off, and the Grafana dashboard's queries against what the proxy exports."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy import __version__, metric_families, metrics
from proxy.metrics import Metrics, PrometheusMetrics

from .conftest import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "bpoc-proxy.json"

#: Issue 10's list (the public contract), plus the pool's queue metrics: family name -> (type, label names).
CONTRACT: dict[str, tuple[str, frozenset[str]]] = {
    "bpoc_proxy_requests": ("counter", frozenset({"route", "method", "status"})),
    "bpoc_proxy_request_duration_seconds": ("histogram", frozenset({"route", "method"})),
    "bpoc_proxy_upstream_duration_seconds": ("histogram", frozenset({"route"})),
    "bpoc_proxy_upstream_connections": ("gauge", frozenset({"state"})),
    "bpoc_proxy_upstream_queue_waiting": ("gauge", frozenset()),
    "bpoc_proxy_upstream_queue_timeouts": ("counter", frozenset()),
    "bpoc_proxy_attributions": ("counter", frozenset({"route", "field", "mode"})),
    "bpoc_proxy_refusals": ("counter", frozenset({"code"})),
    "bpoc_proxy_session_failures": ("counter", frozenset({"reason"})),
    "bpoc_proxy_directory_lookups": ("counter", frozenset({"result"})),
    "bpoc_proxy_directory_last_sync_timestamp_seconds": ("gauge", frozenset()),
    "bpoc_proxy_directory_sync_failures": ("counter", frozenset()),
    "bpoc_proxy_recruiters_provisioned": ("counter", frozenset()),
    "bpoc_proxy_stale_recruiter_replays": ("counter", frozenset()),
    "bpoc_proxy_rules_reloads": ("counter", frozenset({"result"})),
    "bpoc_proxy_rules_loaded_timestamp_seconds": ("gauge", frozenset()),
    "bpoc_proxy_build_info": ("gauge", frozenset({"version"})),
}
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


@dataclass
class PoolCounts:
    """What the engine's pool reports (the names Metrics.sample_pool reads)."""

    open_connections: int = 3
    idle_connections: int = 2
    waiting: int = 1
    queue_timeouts: int = 4


def families(recorder: PrometheusMetrics) -> dict[str, Any]:
    """What a scrape shows; rendering flushes ``recorder``'s tallies first, as a scrape does."""
    rendered = recorder.render()
    return {family.name: family for family in text_string_to_metric_families(rendered.decode())}


def sample(recorder: PrometheusMetrics, name: str, **labels: str) -> float:
    for family in families(recorder).values():
        for item in family.samples:
            if item.name == name and item.labels == labels:
                return float(item.value)
    return 0.0


def test_every_metric_of_the_contract_is_exported_with_its_labels() -> None:
    """Each API call lands in the metric the issue names, with exactly the issue's labels."""
    recorder = PrometheusMetrics()
    recorder.request_done("POST /api/v1/jobs/create", "POST", 201, 0.004)
    recorder.upstream_answered("POST /api/v1/jobs/create", 0.003)
    recorder.attributed("POST /api/v1/jobs/create", "postedBy", "set")
    recorder.refused("forbidden")
    recorder.session_failed("expired")
    for result in ("hit", "miss", "negative", "stale"):
        recorder.directory_lookup(result)
    recorder.directory_synced()
    recorder.directory_sync_failed()
    recorder.recruiter_provisioned()
    recorder.stale_recruiter_replayed()
    recorder.rules_reloaded(True)
    recorder.rules_reloaded(False)
    recorder.sample_pool(PoolCounts())

    found = families(recorder)
    for name, (kind, labels) in CONTRACT.items():
        assert name in found, name
        family = found[name]
        assert family.type == kind, name
        assert family.samples, name
        for item in family.samples:
            assert set(item.labels) - {"le"} == labels, (name, item.labels)
    assert sample(recorder, "bpoc_proxy_upstream_connections", state="open") == 3
    assert sample(recorder, "bpoc_proxy_upstream_connections", state="idle") == 2
    assert sample(recorder, "bpoc_proxy_upstream_queue_waiting") == 1
    assert sample(recorder, "bpoc_proxy_build_info", version=__version__) == 1


def test_tallies_reach_the_metrics_when_flushed() -> None:
    """The request path adds to the worker's tallies; a flush (once a second, and before a scrape) writes them."""
    recorder, scraper = PrometheusMetrics(), PrometheusMetrics()
    labels = {"route": "POST /api/v1/interviews", "method": "POST", "status": "201"}
    before = sample(scraper, "bpoc_proxy_requests_total", **labels)
    recorder.request_done(labels["route"], "POST", 201, 0.002)
    assert sample(scraper, "bpoc_proxy_requests_total", **labels) == before  # not flushed yet
    recorder.flush()
    assert sample(scraper, "bpoc_proxy_requests_total", **labels) == before + 1


def test_durations_land_in_the_right_buckets() -> None:
    """Each observation counts in the first bucket whose bound is at least its value, as Histogram.observe does;
    the rendered buckets are cumulative."""
    recorder = PrometheusMetrics()
    route = "POST /test/{buckets}"  # a series no other test writes
    for seconds in (0.0005, 0.001, 0.003, 0.2, 100.0):
        recorder.upstream_answered(route, seconds)
    name = "bpoc_proxy_upstream_duration_seconds"
    expected = {"0.001": 2, "0.0025": 2, "0.005": 3, "0.1": 3, "0.25": 4, "30.0": 4, "+Inf": 5}
    assert {le: sample(recorder, name + "_bucket", route=route, le=le) for le in expected} == expected
    assert sample(recorder, name + "_count", route=route) == 5
    assert sample(recorder, name + "_sum", route=route) == pytest.approx(100.2045)


def test_counts_move_by_one_per_call() -> None:
    recorder = PrometheusMetrics()
    labels = {"route": "PUT /api/v1/onboarding/{taskId}", "method": "PUT", "status": "200"}
    before = sample(recorder, "bpoc_proxy_requests_total", **labels)
    count = sample(recorder, "bpoc_proxy_request_duration_seconds_count", route=labels["route"], method="PUT")
    for _ in range(3):
        recorder.request_done(labels["route"], "PUT", 200, 0.002)
    assert sample(recorder, "bpoc_proxy_requests_total", **labels) == before + 3
    assert (
        sample(recorder, "bpoc_proxy_request_duration_seconds_count", route=labels["route"], method="PUT")
        == count + 3
    )


def test_an_unusual_method_is_labelled_other() -> None:
    """httptools accepts dozens of methods (WebDAV, ...); they share one label value."""
    recorder = PrometheusMetrics()
    before = sample(recorder, "bpoc_proxy_requests_total", route="unlisted", method="OTHER", status="405")
    recorder.request_done("unlisted", "PROPFIND", 405, 0.001)
    assert (
        sample(recorder, "bpoc_proxy_requests_total", route="unlisted", method="OTHER", status="405")
        == before + 1
    )
    assert (
        sample(recorder, "bpoc_proxy_requests_total", route="unlisted", method="PROPFIND", status="405") == 0
    )


def test_queue_timeouts_are_counted_from_the_engines_running_total() -> None:
    recorder = PrometheusMetrics()
    before = sample(recorder, "bpoc_proxy_upstream_queue_timeouts_total")
    recorder.sample_pool(PoolCounts(queue_timeouts=4))
    recorder.sample_pool(PoolCounts(queue_timeouts=4))
    recorder.sample_pool(PoolCounts(queue_timeouts=6))
    assert sample(recorder, "bpoc_proxy_upstream_queue_timeouts_total") == before + 6


def test_an_engine_without_counts_adds_no_pool_series() -> None:
    """An engine that keeps no count leaves its gauge absent rather than reporting a false 0."""
    PrometheusMetrics().sample_pool(object())  # must not raise


def test_metrics_off_records_nothing() -> None:
    """PROXY_METRICS=false: the no-op Metrics, whose render is None; the proxy then answers /metrics with a 404."""
    off = metrics.create(False)
    assert type(off) is Metrics and not off.enabled
    recorder = PrometheusMetrics()
    before = sample(recorder, "bpoc_proxy_refusals_total", code="metrics_off_probe")
    off.refused("metrics_off_probe")
    off.request_done("unlisted", "GET", 200, 0.001)
    off.flush()
    assert off.render() is None
    assert sample(recorder, "bpoc_proxy_refusals_total", code="metrics_off_probe") == before
    assert isinstance(metrics.create(True), PrometheusMetrics)


def exported_names() -> set[str]:
    names: set[str] = set()
    for name, (kind, _) in CONTRACT.items():
        names.update(name + suffix for suffix in SUFFIXES[kind])
    return names


def dashboard_targets() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    return [(panel["title"], target["expr"]) for panel in panels for target in panel["targets"]]


def test_the_contract_is_what_metrics_py_defines() -> None:
    """The registry holds exactly the contract's metrics: nothing renamed, nothing missing."""
    defined = {family.name for family in metric_families.definitions().registry.collect()}
    assert defined == set(CONTRACT)


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    assert panels
    for panel in panels:
        assert panel["title"] and panel["targets"] and set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert all(target["expr"] and target["refId"] for target in panel["targets"])
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert {"datasource", "instance"} <= variables


@pytest.mark.parametrize(("title", "expr"), dashboard_targets(), ids=[t for t, _ in dashboard_targets()])
def test_every_dashboard_query_names_exported_metrics(title: str, expr: str) -> None:
    """A query naming a metric the proxy does not export would draw an empty panel, silently."""
    named = set(re.findall(r"\bbpoc_proxy_[a-z0-9_]+", expr))
    assert named, expr
    assert named <= exported_names(), named - exported_names()


def test_the_dashboard_covers_what_the_issue_asks_for() -> None:
    """Requests and errors by route, latency percentiles, BPOC latency, attributions, refusals by code, the
    directory's health and the upstream pool."""
    exprs = " ".join(expr for _, expr in dashboard_targets())
    for name in (
        "bpoc_proxy_requests_total",
        "bpoc_proxy_request_duration_seconds_bucket",
        "bpoc_proxy_upstream_duration_seconds_bucket",
        "bpoc_proxy_attributions_total",
        "bpoc_proxy_refusals_total",
        "bpoc_proxy_directory_lookups_total",
        "bpoc_proxy_directory_last_sync_timestamp_seconds",
        "bpoc_proxy_upstream_connections",
    ):
        assert name in exprs, name


def test_prometheus_client_is_imported_only_when_metrics_are_made() -> None:
    """prometheus-client picks multiprocess mode when first imported: importing the server, the app or the pipeline
    must not import it before `serve` has set PROMETHEUS_MULTIPROC_DIR; with metrics off it is never imported."""
    code = (
        "import sys\n"
        "import proxy.server, proxy.app, proxy.pipeline, proxy.metrics\n"
        "assert 'prometheus_client' not in sys.modules\n"
        "proxy.metrics.create(False)\n"
        "assert 'prometheus_client' not in sys.modules\n"
        "proxy.metrics.create(True)\n"
        "assert 'prometheus_client' in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
