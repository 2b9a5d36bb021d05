"""Rules reload: SIGHUP on a real process, polling a Kubernetes ConfigMap mount, and swaps under load.

A good file replaces the rules for the requests that follow; a bad one is refused with its file:line error and
the rules in force stay. Every check is what a client and the BPOC sandbox see.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.sandbox.seed import BOB_ID, BpocState

from .conftest import API_KEY, ProxyFactory, ProxyProcess, auth, base_env

JOBS = "/api/v1/jobs/create"
BOB = "bob@agency.example"

PLAIN = """\
rules:
  - match: POST /api/v1/jobs/create
    set: {postedBy: recruiter}
"""
WITH_EMAIL = """\
rules:
  - match: POST /api/v1/jobs/create
    set: {postedBy: recruiter, metadata.portalEmail: email}
"""
ADMINS_ONLY = """\
rules:
  - match: POST /api/v1/jobs/create
    set: {postedBy: recruiter}
    roles: [admin]
"""
#: A typo on line 3: the refusal must name this file and that line.
BAD = """\
rules:
  - match: POST /api/v1/jobs/create
    set: {postedBy: recuiter, metadata.portalEmail: email}
"""
BAD_LINE = 3


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10, trust_env=False) as c:
        yield c


def post_job(client: httpx.Client, url: str, email: str = BOB) -> httpx.Response:
    return client.post(url + JOBS, headers=auth(email), json={"title": "Reload"})


def has_email(response: httpx.Response) -> bool:
    """Whether BPOC's job (echoing the body it received) carries the portal email of WITH_EMAIL."""
    return response.status_code == 201 and response.json().get("metadata") == {"portalEmail": BOB}


def bob_refused(response: httpx.Response) -> bool:
    return response.status_code == 403


def eventually(probe: Callable[[], bool], timeout: float) -> None:
    """Call ``probe`` until it is true, failing the test after ``timeout`` seconds (a bound, not a measurement)."""
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, f"not observed within {timeout} s"
        time.sleep(0.05)


def log_records(proxy: ProxyProcess) -> list[dict[str, Any]]:
    records = []
    for line in proxy.logs().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def refusals(proxy: ProxyProcess) -> list[dict[str, Any]]:
    return [r for r in log_records(proxy) if str(r.get("msg", "")).startswith("rules reload refused")]


