"""Helpers for tests of a running ``bpoc-proxy serve`` process: waiting for a condition, reading its JSON log lines,
and scraping its admin listener's /metrics."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

from .conftest import ProxyProcess

T = TypeVar("T")
#: A generous bound for conditions that normally hold within a fraction of a second.
PATIENCE = 30.0


def wait_for(condition: Callable[[], T], what: str, timeout: float = PATIENCE) -> T:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def records(proxy: ProxyProcess) -> list[dict[str, Any]]:
    """The process's log as JSON objects (every line of ``bpoc-proxy serve`` is one)."""
    lines = [line for line in proxy.logs().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]


def record(proxy: ProxyProcess, msg: str) -> dict[str, Any] | None:
    """The first log record whose message starts with ``msg``, if any yet."""
    return next((r for r in records(proxy) if r.get("msg", "").startswith(msg)), None)


def wait_for_record(proxy: ProxyProcess, msg: str) -> dict[str, Any]:
    found = wait_for(lambda: record(proxy, msg), f"the log line {msg!r}")
    assert found is not None
    return found


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(admin_url: str) -> Samples:
    """Every sample of the admin listener's /metrics, parsed by prometheus-client's own parser."""
    response = httpx.get(admin_url + "/metrics", timeout=10, trust_env=False)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when the series does not exist (yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_for_value(admin_url: str, name: str, expected: float, **labels: str) -> None:
    """Scrape until a sample reaches ``expected``: each worker writes its counts once a second."""
    wait_for(lambda: value(scrape(admin_url), name, **labels) == expected, f"{name}{labels} to be {expected}")
