"""Portal user -> BPOC recruiter UUID, in this order:

1. a ``bpoc_recruiter_id`` carried by the verified session itself;
2. the agency's BPOC directory (``GET /api/v1/agency/recruiters``), matched by email case-insensitively,
   inactive recruiters excluded; held in a TTL cache, unknown emails cached negatively for a shorter time,
   one directory call for any number of concurrent misses, refreshed in the background, and served stale
   while BPOC is down;
3. nothing found: 403, or with RECRUITER_AUTO_PROVISION the recruiter is created
   (``POST /api/v1/recruiters/create``), once per user even under concurrent requests.

When BPOC refuses an ID as stale, ``resync`` looks the user up again so the pipeline can replay once. The
agency API key is read through a callable (it may rotate) and never logged; emails and recruiter IDs may be.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpx
from cachetools import TTLCache

from .auth import Principal
from .errors import Forbidden, ServiceUnavailable
from .settings import Settings
from .singleflight import SingleFlight

log = logging.getLogger("proxy.recruiters")

DIRECTORY_PATH = "/api/v1/agency/recruiters"
CREATE_PATH = "/api/v1/recruiters/create"
#: Bound on cached emails; far above any agency's headcount, there only so memory cannot grow without limit.
CACHE_SIZE = 100_000
_DIRECTORY = "directory"  # the single-flight key of the whole-directory fetch
DIRECTORY_RETRY_AFTER_FAILURE = 1.0


@dataclass(frozen=True, slots=True)
class Recruiter:
    id: str
    email: str
    is_active: bool
    role: str | None
    first_name: str | None = None
    last_name: str | None = None


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a request is attributed to: the recruiter UUID, and the role (the session's, else BPOC's)."""

    recruiter_id: str
    role: str | None


async def fetch_directory(
    http: httpx.AsyncClient, base_url: str, api_key: str, timeout: float
) -> list[Recruiter]:
    """Every recruiter of the agency, active or not; ServiceUnavailable (one sentence) if BPOC cannot say."""
    try:
        response = await http.get(
            base_url.rstrip("/") + DIRECTORY_PATH,
            headers={"X-API-Key": api_key, "Accept": "application/json"},
            timeout=timeout,
        )
    except httpx.HTTPError as exc:
        raise ServiceUnavailable(
            f"The BPOC recruiter directory cannot be reached ({type(exc).__name__})"
        ) from exc
    if response.status_code in (401, 403):
        raise ServiceUnavailable(
            f"BPOC refused the agency API key when listing recruiters (HTTP {response.status_code})"
        )
    if not response.is_success:
        raise ServiceUnavailable(f"The BPOC recruiter directory answered HTTP {response.status_code}")
    try:
        document = response.json()
    except ValueError:
        document = None
    entries = document.get("recruiters") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ServiceUnavailable("The BPOC recruiter directory gave an answer without a list of recruiters")
    return [recruiter for recruiter in map(_recruiter, entries) if recruiter is not None]


def _recruiter(entry: Any) -> Recruiter | None:
    if not isinstance(entry, dict):
        return None
    rid, email = _text(entry.get("id")), _text(entry.get("email"))
    if rid is None or email is None:
        log.debug("skipped a directory entry without an id or email")
        return None
    return Recruiter(
        id=rid,
        email=email,
        # Only an explicit false excludes: the guide filters on is_active = true, older answers may omit it.
        is_active=entry.get("is_active") is not False,
        role=_text(entry.get("role")),
        first_name=_text(entry.get("firstName")),
        last_name=_text(entry.get("lastName")),
    )


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return None


