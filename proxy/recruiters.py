"""Portal user -> BPOC recruiter UUID, in this order:

1. a ``bpoc_recruiter_id`` carried by the verified session itself, unless BPOC refused that ID as stale lately;
2. the agency's BPOC directory (``GET /api/v1/agency/recruiters``), matched by email case-insensitively,
   inactive recruiters excluded. The whole directory is read at once into a snapshot, which answers for
   RECRUITER_CACHE_TTL s, is read again in the background every RECRUITER_SYNC_INTERVAL s, and still answers
   for up to RECRUITER_STALE_TTL s while BPOC is down. An email the fresh snapshot lacks costs one read (shared
   by any number of concurrent misses) and is then remembered as unknown for RECRUITER_NEGATIVE_TTL s;
3. nothing found: 403, or with RECRUITER_AUTO_PROVISION the recruiter is created
   (``POST /api/v1/recruiters/create``), once per user even under concurrent requests.

When BPOC refuses an ID as stale, ``resync`` looks the user up again so the pipeline can replay once. What is
remembered between requests, and its bounds, is in ``recruiter_memory.py``; the calls to BPOC are in
``recruiter_api.py``. The agency API key is read through a callable (it may rotate) and never logged; emails and
recruiter IDs may be.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from .auth import Principal
from .errors import Forbidden, ServiceUnavailable
from .metrics import Metrics
from .recruiter_api import Recruiter, create_recruiter, fetch_directory, not_created
from .recruiter_memory import Backoff, Bound, ExpiringSet, LatestSnapshot, Provisioned, Snapshot
from .settings import Settings
from .singleflight import SingleFlight

__all__ = [
    "DIRECTORY_RETRY_AFTER_FAILURE",
    "Identity",
    "Lookup",
    "Recruiter",
    "RecruiterDirectory",
    "fetch_directory",
]

log = logging.getLogger("proxy.recruiters")

#: Seconds after a failed directory read during which requests do not read it again (README, "Decisions").
DIRECTORY_RETRY_AFTER_FAILURE = 1.0
_DIRECTORY = "directory"  # the single-flight key of the whole-directory read


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a request is attributed to: the recruiter UUID, and the role (the session's, else BPOC's)."""

    recruiter_id: str
    role: str | None


class Lookup(enum.Enum):
    """How a lookup of an email in the directory was answered."""

    HIT = "hit"  # the fresh snapshot, or a recruiter this process created
    NEGATIVE = "negative"  # the email is remembered as unknown
    MISS = "miss"  # neither: BPOC's directory was read for it (whether it was found or not)
    STALE = "stale"  # the directory could not be read: the last usable snapshot answered