# --- SIGHUP -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("new_rules", "observed"),
    [(WITH_EMAIL, has_email), (ADMINS_ONLY, bob_refused)],
    ids=["new-field", "new-role-requirement"],
)
def test_sighup_reloads_and_refuses_a_bad_file(
    proxy_process: Callable[..., ProxyProcess],
    tmp_path: Path,
    client: httpx.Client,
    bpoc_state: BpocState,
    new_rules: str,
    observed: Callable[[httpx.Response], bool],
) -> None:
    """SIGHUP puts a changed rules file in force; a bad file is refused with file:line and the old rules stay."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(PLAIN)
    proxy = proxy_process(PROXY_RULES=str(rules))
    first = post_job(client, proxy.url)
    assert first.status_code == 201
    assert "metadata" not in first.json()

    rules.write_text(new_rules)
    proxy.process.send_signal(signal.SIGHUP)
    eventually(lambda: observed(post_job(client, proxy.url)), timeout=5)

    rules.write_text(BAD)
    proxy.process.send_signal(signal.SIGHUP)
    eventually(lambda: bool(refusals(proxy)), timeout=5)
    [refusal] = refusals(proxy)
    assert f"{rules}:{BAD_LINE}:" in refusal["msg"]
    assert "recuiter" in refusal["msg"]
    assert refusal["level"] == "error"
    assert refusal["reason"] == "SIGHUP"

    assert proxy.process.poll() is None
    assert client.get(proxy.url + "/readyz").status_code == 200
    for _ in range(3):
        assert observed(post_job(client, proxy.url))  # the second rules are still in force
    alice = post_job(client, proxy.url, "alice@agency.example")
    assert alice.status_code == 201
    assert alice.json()["postedBy"] != BOB_ID
    assert all(
        json.loads(r.body)["postedBy"] in (BOB_ID, alice.json()["postedBy"])
        for r in bpoc_state.requests_to(JOBS)
    )
    key_logged = API_KEY in proxy.logs()
    assert not key_logged, "the agency key appears in the process log"


# --- PROXY_RULES_RELOAD with a ConfigMap mount ------------------------------------------------------------


class ConfigMapMount:
    """The layout kubelet gives a mounted ConfigMap, updated the way kubelet updates it (an atomic rename).

    ``dir/..2026_01_01_00_00_00.000/rules.yaml``, ``dir/..data -> ..2026_...`` and ``dir/rules.yaml ->
    ..data/rules.yaml``; an update writes a new timestamped directory, points a temporary symlink at it,
    renames that over ``..data``, and removes the old directory.
    """

    def __init__(self, root: Path, text: str) -> None:
        self.root = root
        self.version = 0
        self.current = self._write(text)
        os.symlink(self.current.name, root / "..data")
        os.symlink("..data/rules.yaml", root / "rules.yaml")

    @property
    def path(self) -> Path:
        return self.root / "rules.yaml"

    def update(self, text: str) -> None:
        old, self.current = self.current, self._write(text)
        temporary = self.root / "..data_tmp"
        os.symlink(self.current.name, temporary)
        os.replace(temporary, self.root / "..data")
        (old / "rules.yaml").unlink()
        old.rmdir()

    def _write(self, text: str) -> Path:
        self.version += 1
        directory = self.root / f"..2026_01_01_00_00_{self.version:02d}.000000000"
        directory.mkdir()
        (directory / "rules.yaml").write_text(text)
        return directory


def test_configmap_symlink_swap_is_picked_up(
    start_proxy: ProxyFactory,
    bpoc_url: str,
    tmp_path: Path,
    client: httpx.Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With PROXY_RULES_RELOAD, a ConfigMap update (symlink swap) takes effect at a later poll; a bad one is
    refused and the rules in use stay."""
    mount = ConfigMapMount(tmp_path, PLAIN)
    url = start_proxy(
        base_env(
            bpoc_url,
            PROXY_RULES=str(mount.path),
            PROXY_RULES_RELOAD="true",
            PROXY_RULES_RELOAD_INTERVAL="0.2",
        )
    )
    assert not has_email(post_job(client, url))

    mount.update(WITH_EMAIL)
    eventually(lambda: has_email(post_job(client, url)), timeout=10)  # a poll every 0.2 s; the bound is slack

    with caplog.at_level(logging.ERROR, logger="proxy.rules"):
        mount.update(BAD)
        eventually(lambda: "rules reload refused" in caplog.text, timeout=10)
    assert f"{mount.path}:{BAD_LINE}:" in caplog.text
    assert has_email(post_job(client, url))

    mount.update(PLAIN)
    eventually(lambda: not has_email(post_job(client, url)), timeout=10)


# --- reload under load --------------------------------------------------------------------------------------


def test_swaps_under_load_lose_no_request(
    start_proxy: ProxyFactory, bpoc_url: str, bpoc_state: BpocState, tmp_path: Path
) -> None:
    """While the rules file flips between two good versions, every request succeeds and is attributed."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(PLAIN)
    url = start_proxy(
        base_env(
            bpoc_url, PROXY_RULES=str(rules), PROXY_RULES_RELOAD="true", PROXY_RULES_RELOAD_INTERVAL="0.1"
        )
    )
    bpoc_state.reset_requests()
    swapping = threading.Event()
    swapping.set()
    statuses: list[int] = []
    lock = threading.Lock()

    def load() -> None:
        # At least 150 requests per thread, and on until the swaps are over; never more than 1500.
        with httpx.Client(timeout=10, trust_env=False) as client:
            sent = 0
            while sent < 1500 and (sent < 150 or swapping.is_set()):
                status = post_job(client, url).status_code
                with lock:
                    statuses.append(status)
                sent += 1

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for n in range(10):
            time.sleep(0.15)
            temporary = tmp_path / "rules.yaml.tmp"
            temporary.write_text(WITH_EMAIL if n % 2 == 0 else PLAIN)
            os.replace(temporary, rules)
        time.sleep(0.15)
    finally:
        swapping.clear()
        for thread in threads:
            thread.join(timeout=60)

    assert len(statuses) >= 600
    assert set(statuses) == {201}
    bodies = [json.loads(request.body) for request in bpoc_state.requests_to(JOBS)]
    assert len(bodies) == len(statuses)
    assert all(body["postedBy"] == BOB_ID for body in bodies)
    with_email = sum(body.get("metadata") == {"portalEmail": BOB} for body in bodies)
    assert 0 < with_email < len(bodies), "both rule versions should have served requests"
