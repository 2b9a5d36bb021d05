"""Every metric family the proxy exports, defined once in a table, and their rendering (``metrics.py`` records them).

prometheus-client chooses between in-memory values and multiprocess files when it is first imported, from
PROMETHEUS_MULTIPROC_DIR; it is imported here, when the families are first made (in a worker, after
``proxy/server.py`` has set the variable), never merely by importing this module. A process that makes them
without the variable (the tests' in-thread servers, the demo) keeps its values in memory and renders them alone.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram

#: Request and BPOC durations: a proxied request takes milliseconds, BPOC may take up to PROXY_UPSTREAM_TIMEOUT.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class Family:
    """One metric: the attribute it is kept under, its kind and name (counters without ``_total``, which
    prometheus-client adds), help text, labels, and how several processes combine (gauges)."""

    attribute: str
    kind: str  # counter, gauge or histogram
    name: str
    help: str
    labels: tuple[str, ...] = ()
    multiprocess_mode: str | None = None


FAMILIES = (
    Family("requests", "counter", "bpoc_proxy_requests",
           "Requests answered, by route template, method and status.", ("route", "method", "status")),
    Family("request_duration", "histogram", "bpoc_proxy_request_duration_seconds",
           "Time from a request's arrival to the end of the proxy's answer.", ("route", "method")),
    Family("upstream_duration", "histogram", "bpoc_proxy_upstream_duration_seconds",
           "BPOC's time to response headers.", ("route",)),
    Family("upstream_connections", "gauge", "bpoc_proxy_upstream_connections",
           "Connections to BPOC: open (in use or idle), idle (in the pool).", ("state",), "livesum"),
    Family("upstream_queue_waiting", "gauge", "bpoc_proxy_upstream_queue_waiting",
           "Requests waiting for a free connection to BPOC (PROXY_UPSTREAM_MAX_CONNECTIONS reached).", (),
           "livesum"),
    Family("upstream_queue_timeouts", "counter", "bpoc_proxy_upstream_queue_timeouts",
           "Requests refused after waiting PROXY_UPSTREAM_QUEUE_TIMEOUT for a connection to BPOC."),
    Family("attributions", "counter", "bpoc_proxy_attributions",
           "Attribution fields written, by route template, field and mode.", ("route", "field", "mode")),
    Family("refusals", "counter", "bpoc_proxy_refusals",
           "Requests refused by the proxy, by the code of the JSON error.", ("code",)),
    Family("session_failures", "counter", "bpoc_proxy_session_failures",
           "Portal sessions that did not verify, by reason.", ("reason",)),
    Family("directory_lookups", "counter", "bpoc_proxy_directory_lookups",
           "Recruiter directory lookups: hit, miss, negative (known unknown), stale (served while BPOC was "
           "unreachable).", ("result",)),
    Family("directory_last_sync", "gauge", "bpoc_proxy_directory_last_sync_timestamp_seconds",
           "When BPOC's recruiter directory was last loaded whole (Unix time).", (), "max"),
    Family("directory_sync_failures", "counter", "bpoc_proxy_directory_sync_failures",
           "Failed loads of BPOC's recruiter directory."),
    Family("recruiters_provisioned", "counter", "bpoc_proxy_recruiters_provisioned",
           "BPOC recruiters created by RECRUITER_AUTO_PROVISION."),
    Family("stale_recruiter_replays", "counter", "bpoc_proxy_stale_recruiter_replays",
           "Attributed requests replayed once after BPOC refused a stale recruiter ID."),
    Family("rules_reloads", "counter", "bpoc_proxy_rules_reloads",
           "Rules reloads, by result (success, failure).", ("result",)),
    Family("rules_loaded", "gauge", "bpoc_proxy_rules_loaded_timestamp_seconds",
           "When the rules in use were loaded (Unix time).", (), "max"),
    Family("build_info", "gauge", "bpoc_proxy_build_info",
           "The proxy's version, as a label; the value is always 1.", ("version",), "max"),
)  # fmt: skip


class Definitions:
    """The families of :data:`FAMILIES`, made once per process by :func:`definitions`."""

    requests: Counter
    request_duration: Histogram
    upstream_duration: Histogram
    upstream_connections: Gauge
    upstream_queue_waiting: Gauge
    upstream_queue_timeouts: Counter
    attributions: Counter
    refusals: Counter
    session_failures: Counter
    directory_lookups: Counter
    directory_last_sync: Gauge
    directory_sync_failures: Counter
    recruiters_provisioned: Counter
    stale_recruiter_replays: Counter
    rules_reloads: Counter
    rules_loaded: Gauge
    build_info: Gauge

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        # In multiprocess mode this registry is not rendered (the files are).
        self.registry = CollectorRegistry(auto_describe=True)
        kinds: dict[str, Any] = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}
        for family in FAMILIES:
            options: dict[str, Any] = {"registry": self.registry}
            if family.kind == "histogram":
                options["buckets"] = BUCKETS
            if family.multiprocess_mode is not None:
                options["multiprocess_mode"] = family.multiprocess_mode
            made = kinds[family.kind](family.name, family.help, family.labels, **options)
            setattr(self, family.attribute, made)

    def render(self) -> bytes:
        """Every process's metrics in the text format (this process's alone outside multiprocess mode)."""
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()  # a fresh one per scrape, as prometheus-client's documentation advises
        MultiProcessCollector(registry, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]  # untyped upstream
        return generate_latest(registry)


@functools.cache
def definitions() -> Definitions:
    """The metrics of this process, made on first use."""
    return Definitions()
