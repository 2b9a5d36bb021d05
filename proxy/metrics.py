"""Prometheus metrics: every metric the proxy exports, defined once, and the small API the proxy records them with.

The names and labels are a public contract (dashboards and alerts are built on them; README "Metrics"). Labels
have bounded cardinality: ``route`` is a rule's or route's template such as ``POST /api/v1/jobs/{id}/approve``,
``unlisted`` or ``own`` (the proxy's own endpoints), never a raw path, user, email or id.

The proxy records through one object chosen at start-up (``create``): a :class:`PrometheusMetrics`, or, with
``PROXY_METRICS=false``, the base :class:`Metrics` whose every method does nothing. The hot path calls it without
asking whether metrics are on::

    metrics.request_done(route, method, status, seconds)   # once per request, where the pipeline finishes it
    metrics.upstream_answered(route, seconds)              # BPOC's time to response headers
    metrics.attributed(route, field, mode)                 # one field written on an attributed route
    metrics.refused(code)                                  # one JSON refusal, by its code
    metrics.session_failed(reason)                         # a portal session that did not verify
    metrics.directory_lookup(result)                       # hit, miss, negative or stale
    metrics.directory_synced() / directory_sync_failed() / recruiter_provisioned() / stale_recruiter_replayed()
    metrics.rules_reloaded(ok) / rules_loaded()
    metrics.sample_pool(upstream)                          # the upstream pool's gauges, sampled (not per request)

Label children are bound once per label tuple and kept in a dict, and a request only adds to this worker's own
tallies: a dict lookup and an addition or two per call, well under a microsecond. ``flush`` writes the tallies
to prometheus-client once a second (``metrics.flush()``, called by the app), before every scrape the worker
answers, and at shutdown. A scrape may miss another worker's latest second; a worker killed outright (SIGKILL)
loses its last second.

Several worker processes are summed by prometheus-client's multiprocess mode: each process writes its values to
memory-mapped files in ``PROMETHEUS_MULTIPROC_DIR``, and ``render`` reads every process's files (see
``metric_families.py`` for the definitions, and for when prometheus-client is imported). The timestamp gauges are summed as their maximum
across processes, the connection gauges as the sum over live processes. With metrics off, prometheus-client is
never imported.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from typing import Any, TypeVar

from . import __version__
from .metric_families import BUCKETS, definitions

#: The route label of a request no rule or route names, and of the proxy's own endpoints.
UNLISTED = "unlisted"
OWN = "own"
#: The text exposition format every Prometheus server reads (the names here need no newer escaping).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# HTTP methods as labels; anything else (httptools accepts a few dozen WebDAV and other methods) is OTHER.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
_BOUNDS = (
    *BUCKETS,
    float("inf"),
)  # as prometheus-client's Histogram keeps them: an observation goes in the first >=
_LOOKUP_RESULTS = ("hit", "miss", "negative", "stale")
_T = TypeVar("_T", "_Count", "_Durations")


class Metrics:
    """What the proxy records, as calls. This base class records nothing: it is the object used when
    ``PROXY_METRICS=false``, so that the hot path does no metric work and never asks whether metrics are on."""

    enabled = False

    def request_done(self, route: str, method: str, status: int, seconds: float) -> None:
        """A request answered (or given up): ``bpoc_proxy_requests_total`` and its duration histogram."""

    def upstream_answered(self, route: str, seconds: float) -> None:
        """BPOC's response headers arrived ``seconds`` after the request was sent."""

    def attributed(self, route: str, field: str, mode: str) -> None:
        """One attribution field written (``mode``: set, default, enforce, reference)."""

    def refused(self, code: str) -> None:
        """One JSON refusal sent, by its ``code`` (``bad_request``, ``unauthenticated``, ...)."""

    def session_failed(self, reason: str) -> None:
        """A portal session that did not verify; ``reason`` must come from a fixed set (``expired``, ...)."""

    def directory_lookup(self, result: str) -> None:
        """A recruiter lookup: ``hit``, ``miss``, ``negative`` or ``stale``."""

    def directory_synced(self, at: float | None = None) -> None:
        """BPOC's directory was loaded whole at ``at`` (Unix time; now by default)."""

    def directory_sync_failed(self) -> None:
        """A load of BPOC's directory failed."""

    def recruiter_provisioned(self) -> None:
        """RECRUITER_AUTO_PROVISION created a recruiter."""

    def stale_recruiter_replayed(self) -> None:
        """An attributed request was replayed with a re-synced recruiter ID."""

    def rules_loaded(self, at: float | None = None) -> None:
        """The rules in use were loaded at ``at`` (Unix time; now by default)."""

    def rules_reloaded(self, ok: bool) -> None:
        """A reload was tried: ``ok`` when the new rules replaced the old ones (their load time is recorded)."""

    def sample_pool(self, pool: object) -> None:
        """Sample the upstream pool's gauges from ``pool``'s counts (the Upstream's ``open_connections``,
        ``idle_connections``, ``waiting`` and ``queue_timeouts``: each read if it has it). Called on a timer and
        before a scrape, never per request."""

    def flush(self) -> None:
        """Write this worker's tallies to the metrics files; the app calls it once a second and at shutdown."""

    def render(self) -> bytes | None:
        """The Prometheus text exposition of every worker's metrics, or None when metrics are off."""
        return None