class RecruiterDirectory:
    """The agency's recruiters by email, cached per worker process; see the module docstring for the order."""

    def __init__(
        self,
        settings: Settings,
        http: httpx.AsyncClient,
        api_key: Callable[[], str],
        *,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._http = http
        self._api_key = api_key
        self._timer = timer
        # email -> (expires at, recruiter). A plain dict, not a TTLCache: every attributed request looks here, and
        # a hit must cost one lookup and one compare. It holds what BPOC listed at the last refresh (which
        # replaces it whole) plus recruiters created since, so it is as big as the directory.
        self._by_email: dict[str, tuple[float, Recruiter]] = {}
        self._unknown: TTLCache[str, bool] = TTLCache(
            CACHE_SIZE, settings.recruiter_negative_ttl, timer=timer
        )
        # Used only when a fetch fails: email -> (recruiter, when BPOC last listed it).
        self._stale: dict[str, tuple[Recruiter, float]] = {}
        # IDs BPOC refused as stale recently: a session carrying one falls through to the directory, and a
        # second refusal of the same ID does not cost another directory fetch.
        self._refused: TTLCache[str, bool] = TTLCache(
            CACHE_SIZE, settings.recruiter_negative_ttl, timer=timer
        )
        # Recruiters this process created, in case the directory lags behind: never create a user twice.
        self._provisioned: dict[str, Recruiter] = {}
        self._active: frozenset[str] | None = None
        self._snapshot_at: float | None = None
        self._failed_at: float | None = None
        self._fetch: SingleFlight[str, None] = SingleFlight()
        self._create: SingleFlight[str, Recruiter] = SingleFlight()

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
        if (
            self._snapshot_at is None
            or self._timer() - self._snapshot_at >= self._settings.recruiter_cache_ttl
        ):
            try:
                await self._refresh_for_request()
            except ServiceUnavailable:
                if (
                    self._snapshot_at is None
                    or self._timer() - self._snapshot_at > self._settings.recruiter_stale_ttl
                ):
                    raise
                log.warning("BPOC directory unavailable; using the last list of active recruiters")
        return self._active or frozenset()

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
        if stale not in self._refused:
            # The first refusal of this ID: forget what we knew and ask BPOC. Repeats within the negative ttl
            # reuse that answer instead of costing a directory fetch each.
            self._refused[stale] = True
            self._forget(email, stale)
            try:
                await self.refresh()
            except ServiceUnavailable as exc:
                log.warning(
                    "re-sync could not reach BPOC", extra={"fields": {**fields, "reason": exc.message}}
                )
                return None
            if self._listed(email) is None:
                self._unknown[email] = True
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
        """Fetch the whole directory and replace the cache; concurrent callers share one fetch."""
        try:
            await self._fetch.run(_DIRECTORY, self._load)
        except ServiceUnavailable:
            self._failed_at = self._timer()
            raise
        self._failed_at = None

    async def _refresh_for_request(self) -> None:
        """refresh(), except within DIRECTORY_RETRY_AFTER_FAILURE seconds of a failure, which fails at once:
        while BPOC is down, requests get stale entries (or a 503) without each adding another failed call."""
        if self._failed_at is not None and self._timer() - self._failed_at < DIRECTORY_RETRY_AFTER_FAILURE:
            raise ServiceUnavailable("The BPOC recruiter directory cannot be reached; retrying shortly")
        await self.refresh()

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

    # --- internals ------------------------------------------------------------------------------------------

    def _forget(self, email: str, recruiter_id: str) -> None:
        self._by_email.pop(email, None)
        self._unknown.pop(email, None)
        provisioned = self._provisioned.get(email)
        if provisioned is not None and provisioned.id.lower() == recruiter_id:
            del self._provisioned[email]

    def _listed(self, email: str) -> Recruiter | None:
        entry = self._by_email.get(email)
        return entry[1] if entry is not None and entry[0] > self._timer() else None

    async def _find(self, email: str) -> Recruiter | None:
        recruiter = self._listed(email)
        if recruiter is not None or email in self._unknown:
            return recruiter
        try:
            await self._refresh_for_request()
        except ServiceUnavailable:
            return self._stale_or_raise(email)
        recruiter = self._listed(email) or self._provisioned.get(email)
        if recruiter is None:
            self._unknown[email] = True
        return recruiter

    def _stale_or_raise(self, email: str) -> Recruiter:
        entry = self._stale.get(email)
        if entry is None or self._timer() - entry[1] > self._settings.recruiter_stale_ttl:
            raise ServiceUnavailable(
                "The BPOC recruiter directory cannot be reached, so your recruiter ID cannot be looked up"
            )
        log.warning(
            "BPOC directory unavailable; serving a stale recruiter entry", extra={"fields": {"email": email}}
        )
        return entry[0]

    async def _load(self) -> None:
        recruiters = await fetch_directory(
            self._http, self._settings.bpoc_base_url, self._api_key(), self._settings.upstream_timeout
        )
        self._replace(recruiters)

    def _replace(self, recruiters: Iterable[Recruiter]) -> None:
        now = self._timer()
        active: dict[str, Recruiter] = {}
        for recruiter in recruiters:
            if recruiter.is_active:
                active.setdefault(recruiter.email.lower(), recruiter)
        # Users BPOC no longer lists (removed or deactivated) are known to be unknown now.
        for email in self._by_email.keys() - active.keys():
            self._unknown[email] = True
        for email in active:
            self._unknown.pop(email, None)
        expires = now + self._settings.recruiter_cache_ttl
        self._by_email = {email: (expires, recruiter) for email, recruiter in active.items()}
        self._stale = {email: (recruiter, now) for email, recruiter in active.items()}
        self._active = frozenset(recruiter.id.lower() for recruiter in active.values())
        self._snapshot_at = now
        log.info("loaded the BPOC recruiter directory", extra={"fields": {"active": len(active)}})

    async def _provision(self, principal: Principal, email: str) -> Recruiter:
        if not self._settings.recruiter_auto_provision:
            raise Forbidden(
                f"Your portal account ({email}) has no BPOC recruiter ID, as no active recruiter of this "
                "agency in BPOC has that email; ask an agency admin to invite you to BPOC or to store your "
                "bpoc_recruiter_id in the portal"
            )
        return await self._create.run(email, lambda: self._create_recruiter(principal, email))

    async def _create_recruiter(self, principal: Principal, email: str) -> Recruiter:
        existing = self._listed(email) or self._provisioned.get(email)
        if existing is not None:
            return existing  # created by a flight that finished just before this one started
        body = {
            "email": principal.email or email,
            "firstName": principal.first_name or email.partition("@")[0],
            "lastName": principal.last_name or "",
            "role": "recruiter",
        }
        response = await self._post_create(body)
        if response.status_code == 409:
            # Someone created the recruiter meanwhile (another worker process): the directory has it now.
            await self.refresh()
            listed = self._listed(email)
            if listed is not None:
                return listed
        answer = _json(response)
        recruiter_id = _text(answer.get("recruiterId")) if isinstance(answer, dict) else None
        if not response.is_success or recruiter_id is None:
            log.warning(
                "BPOC did not create the recruiter",
                extra={"fields": {"email": email, "status": response.status_code}},
            )
            if response.status_code >= 500 or response.is_success:
                raise ServiceUnavailable("BPOC could not create your recruiter account; try again shortly")
            raise Forbidden(
                f"Your portal account ({email}) has no BPOC recruiter ID and BPOC refused to create one "
                f"(HTTP {response.status_code}); ask an agency admin to invite you to BPOC"
            )
        recruiter = Recruiter(
            recruiter_id, email, True, "recruiter", principal.first_name, principal.last_name
        )
        self._provisioned[email] = recruiter
        self._by_email[email] = (self._timer() + self._settings.recruiter_cache_ttl, recruiter)
        self._unknown.pop(email, None)
        self._stale[email] = (recruiter, self._timer())
        log.info("created a BPOC recruiter", extra={"fields": {"email": email, "recruiterId": recruiter_id}})
        return recruiter

    async def _post_create(self, body: dict[str, str]) -> httpx.Response:
        try:
            return await self._http.post(
                self._settings.bpoc_base_url.rstrip("/") + CREATE_PATH,
                json=body,
                headers={"X-API-Key": self._api_key(), "Accept": "application/json"},
                timeout=self._settings.upstream_timeout,
            )
        except httpx.HTTPError as exc:
            raise ServiceUnavailable("BPOC cannot be reached to create your recruiter account") from exc


def email_of(principal: Principal) -> str:
    """The lowercase email the directory is searched by; Forbidden if the session carries none."""
    if principal.email is None:
        raise Forbidden(
            "Your portal session carries neither a BPOC recruiter ID nor an email, so no BPOC recruiter can "
            "be found for you; ask the portal administrator to include one of them in the session"
        )
    return principal.email.lower()


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
