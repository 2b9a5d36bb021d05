"""The recruiter directory's memories, pure: ages of a snapshot, expiring sets, provisioned recruiters, bounds."""

from __future__ import annotations

import pytest

from proxy.recruiter_api import Recruiter
from proxy.recruiter_memory import (
    CACHE_FLOOR,
    CACHE_MULTIPLE,
    Backoff,
    Bound,
    ExpiringSet,
    LatestSnapshot,
    Provisioned,
    Snapshot,
)

from .conftest import FakeTimer

ALICE = Recruiter("ID-A", "Alice@Agency.example", True, "admin")
ALICE_AGAIN = Recruiter("id-a2", "alice@agency.example", True, "recruiter")
DAVE = Recruiter("id-d", "dave@agency.example", False, None)


def test_snapshot_keeps_active_recruiters_by_lowercase_email():
    """Inactive recruiters are left out; the first listing of an email wins; size counts every entry."""
    snapshot = Snapshot.of([ALICE, ALICE_AGAIN, DAVE], taken_at=5.0)
    assert dict(snapshot.by_email) == {"alice@agency.example": ALICE}
    assert snapshot.active_ids == frozenset({"id-a"})
    assert snapshot.size == 3


@pytest.mark.parametrize(
    ("age", "fresh", "usable"),
    [(0, True, True), (9.9, True, True), (10, False, True), (100, False, True), (100.1, False, False)],
    ids=["new", "nearly-old", "old", "oldest-usable", "too-old"],
)
def test_snapshot_ages(timer: FakeTimer, age: float, fresh: bool, usable: bool):
    """Fresh below the cache ttl; usable (while BPOC is down) up to and including the stale ttl."""
    latest = LatestSnapshot(fresh_for=10, usable_for=100, timer=timer)
    assert latest.fresh() is None and latest.usable() is None
    snapshot = Snapshot.of([ALICE], timer())
    latest.replace(snapshot)
    timer.advance(age)
    assert (latest.fresh() is snapshot) is fresh
    assert (latest.usable() is snapshot) is usable
    assert (latest.fresh_entry("alice@agency.example") == ALICE) is fresh


def test_doubted_entry_is_not_fresh_until_the_next_snapshot(timer: FakeTimer):
    latest = LatestSnapshot(fresh_for=10, usable_for=100, timer=timer)
    first = Snapshot.of([ALICE], timer())
    assert latest.replace(first) is None
    latest.doubt("alice@agency.example")
    assert latest.fresh_entry("alice@agency.example") is None
    assert latest.usable() is first  # still served while BPOC is down
    assert latest.replace(Snapshot.of([ALICE], timer())) is first
    assert latest.fresh_entry("alice@agency.example") == ALICE


def test_expiring_set_forgets_after_its_ttl(timer: FakeTimer):
    remembered: ExpiringSet[str] = ExpiringSet(60, Bound(), timer)
    remembered.add("a")
    timer.advance(59.9)
    assert "a" in remembered
    remembered.add("a")  # adding again restarts the ttl
    timer.advance(59.9)
    assert "a" in remembered
    timer.advance(0.1)
    assert "a" not in remembered
    remembered.add("b")  # expired entries are dropped as new ones come
    assert len(remembered) == 1
    remembered.discard("b")
    assert "b" not in remembered


def test_expiring_set_evicts_the_oldest_at_its_bound(timer: FakeTimer):
    """A flood never holds more than the bound; the oldest go first."""
    remembered: ExpiringSet[int] = ExpiringSet(60, Bound(), timer)
    for key in range(CACHE_FLOOR + 500):
        remembered.add(key)
    assert len(remembered) == CACHE_FLOOR
    assert 499 not in remembered and 500 in remembered and CACHE_FLOOR + 499 in remembered


def test_bound_follows_the_largest_directory_and_never_shrinks():
    bound = Bound()
    assert bound.limit == CACHE_FLOOR
    bound.fit(100)
    assert bound.limit == CACHE_FLOOR
    bound.fit(CACHE_FLOOR)
    assert bound.limit == CACHE_MULTIPLE * CACHE_FLOOR
    bound.fit(0)
    assert bound.limit == CACHE_MULTIPLE * CACHE_FLOOR


def test_provisioned_recruiters():
    """Kept until the directory lists the email, BPOC refuses the ID, or the bound is reached (oldest first)."""
    provisioned = Provisioned(Bound())
    provisioned.add("alice@agency.example", ALICE)
    provisioned.forget("alice@agency.example", "some-other-id")
    assert provisioned.get("alice@agency.example") == ALICE
    provisioned.forget("alice@agency.example", "id-a")
    assert provisioned.get("alice@agency.example") is None
    provisioned.add("alice@agency.example", ALICE)
    provisioned.drop_listed({"alice@agency.example": ALICE_AGAIN})
    assert len(provisioned) == 0
    for i in range(CACHE_FLOOR + 1):
        provisioned.add(f"u{i}@agency.example", ALICE)
    assert len(provisioned) == CACHE_FLOOR
    assert provisioned.get("u0@agency.example") is None and provisioned.get("u1@agency.example") == ALICE


def test_backoff(timer: FakeTimer):
    backoff = Backoff(1.0, timer)
    assert backoff.may_call()
    backoff.failed()
    timer.advance(0.9)
    assert not backoff.may_call()
    timer.advance(0.1)
    assert backoff.may_call()
    backoff.failed()
    backoff.succeeded()
    assert backoff.may_call()