class PrometheusMetrics(Metrics):
    """Metrics recorded with prometheus-client (in multiprocess mode under ``bpoc-proxy serve``).

    The request path only adds to tallies kept in this worker (a dict lookup and an addition or two); ``flush``
    writes them to prometheus-client once a second and before every scrape this worker answers. A write in
    multiprocess mode takes a lock, a getpid() and an mmap store (~1.5 µs): a few per request would be a real share
    of the request's budget, while a flush writes each series once whatever the traffic.
    """

    enabled = True

    def __init__(self, version: str = __version__) -> None:
        self._defined = defined = definitions()
        self._requests: dict[tuple[str, str, int], _Durations] = {}
        self._upstream: dict[str, _Durations] = {}
        self._attributions: dict[tuple[str, str, str], _Count] = {}
        self._refusals: dict[str, _Count] = {}
        self._session_failures: dict[str, _Count] = {}
        self._lookups = {
            result: _Count(defined.directory_lookups.labels(result)) for result in _LOOKUP_RESULTS
        }
        self._tallies: list[_Count | _Durations] = [*self._lookups.values()]
        self._reloads = {
            ok: defined.rules_reloads.labels("success" if ok else "failure") for ok in (True, False)
        }
        self._queue_timeouts_seen = 0
        defined.build_info.labels(version).set(1)

    def request_done(self, route: str, method: str, status: int, seconds: float) -> None:
        tally = self._requests.get((route, method, status))
        if tally is None:
            tally = self._requests[(route, method, status)] = self._new_request(route, method, status)
        tally.count += 1
        tally.total += seconds
        tally.buckets[bisect_left(_BOUNDS, seconds)] += 1

    def upstream_answered(self, route: str, seconds: float) -> None:
        tally = self._upstream.get(route)
        if tally is None:
            tally = self._upstream[route] = self._track(
                _Durations(self._defined.upstream_duration.labels(route))
            )
        tally.count += 1
        tally.total += seconds
        tally.buckets[bisect_left(_BOUNDS, seconds)] += 1

    def attributed(self, route: str, field: str, mode: str) -> None:
        key = (route, field, mode)
        tally = self._attributions.get(key)
        if tally is None:
            tally = self._attributions[key] = self._track(_Count(self._defined.attributions.labels(*key)))
        tally.pending += 1

    def refused(self, code: str) -> None:
        tally = self._refusals.get(code)
        if tally is None:
            tally = self._refusals[code] = self._track(_Count(self._defined.refusals.labels(code)))
        tally.pending += 1

    def session_failed(self, reason: str) -> None:
        tally = self._session_failures.get(reason)
        if tally is None:
            tally = self._session_failures[reason] = self._track(
                _Count(self._defined.session_failures.labels(reason))
            )
        tally.pending += 1

    def directory_lookup(self, result: str) -> None:
        self._lookups[result].pending += 1

    def directory_synced(self, at: float | None = None) -> None:
        self._defined.directory_last_sync.set(time.time() if at is None else at)

    def directory_sync_failed(self) -> None:
        self._defined.directory_sync_failures.inc()

    def recruiter_provisioned(self) -> None:
        self._defined.recruiters_provisioned.inc()

    def stale_recruiter_replayed(self) -> None:
        self._defined.stale_recruiter_replays.inc()

    def rules_loaded(self, at: float | None = None) -> None:
        self._defined.rules_loaded.set(time.time() if at is None else at)

    def rules_reloaded(self, ok: bool) -> None:
        self._reloads[ok].inc()
        if ok:
            self.rules_loaded()

    def sample_pool(self, pool: object) -> None:
        open_, idle = _count(pool, "open_connections"), _count(pool, "idle_connections")
        waiting, timeouts = _count(pool, "waiting"), _count(pool, "queue_timeouts")
        if open_ is not None:  # a count the pool does not keep stays absent rather than a false 0
            self._defined.upstream_connections.labels("open").set(open_)
        if idle is not None:
            self._defined.upstream_connections.labels("idle").set(idle)
        if waiting is not None:
            self._defined.upstream_queue_waiting.set(waiting)
        if timeouts is not None and timeouts > self._queue_timeouts_seen:
            self._defined.upstream_queue_timeouts.inc(timeouts - self._queue_timeouts_seen)
            self._queue_timeouts_seen = timeouts

    def flush(self) -> None:
        for tally in self._tallies:
            tally.flush()

    def render(self) -> bytes:
        self.flush()
        return self._defined.render()

    def _new_request(self, route: str, method: str, status: int) -> _Durations:
        method = method if method in _METHODS else "OTHER"
        histogram = self._defined.request_duration.labels(route, method)
        return self._track(_Durations(histogram, self._defined.requests.labels(route, method, str(status))))

    def _track(self, tally: _T) -> _T:
        self._tallies.append(tally)
        return tally


