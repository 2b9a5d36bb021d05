"""What the recruiter directory remembers between requests: one structure per concern, each with its invariant.

- ``Snapshot``: what BPOC's directory listed at one moment; ``LatestSnapshot`` holds the latest and is the one
  place its age is judged (fresh, usable while BPOC is down, or neither).
- ``ExpiringSet``: keys remembered for a fixed time (unknown emails, refused recruiter IDs).
- ``Provisioned``: recruiters this process created that the directory does not list yet.
- ``Backoff``: whether a request may call BPOC's directory now.

Every structure that grows with traffic is held under one shared ``Bound``: CACHE_MULTIPLE times the largest
directory this process has read, at least CACHE_FLOOR entries. The bound never shrinks, so it is always larger
than the directory, and a sync (which adds at most one entry per recruiter of the previous directory) never
evicts its own entries; beyond it, the oldest entries go first. The snapshot itself is the directory, replaced
whole, and needs no other bound.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Container, Hashable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from .recruiter_api import Recruiter

#: Each memory holds at most CACHE_MULTIPLE x the largest directory seen, and never fewer than CACHE_FLOOR.
CACHE_MULTIPLE = 4
CACHE_FLOOR = 10_000

Timer = Callable[[], float]
K = TypeVar("K", bound=Hashable)


class Bound:
    """The most entries one memory may hold: CACHE_MULTIPLE x the largest directory seen, at least CACHE_FLOOR.

    It only grows: a directory that shrinks leaves room for the entries its sync marks unknown.
    """

    def __init__(self) -> None:
        self.limit = CACHE_FLOOR

    def fit(self, directory_size: int) -> None:
        self.limit = max(self.limit, CACHE_MULTIPLE * directory_size)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What BPOC's directory listed at ``taken_at``; never edited, replaced whole by the next successful read.

    ``by_email`` holds the active recruiters by lowercase email (the first listed wins should BPOC list an email
    twice), ``active_ids`` their IDs in lowercase, and ``size`` counts every entry BPOC listed, inactive too.
    """

    by_email: Mapping[str, Recruiter]
    active_ids: frozenset[str]
    size: int
    taken_at: float

    @classmethod
    def of(cls, listed: list[Recruiter], taken_at: float) -> Snapshot:
        active: dict[str, Recruiter] = {}
        for recruiter in listed:
            if recruiter.is_active:
                active.setdefault(recruiter.email.lower(), recruiter)
        ids = frozenset(recruiter.id.lower() for recruiter in active.values())
        return cls(active, ids, len(listed), taken_at)


class LatestSnapshot:
    """The latest snapshot, and the one place its age is judged. Ages count from when BPOC answered:

    - fresh, younger than ``fresh_for`` (RECRUITER_CACHE_TTL): served without asking BPOC;
    - usable, no older than ``usable_for`` (RECRUITER_STALE_TTL): served only while BPOC cannot be read.

    Doubted emails are entries BPOC has since refused (a stale recruiter ID): never fresh, still usable, until
    the next snapshot; they are a subset of the snapshot's emails.
    """

    def __init__(self, fresh_for: float, usable_for: float, timer: Timer) -> None:
        self._fresh_for = fresh_for
        self._usable_for = usable_for
        self._timer = timer
        self._snapshot: Snapshot | None = None
        self._doubted: set[str] = set()

    def fresh(self) -> Snapshot | None:
        snapshot = self._snapshot
        if snapshot is None or self._timer() - snapshot.taken_at >= self._fresh_for:
            return None
        return snapshot

    def usable(self) -> Snapshot | None:
        snapshot = self._snapshot
        if snapshot is None or self._timer() - snapshot.taken_at > self._usable_for:
            return None
        return snapshot

    def fresh_entry(self, email: str) -> Recruiter | None:
        """The fresh snapshot's recruiter for ``email`` (lowercase), unless that entry is doubted."""
        snapshot = self.fresh()
        if snapshot is None or (self._doubted and email in self._doubted):
            return None
        return snapshot.by_email.get(email)

    def doubt(self, email: str) -> None:
        if self._snapshot is not None and email in self._snapshot.by_email:
            self._doubted.add(email)

    def replace(self, snapshot: Snapshot) -> Snapshot | None:
        """Make ``snapshot`` the latest; the previous one is returned."""
        previous, self._snapshot = self._snapshot, snapshot
        self._doubted = set()
        return previous


class ExpiringSet(Generic[K]):
    """Keys remembered for ``ttl`` seconds after they were (last) added, at most ``bound.limit`` of them.

    Hand-written rather than a cachetools TTLCache, whose size is fixed when it is made: this bound grows with the
    directory. With one ttl, insertion order is expiry order, so expired and evicted entries both leave from the
    front: the oldest go first.
    """

    def __init__(self, ttl: float, bound: Bound, timer: Timer) -> None:
        self._ttl = ttl
        self._bound = bound
        self._timer = timer
        self._expiries: OrderedDict[K, float] = OrderedDict()

    def __contains__(self, key: K) -> bool:
        expires = self._expiries.get(key)
        return expires is not None and self._timer() < expires

    def __len__(self) -> int:
        return len(self._expiries)

    def add(self, key: K) -> None:
        now = self._timer()
        self._expiries.pop(key, None)
        expiries = self._expiries
        while expiries and (len(expiries) >= self._bound.limit or next(iter(expiries.values())) <= now):
            expiries.popitem(last=False)
        expiries[key] = now + self._ttl

    def discard(self, key: K) -> None:
        self._expiries.pop(key, None)


class Provisioned:
    """Recruiters this process created that the latest snapshot does not list yet, by lowercase email.

    The directory may lag behind a creation, and a user must never be created twice. An entry goes when a
    snapshot lists its email (the directory's answer wins from then on), when BPOC refuses its ID, or, beyond
    the bound, oldest first.
    """

    def __init__(self, bound: Bound) -> None:
        self._bound = bound
        self._by_email: OrderedDict[str, Recruiter] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_email)

    def get(self, email: str) -> Recruiter | None:
        return self._by_email.get(email)

    def add(self, email: str, recruiter: Recruiter) -> None:
        self._by_email.pop(email, None)
        while len(self._by_email) >= self._bound.limit:
            self._by_email.popitem(last=False)
        self._by_email[email] = recruiter

    def forget(self, email: str, recruiter_id: str) -> None:
        """Drop the entry for ``email`` if it carries ``recruiter_id`` (lowercase), which BPOC refused."""
        recruiter = self._by_email.get(email)
        if recruiter is not None and recruiter.id.lower() == recruiter_id:
            del self._by_email[email]

    def drop_listed(self, listed: Container[str]) -> None:
        for email in [email for email in self._by_email if email in listed]:
            del self._by_email[email]


class Backoff:
    """Whether a request may call BPOC's directory now: not within ``pause`` seconds of a failed read, so that
    while BPOC is down requests get a stale entry or a 503 without each adding another failed call."""

    def __init__(self, pause: float, timer: Timer) -> None:
        self._pause = pause
        self._timer = timer
        self._failed_at: float | None = None

    def may_call(self) -> bool:
        return self._failed_at is None or self._timer() - self._failed_at >= self._pause

    def failed(self) -> None:
        self._failed_at = self._timer()

    def succeeded(self) -> None:
        self._failed_at = None