class RecruiterDirectory:
    """The agency's recruiters by email, for one worker process; see the module docstring for the order.

    What it remembers, one structure per concern (each states its invariant in ``recruiter_memory.py``):

    - ``_latest``: the latest snapshot of BPOC's directory, and whether it is fresh or only usable while BPOC
      is down;
    - ``_unknown``: emails BPOC does not list, so that a stranger costs one read per RECRUITER_NEGATIVE_TTL;
    - ``_refused``: recruiter IDs BPOC refused as stale, so that a session carrying one falls through to the
      directory and a second refusal within RECRUITER_NEGATIVE_TTL costs no second read;
    - ``_provisioned``: recruiters this process created that the directory does not list yet;
    - ``_backoff``: whether a request may read the directory now;
    - ``_reading`` and ``_creating``: single flights, one directory read and one creation per email at a time.
    """

    def __init__(
        self,
        settings: Settings,
        http: httpx.AsyncClient,
        api_key: Callable[[], str],
        *,
        timer: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics or Metrics()
        self._http = http
        self._api_key = api_key
        self._timer = timer
        self._bound = Bound()
        self._latest = LatestSnapshot(settings.recruiter_cache_ttl, settings.recruiter_stale_ttl, timer)
        self._unknown: ExpiringSet[str] = ExpiringSet(settings.recruiter_negative_ttl, self._bound, timer)
        self._refused: ExpiringSet[str] = ExpiringSet(settings.recruiter_negative_ttl, self._bound, timer)
        self._provisioned = Provisioned(self._bound)
        self._backoff = Backoff(DIRECTORY_RETRY_AFTER_FAILURE, timer)
        self._reading: SingleFlight[str, Snapshot] = SingleFlight()
        self._creating: SingleFlight[str, Recruiter] = SingleFlight()

    async def resolve(self, principal: Principal) -> Identity:
        """The recruiter to attribute to; Forbidden if there is none, ServiceUnavailable if BPOC can't say."""
        carried = principal.recruiter_id
        if carried is not None and carried.lower() not in self._refused:
            # The session names the recruiter; a role, if a route needs one, comes from role_of().
            return Identity(carried, principal.role)
        email = email_of(principal)
        recruiter = await self._find(email)
        if recruiter is None:
            recruiter = await self._provision(principal, email)
        return Identity(recruiter.id, principal.role if principal.role is not None else recruiter.role)

    async def role_of(self, principal: Principal) -> str | None:
        """The session's role, else the directory's for the user's email (None if the user is not listed)."""
        if principal.role is not None:
            return principal.role
        if principal.email is None:
            return None
        recruiter = await self._find(principal.email.lower())
        return recruiter.role if recruiter is not None else None

    async def active_ids(self) -> frozenset[str]:
        """The lowercase IDs of the agency's active recruiters, from the latest directory snapshot."""
        snapshot = self._latest.fresh()
        if snapshot is None:
            snapshot = await self._read_or_stale()
        return snapshot.active_ids

    async def is_active(self, recruiter_id: str) -> bool:
        """Whether ``recruiter_id`` (any letter case) is an active recruiter of the agency, as active_ids()."""
        return recruiter_id.lower() in await self.active_ids()

    async def resync(self, principal: Principal, stale_id: str) -> str | None:
        """After BPOC refused ``stale_id``: look the user up afresh; the new ID if it differs, else None."""
        email = principal.email.lower() if principal.email else None
        fields = {"email": email, "userId": principal.user_id, "staleRecruiterId": stale_id}
        log.warning(
            "BPOC refused a recruiter ID as stale; looking the recruiter up again", extra={"fields": fields}
        )
        if email is None:
            return None
        stale = stale_id.lower()
        # The first refusal of this ID reads the directory again; repeats within the negative ttl reuse that
        # answer instead of costing a directory read each.
        if stale not in self._refused and not await self._relearn(email, stale, fields):
            return None
        try:
            identity = await self.resolve(principal)
        except (Forbidden, ServiceUnavailable) as exc:
            log.warning("re-sync found no recruiter", extra={"fields": {**fields, "reason": exc.message}})
            return None
        if identity.recruiter_id.lower() == stale:
            log.warning("re-sync found the same recruiter ID; not replaying", extra={"fields": fields})
            return None
        log.warning(
            "re-sync found a new recruiter ID",
            extra={"fields": {**fields, "recruiterId": identity.recruiter_id}},
        )
        return identity.recruiter_id

    async def refresh(self) -> None:
        """Read the whole directory and make it the latest snapshot; concurrent callers share one read."""
        await self._read(for_request=False)

    async def run_sync(self) -> None:
        """Refresh every RECRUITER_SYNC_INTERVAL seconds until cancelled; failures are logged, not fatal."""
        interval = self._settings.recruiter_sync_interval
        if interval <= 0:
            return
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh()
            except ServiceUnavailable as exc:
                log.warning("background directory sync failed", extra={"fields": {"reason": exc.message}})
            except Exception:
                log.exception("background directory sync failed unexpectedly")

    # --- lookups ----------------------------------------------------------------------------------------------

    async def _find(self, email: str) -> Recruiter | None:
        """The recruiter for ``email`` (lowercase), or None.

        The one place every lookup's outcome is known: a hit returns first (the common case, answered without
        awaiting another coroutine); _lookup() says which of the others it was.
        """
        recruiter = self._known(email)
        if recruiter is not None:
            self._metrics.directory_lookup(Lookup.HIT.value)
            return recruiter
        outcome, recruiter = await self._lookup(email)
        self._metrics.directory_lookup(outcome.value)
        if outcome is Lookup.STALE:
            log.warning(
                "BPOC directory unavailable; serving a stale recruiter entry",
                extra={"fields": {"email": email}},
            )
        return recruiter

    async def _lookup(self, email: str) -> tuple[Lookup, Recruiter | None]:
        """An email _known() does not know: remembered as unknown, else read from BPOC, else stale."""
        if email in self._unknown:
            return Lookup.NEGATIVE, None
        try:
            snapshot = await self._read(for_request=True)
        except ServiceUnavailable:
            stale = self._latest.usable()
            recruiter = stale.by_email.get(email) if stale is not None else None
            if recruiter is None:
                raise ServiceUnavailable(
                    "The BPOC recruiter directory cannot be reached, so your recruiter ID cannot be looked up"
                ) from None
            return Lookup.STALE, recruiter
        found = snapshot.by_email.get(email) or self._provisioned.get(email)
        if found is None:
            self._unknown.add(email)
        return Lookup.MISS, found

    def _known(self, email: str) -> Recruiter | None:
        """What is known of ``email`` without asking BPOC: the fresh snapshot, else this process's creations."""
        return self._latest.fresh_entry(email) or self._provisioned.get(email)

    async def _relearn(self, email: str, stale: str, fields: dict[str, str | None]) -> bool:
        """Forget what BPOC has just contradicted and read the directory again; False if it cannot be read."""
        self._refused.add(stale)
        self._latest.doubt(email)
        self._unknown.discard(email)
        self._provisioned.forget(email, stale)
        try:
            snapshot = await self._read(for_request=False)
        except ServiceUnavailable as exc:
            log.warning("re-sync could not reach BPOC", extra={"fields": {**fields, "reason": exc.message}})
            return False
        if email not in snapshot.by_email:
            self._unknown.add(email)
        return True

    # --- reading the directory --------------------------------------------------------------------------------

    async def _read(self, *, for_request: bool) -> Snapshot:
        """The directory as BPOC lists it now, shared by concurrent callers. A request (``for_request``) may
        not read while the backoff says no: it fails at once, and gets a stale entry or a 503 instead."""
        if for_request and not self._backoff.may_call():
            raise ServiceUnavailable("The BPOC recruiter directory cannot be reached; retrying shortly")
        return await self._reading.run(_DIRECTORY, self._load)

    async def _read_or_stale(self) -> Snapshot:
        try:
            return await self._read(for_request=True)
        except ServiceUnavailable:
            snapshot = self._latest.usable()
            if snapshot is None:
                raise
            log.warning("BPOC directory unavailable; using the last list of active recruiters")
            return snapshot

    async def _load(self) -> Snapshot:
        """One read of the directory (the single flight's work): the one place a read succeeds or fails."""
        try:
            listed = await fetch_directory(
                self._http, self._settings.bpoc_base_url, self._api_key(), self._settings.upstream_timeout
            )
        except ServiceUnavailable:
            self._backoff.failed()
            self._metrics.directory_sync_failed()
            raise
        self._backoff.succeeded()
        self._metrics.directory_synced()
        return self._install(Snapshot.of(listed, self._timer()))

    def _install(self, snapshot: Snapshot) -> Snapshot:
        """Make ``snapshot`` the latest, and bring what else is remembered in line with it."""
        self._bound.fit(snapshot.size)
        previous = self._latest.replace(snapshot)
        if previous is not None:
            # Users BPOC no longer lists (removed or deactivated) are known to be unknown now.
            for email in previous.by_email.keys() - snapshot.by_email.keys():
                self._unknown.add(email)
        for email in snapshot.by_email:
            self._unknown.discard(email)
        self._provisioned.drop_listed(snapshot.by_email)
        log.info("loaded the BPOC recruiter directory", extra={"fields": {"active": len(snapshot.by_email)}})
        return snapshot

    # --- auto-provisioning ------------------------------------------------------------------------------------

    async def _provision(self, principal: Principal, email: str) -> Recruiter:
        if not self._settings.recruiter_auto_provision:
            raise Forbidden(
                f"Your portal account ({email}) has no BPOC recruiter ID, as no active recruiter of this "
                "agency in BPOC has that email; ask an agency admin to invite you to BPOC or to store your "
                "bpoc_recruiter_id in the portal"
            )
        return await self._creating.run(email, lambda: self._create(principal, email))

    async def _create(self, principal: Principal, email: str) -> Recruiter:
        existing = self._known(email)
        if existing is not None:
            return existing  # created by a flight that finished just before this one started
        body = {
            "email": principal.email or email,
            "firstName": principal.first_name or email.partition("@")[0],
            "lastName": principal.last_name or "",
            "role": "recruiter",
        }
        settings = self._settings
        created = await create_recruiter(
            self._http, settings.bpoc_base_url, self._api_key(), settings.upstream_timeout, body
        )
        if created.status == 409:
            # Someone created the recruiter meanwhile (another worker process): the directory has it now.
            listed = (await self._read(for_request=False)).by_email.get(email)
            if listed is not None:
                return listed
        if created.recruiter_id is None:
            raise not_created(email, created.status)
        recruiter = Recruiter(
            created.recruiter_id, email, True, "recruiter", principal.first_name, principal.last_name
        )
        self._provisioned.add(email, recruiter)
        self._unknown.discard(email)
        self._metrics.recruiter_provisioned()
        log.info("created a BPOC recruiter", extra={"fields": {"email": email, "recruiterId": recruiter.id}})
        return recruiter


def email_of(principal: Principal) -> str:
    """The lowercase email the directory is searched by; Forbidden if the session carries none."""
    if principal.email is None:
        raise Forbidden(
            "Your portal session carries neither a BPOC recruiter ID nor an email, so no BPOC recruiter can "
            "be found for you; ask the portal administrator to include one of them in the session"
        )
    return principal.email.lower()