class _Count:
    """A counter's increments since the last flush."""

    __slots__ = ("child", "pending")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.pending = 0

    def flush(self) -> None:
        if self.pending:
            pending, self.pending = self.pending, 0
            self.child.inc(pending)


class _Durations:
    """A histogram's observations since the last flush, by bucket, and the request counter that moves with it.

    Flushing adds each bucket's count and the sum to the histogram child's own values (``_buckets``, ``_sum``),
    which prometheus-client has no public call for; tests/test_metrics.py checks the rendered buckets, so an
    upgrade that changes them fails there.
    """

    __slots__ = ("histogram", "counter", "count", "total", "buckets")

    def __init__(self, histogram: Any, counter: Any = None) -> None:
        self.histogram = histogram
        self.counter = counter
        self.count = 0
        self.total = 0.0
        self.buckets = [0] * len(_BOUNDS)

    def flush(self) -> None:
        if not self.count:
            return
        if self.counter is not None:
            self.counter.inc(self.count)
        self.histogram._sum.inc(self.total)
        for index, count in enumerate(self.buckets):
            if count:
                self.histogram._buckets[index].inc(count)
                self.buckets[index] = 0
        self.count, self.total = 0, 0.0


def create(enabled: bool) -> Metrics:
    """The one Metrics object of a worker, chosen once at start-up."""
    return PrometheusMetrics() if enabled else Metrics()


def _count(pool: object, name: str) -> int | None:
    value = getattr(pool, name, None)
    return value if isinstance(value, int) else None
