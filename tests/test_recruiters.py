"""The recruiter directory: lookup order, caches, single flight, sync, stale serving, provisioning, resync.

BPOC is a small purpose-built Starlette app on a real uvicorn socket that counts the calls it receives.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy.auth import Principal
from proxy.errors import Forbidden, ServiceUnavailable
from proxy.recruiter_memory import CACHE_FLOOR
from proxy.recruiters import (
    DIRECTORY_RETRY_AFTER_FAILURE,
    Identity,
    Recruiter,
    RecruiterDirectory,
    fetch_directory,
)
from proxy.sandbox.server import bind_socket, serve_in_thread
from proxy.settings import Settings

from .conftest import FakeTimer

API_KEY = "agency-key-for-tests"
ALICE_ID = "0b5a1f0e-0000-4000-8000-00000000a11c"
CAROL_ID = "0b5a1f0e-0000-4000-8000-0000000ca201"


class Bpoc:
    """The state behind the fake BPOC: its recruiters and what it was asked."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.api_key = API_KEY
        self.recruiters: list[dict[str, Any]] = [
            recruiter(ALICE_ID, "alice@agency.example", role="admin", first="Alice"),
            recruiter(CAROL_ID, "Carol@Agency.example", role="recruiter"),
            recruiter("0b5a1f0e-0000-4000-8000-0000000da4e0", "dave@agency.example", active=False),
        ]
        self.directory_status: int | None = None
        self.directory_body: bytes = b""
        self.directory_calls = 0
        self.create_status: int | None = None
        self.create_calls: list[dict[str, Any]] = []
        self.keys_seen: list[str | None] = []

    def recreate(self, email: str) -> str:
        """Delete and re-create a recruiter, as an agency admin might: same email, new UUID."""
        new_id = str(uuid.uuid4())
        for entry in self.recruiters:
            if entry["email"].lower() == email.lower():
                entry["id"] = new_id
        return new_id


def recruiter(
    rid: str, email: str, *, role: str = "recruiter", active: bool = True, first: str = "F"
) -> dict[str, Any]:
    return {"id": rid, "email": email, "firstName": first, "lastName": "L", "role": role, "is_active": active}


def bpoc_app(bpoc: Bpoc) -> Starlette:
    async def directory(request: Request) -> Response:
        bpoc.directory_calls += 1
        bpoc.keys_seen.append(request.headers.get("x-api-key"))
        if request.headers.get("x-api-key") != bpoc.api_key:
            return JSONResponse({"error": "Invalid API key"}, status_code=401)
        if bpoc.directory_status is not None:
            return Response(bpoc.directory_body, status_code=bpoc.directory_status)
        return JSONResponse({"recruiters": bpoc.recruiters})

    async def create(request: Request) -> Response:
        body = await request.json()
        bpoc.create_calls.append(body)
        if request.headers.get("x-api-key") != bpoc.api_key:
            return JSONResponse({"error": "Invalid API key"}, status_code=401)
        if bpoc.create_status is not None:
            return JSONResponse({"error": "refused"}, status_code=bpoc.create_status)
        await asyncio.sleep(0.02)  # let concurrent callers pile up behind the first
        rid = str(uuid.uuid4())
        bpoc.recruiters.append(recruiter(rid, body["email"], role=body["role"], first=body["firstName"]))
        return JSONResponse({"recruiterId": rid}, status_code=201)

    return Starlette(
        routes=[
            Route("/api/v1/agency/recruiters", directory),
            Route("/api/v1/recruiters/create", create, methods=["POST"]),
        ]
    )


@pytest.fixture(scope="module")
def bpoc_server() -> Iterator[tuple[Bpoc, str]]:
    bpoc = Bpoc()
    with serve_in_thread(bpoc_app(bpoc)) as url:
        yield bpoc, url


@pytest.fixture
def bpoc(bpoc_server: tuple[Bpoc, str]) -> Bpoc:
    bpoc_server[0].reset()
    return bpoc_server[0]


@pytest.fixture
def bpoc_url(bpoc_server: tuple[Bpoc, str]) -> str:
    return bpoc_server[1]


def make_settings(bpoc_url: str, **changes: Any) -> Settings:
    base = Settings(
        bpoc_base_url=bpoc_url,
        upstream_timeout=2,
        recruiter_cache_ttl=900,
        recruiter_negative_ttl=60,
        recruiter_sync_interval=0,
        recruiter_stale_ttl=3600,
        recruiter_auto_provision=False,
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture
def directory(bpoc: Bpoc, bpoc_url: str, http: httpx.AsyncClient, timer: FakeTimer) -> RecruiterDirectory:
    return RecruiterDirectory(make_settings(bpoc_url), http, lambda: API_KEY, timer=timer)


def user(email: str | None = "alice@agency.example", **changes: Any) -> Principal:
    fields: dict[str, Any] = {"user_id": "u-1", "email": email, "recruiter_id": None, "role": None}
    fields.update(changes)
    return Principal(**fields)


def closed_port_url() -> str:
    sock = bind_socket()
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


# --- fetch_directory ----------------------------------------------------------------------------------------


async def test_fetch_directory_lists_everyone(bpoc, bpoc_url, http):
    """The whole directory, inactive recruiters included, read with the agency key."""
    bpoc.recruiters.append({"email": "no-id@agency.example"})  # unusable entries are skipped
    bpoc.recruiters.append({"id": "x-1", "email": "legacy@agency.example"})  # no is_active: active
    listed = await fetch_directory(http, bpoc_url, API_KEY, 2)
    assert listed[0] == Recruiter(ALICE_ID, "alice@agency.example", True, "admin", "Alice", "L")
    assert [r.is_active for r in listed] == [True, True, False, True]
    assert bpoc.keys_seen == [API_KEY]


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (500, b"oops", "answered HTTP 500"),
        (200, b"not json", "without a list of recruiters"),
        (200, b'{"recruiters": {}}', "without a list of recruiters"),
    ],
    ids=["500", "bad-json", "not-a-list"],
)
async def test_fetch_directory_failures(bpoc, bpoc_url, http, status, body, message):
    """Any answer that is not a readable directory is ServiceUnavailable with one sentence."""
    bpoc.directory_status, bpoc.directory_body = status, body
    with pytest.raises(ServiceUnavailable, match=message):
        await fetch_directory(http, bpoc_url, API_KEY, 2)


async def test_fetch_directory_bad_key_and_unreachable(bpoc, bpoc_url, http):
    """A refused key and an unreachable BPOC are ServiceUnavailable; the key never appears in the message."""
    with pytest.raises(ServiceUnavailable, match="refused the agency API key") as caught:
        await fetch_directory(http, bpoc_url, "wrong-key-123", 2)
    assert "wrong-key-123" not in caught.value.message
    with pytest.raises(ServiceUnavailable, match="cannot be reached"):
        await fetch_directory(http, closed_port_url(), API_KEY, 2)


# --- resolve: order and matching ----------------------------------------------------------------------------


async def test_session_recruiter_id_wins(bpoc, directory):
    """A recruiter ID carried by the session is used as is; with a session role, BPOC is not asked at all."""
    identity = await directory.resolve(user(recruiter_id="from-session", role="manager"))
    assert identity == Identity("from-session", "manager")
    assert bpoc.directory_calls == 0


async def test_session_recruiter_id_takes_directory_role(bpoc, directory):
    """With a session ID but no session role, resolve needs no directory; role_of asks the directory."""
    assert await directory.resolve(user(recruiter_id="from-session")) == Identity("from-session", None)
    assert await directory.role_of(user(recruiter_id="from-session")) == "admin"


async def test_session_recruiter_id_survives_bpoc_outage(bpoc, directory):
    """With a session ID, a down directory only costs the role, not the request."""
    bpoc.directory_status = 503
    assert await directory.resolve(user(recruiter_id="from-session")) == Identity("from-session", None)


@pytest.mark.parametrize(
    ("email", "session_role", "expected"),
    [
        ("alice@agency.example", None, Identity(ALICE_ID, "admin")),
        ("ALICE@Agency.Example", None, Identity(ALICE_ID, "admin")),
        ("carol@agency.example", None, Identity(CAROL_ID, "recruiter")),
        ("alice@agency.example", "viewer", Identity(ALICE_ID, "viewer")),
    ],
    ids=["exact", "case-insensitive", "mixed-case-in-bpoc", "session-role-wins"],
)
async def test_directory_match(directory, email, session_role, expected):
    """Emails match case-insensitively; the session's role wins over the directory's."""
    assert await directory.resolve(user(email, role=session_role)) == expected


@pytest.mark.parametrize(
    "email", ["dave@agency.example", "nobody@agency.example"], ids=["inactive", "unknown"]
)
async def test_no_recruiter_is_forbidden(directory, email):
    """Inactive and unknown users get a 403 that says what is missing and what to do."""
    with pytest.raises(Forbidden, match="has no BPOC recruiter ID.*ask an agency admin"):
        await directory.resolve(user(email))


async def test_no_email_no_id_is_forbidden(bpoc, directory):
    with pytest.raises(Forbidden, match="neither a BPOC recruiter ID nor an email"):
        await directory.resolve(user(None))
    assert bpoc.directory_calls == 0


# --- caches and single flight -------------------------------------------------------------------------------


async def test_concurrent_misses_make_one_call(bpoc, directory):
    """100 concurrent first requests for 100 fresh users make exactly one directory call."""
    emails = [f"user{i}@agency.example" for i in range(100)]
    bpoc.recruiters += [recruiter(f"id-{i}", email) for i, email in enumerate(emails)]
    identities = await asyncio.gather(*(directory.resolve(user(email)) for email in emails))
    assert [identity.recruiter_id for identity in identities] == [f"id-{i}" for i in range(100)]
    assert bpoc.directory_calls == 1


async def test_positive_cache_ttl(bpoc, directory, timer):
    """Found recruiters are served from the cache until RECRUITER_CACHE_TTL."""
    for _ in range(20):
        await directory.resolve(user())
    assert bpoc.directory_calls == 1
    timer.advance(901)
    await directory.resolve(user())
    assert bpoc.directory_calls == 2


async def test_negative_cache(bpoc, directory, timer):
    """Unknown emails are remembered for the shorter RECRUITER_NEGATIVE_TTL, then asked about again."""
    for _ in range(5):
        with pytest.raises(Forbidden):
            await directory.resolve(user("new@agency.example"))
    assert bpoc.directory_calls == 1
    bpoc.recruiters.append(recruiter("new-id", "new@agency.example"))
    timer.advance(30)
    with pytest.raises(Forbidden):
        await directory.resolve(user("new@agency.example"))
    timer.advance(31)
    assert (await directory.resolve(user("new@agency.example"))).recruiter_id == "new-id"
    assert bpoc.directory_calls == 2


async def test_refresh_replaces_the_cache(bpoc, directory):
    """refresh() loads the whole directory: changes and removals show without waiting for the ttl."""
    assert (await directory.resolve(user())).recruiter_id == ALICE_ID
    new_id = bpoc.recreate("alice@agency.example")
    bpoc.recruiters = [r for r in bpoc.recruiters if r["email"] != "Carol@Agency.example"]
    await directory.refresh()
    assert (await directory.resolve(user())).recruiter_id == new_id
    with pytest.raises(Forbidden):
        await directory.resolve(user("carol@agency.example"))
    assert bpoc.directory_calls == 2


async def test_refresh_clears_negative_entries(bpoc, directory):
    """A recruiter added in BPOC is found after the next refresh, despite an earlier miss."""
    with pytest.raises(Forbidden):
        await directory.resolve(user("late@agency.example"))
    bpoc.recruiters.append(recruiter("late-id", "late@agency.example"))
    await directory.refresh()
    assert (await directory.resolve(user("late@agency.example"))).recruiter_id == "late-id"


async def test_api_key_is_read_on_every_call(bpoc, bpoc_url, http, timer):
    """The key callable is asked each time, so a rotated key is used at once."""
    keys = iter(["old-key", API_KEY])
    directory = RecruiterDirectory(make_settings(bpoc_url), http, lambda: next(keys), timer=timer)
    with pytest.raises(ServiceUnavailable):
        await directory.refresh()
    await directory.refresh()
    assert bpoc.keys_seen == ["old-key", API_KEY]


async def test_run_sync_refreshes_and_survives_failures(bpoc, bpoc_url, http, timer):
    """The background task refreshes every interval and keeps going when BPOC fails."""
    directory = RecruiterDirectory(
        make_settings(bpoc_url, recruiter_sync_interval=0.02), http, lambda: API_KEY, timer=timer
    )
    bpoc.directory_status = 503
    task = asyncio.create_task(directory.run_sync())
    try:
        while bpoc.directory_calls < 2:
            await asyncio.sleep(0.01)
        bpoc.directory_status = None
        while bpoc.directory_calls < 4:
            await asyncio.sleep(0.01)
        assert not task.done()
        calls = bpoc.directory_calls
        assert (await directory.resolve(user())).recruiter_id == ALICE_ID
        assert bpoc.directory_calls - calls <= 1  # served by the sync's snapshot (or one racing sync)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_run_sync_disabled(directory):
    """An interval of 0 turns the background sync off."""
    await asyncio.wait_for(directory.run_sync(), timeout=1)


# --- BPOC down: stale entries -------------------------------------------------------------------------------


async def test_stale_entries_while_bpoc_is_down(bpoc, directory, timer):
    """When BPOC is down, a known user is served the stale entry for up to RECRUITER_STALE_TTL, then 503."""
    await directory.resolve(user())
    bpoc.directory_status = 503
    timer.advance(1000)  # past the cache ttl: a fetch is tried, fails, the stale entry is served
    assert (await directory.resolve(user())).recruiter_id == ALICE_ID
    with pytest.raises(ServiceUnavailable, match="cannot be reached"):
        await directory.resolve(user("never-seen@agency.example"))
    timer.advance(2700)  # 3700 s since BPOC last listed alice
    with pytest.raises(ServiceUnavailable):
        await directory.resolve(user())
    bpoc.directory_status = None
    timer.advance(DIRECTORY_RETRY_AFTER_FAILURE)  # requests do not retry a failed directory at once
    assert (await directory.resolve(user())).recruiter_id == ALICE_ID


async def test_unreachable_bpoc_with_nothing_stale(bpoc_url, http, timer):
    directory = RecruiterDirectory(make_settings(closed_port_url()), http, lambda: API_KEY, timer=timer)
    with pytest.raises(ServiceUnavailable):
        await directory.resolve(user())


# --- role_of and active_ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("principal", "expected"),
    [
        (user(role="viewer"), "viewer"),
        (user(), "admin"),
        (user("CAROL@agency.example"), "recruiter"),
        (user("nobody@agency.example"), None),
        (user(None), None),
    ],
    ids=["session-role", "directory-role", "case-insensitive", "unknown", "no-email"],
)
async def test_role_of(directory, principal, expected):
    """The session's role wins; else the directory's; None when the user is not listed."""
    assert await directory.role_of(principal) == expected


async def test_active_ids(bpoc, directory, timer):
    """Active recruiters' IDs, lowercase, from the latest snapshot; fetched when there is none."""
    bpoc.recruiters.append(recruiter("UPPER-CASE-ID", "upper@agency.example"))
    ids = await directory.active_ids()
    assert ids == frozenset({ALICE_ID, CAROL_ID, "upper-case-id"})
    await directory.active_ids()
    await directory.resolve(user())
    assert bpoc.directory_calls == 1
    bpoc.directory_status = 503
    timer.advance(1000)
    assert await directory.active_ids() == ids  # stale snapshot while BPOC is down
    timer.advance(3000)
    with pytest.raises(ServiceUnavailable):
        await directory.active_ids()


# --- auto-provisioning --------------------------------------------------------------------------------------


@pytest.fixture
def provisioning(bpoc: Bpoc, bpoc_url: str, http: httpx.AsyncClient, timer: FakeTimer) -> RecruiterDirectory:
    settings = make_settings(bpoc_url, recruiter_auto_provision=True)
    return RecruiterDirectory(settings, http, lambda: API_KEY, timer=timer)


async def test_auto_provision_once_under_concurrency(bpoc, provisioning, timer):
    """50 concurrent first requests of an unknown user create the recruiter exactly once."""
    newbie = user("Newbie@Agency.example", first_name="New", last_name="Bie")
    identities = await asyncio.gather(*(provisioning.resolve(newbie) for _ in range(50)))
    assert len({identity.recruiter_id for identity in identities}) == 1
    assert bpoc.create_calls == [
        {"email": "Newbie@Agency.example", "firstName": "New", "lastName": "Bie", "role": "recruiter"}
    ]
    assert identities[0].role == "recruiter"
    await provisioning.resolve(newbie)
    timer.advance(1000)  # past every ttl: the directory now lists the new recruiter
    assert (await provisioning.resolve(newbie)).recruiter_id == identities[0].recruiter_id
    assert len(bpoc.create_calls) == 1


async def test_auto_provision_never_twice_if_directory_lags(bpoc, provisioning, timer):
    """If the directory does not list a recruiter this process created, it is not created again."""
    first = await provisioning.resolve(user("lag@agency.example"))
    bpoc.recruiters = [r for r in bpoc.recruiters if r["email"] != "lag@agency.example"]
    timer.advance(1000)
    assert await provisioning.resolve(user("lag@agency.example")) == first
    assert len(bpoc.create_calls) == 1


@pytest.mark.parametrize(
    ("status", "error"), [(400, Forbidden), (500, ServiceUnavailable)], ids=["refused", "failing"]
)
async def test_auto_provision_failures(bpoc, provisioning, status, error):
    """BPOC refusing to create is a 403; BPOC failing is a 503."""
    bpoc.create_status = status
    with pytest.raises(error):
        await provisioning.resolve(user("x@agency.example"))


# --- resync -------------------------------------------------------------------------------------------------


async def test_resync_finds_recreated_recruiter(bpoc, directory):
    """After BPOC refuses an ID, resync returns the new UUID of the re-created recruiter."""
    old = (await directory.resolve(user())).recruiter_id
    new = bpoc.recreate("alice@agency.example")
    assert await directory.resync(user(), old) == new
    assert (await directory.resolve(user())).recruiter_id == new
    assert bpoc.directory_calls == 2
    assert await directory.resync(user(), old) == new  # a repeat refusal reuses the answer
    assert bpoc.directory_calls == 2


async def test_resync_same_id_is_none(bpoc, directory):
    """If BPOC still lists the same ID there is nothing to replay with."""
    old = (await directory.resolve(user())).recruiter_id
    assert await directory.resync(user(), old) is None


async def test_resync_replaces_a_stale_session_id(bpoc, directory):
    """A session-carried ID that BPOC refused gives way to the directory's for a while."""
    principal = user(recruiter_id="stale-from-session", role="admin")
    assert (await directory.resolve(principal)).recruiter_id == "stale-from-session"
    assert await directory.resync(principal, "stale-from-session") == ALICE_ID
    assert (await directory.resolve(principal)).recruiter_id == ALICE_ID


async def test_resync_when_user_is_gone_or_bpoc_down(bpoc, directory):
    """No recruiter any more, or BPOC down: resync returns None and the pipeline answers with BPOC's error."""
    old = (await directory.resolve(user())).recruiter_id
    bpoc.recruiters = []
    assert await directory.resync(user(), old) is None
    bpoc.directory_status = 503
    assert await directory.resync(user("carol@agency.example"), CAROL_ID) is None
    assert await directory.resync(user(None), "whatever") is None


async def test_resync_provisions_when_enabled(bpoc, provisioning):
    """With auto-provisioning, a recruiter deleted in BPOC is created again on resync."""
    old = (await provisioning.resolve(user())).recruiter_id
    bpoc.recruiters = []
    new = await provisioning.resync(user(), old)
    assert new is not None and new != old
    assert len(bpoc.create_calls) == 1


async def test_resync_with_bpoc_down_does_not_trust_the_refused_entry(bpoc, directory, timer):
    """If the re-sync cannot read the directory, the refused entry is not served as fresh: the next request
    reads the directory again (once the failure backoff has passed) and finds the re-created recruiter."""
    old = (await directory.resolve(user())).recruiter_id
    bpoc.directory_status = 503
    assert await directory.resync(user(), old) is None
    assert bpoc.directory_calls == 2
    bpoc.directory_status = None
    new = bpoc.recreate("alice@agency.example")
    timer.advance(DIRECTORY_RETRY_AFTER_FAILURE)
    assert (await directory.resolve(user())).recruiter_id == new
    assert bpoc.directory_calls == 3


# --- is_active ----------------------------------------------------------------------------------------------


async def test_is_active(bpoc, directory, timer):
    """An ID is active if the latest snapshot lists it as an active recruiter, in any letter case."""
    assert await directory.is_active(ALICE_ID.upper())
    assert not await directory.is_active("0b5a1f0e-0000-4000-8000-0000000da4e0")  # dave: inactive
    assert not await directory.is_active("no-such-id")
    assert bpoc.directory_calls == 1
    bpoc.recruiters = []
    timer.advance(901)  # the snapshot is no longer fresh: read again, as active_ids() does
    assert not await directory.is_active(ALICE_ID)
    assert bpoc.directory_calls == 2


# --- bounds -------------------------------------------------------------------------------------------------


async def test_a_directory_larger_than_the_floor_is_never_evicted_by_its_own_sync(bpoc, directory):
    """Every recruiter of a directory bigger than CACHE_FLOOR is served from one read; when they all leave,
    each is remembered as unknown (none evicted), so none of them costs another read."""
    size = CACHE_FLOOR + 2_000
    emails = [f"r{i}@agency.example" for i in range(size)]
    bpoc.recruiters = [recruiter(f"id-{i}", email) for i, email in enumerate(emails)]
    await directory.refresh()
    for i, email in enumerate(emails):
        assert (await directory.resolve(user(email))).recruiter_id == f"id-{i}"
    bpoc.recruiters = []
    await directory.refresh()
    for email in emails:
        with pytest.raises(Forbidden):
            await directory.resolve(user(email))
    assert bpoc.directory_calls == 2


async def test_a_flood_of_unknown_emails_stays_within_the_bound(bpoc, directory):
    """Unknown emails are remembered up to the bound (CACHE_FLOOR for a small directory); beyond it the
    oldest is forgotten first, so it costs a read again while the newest are still known to be unknown."""
    with pytest.raises(Forbidden):
        await directory.resolve(user("oldest@flood.example"))
    flood = [user(f"u{i}@flood.example") for i in range(CACHE_FLOOR)]
    answers = await asyncio.gather(*(directory.resolve(p) for p in flood), return_exceptions=True)
    assert all(isinstance(answer, Forbidden) for answer in answers)
    assert bpoc.directory_calls == 2  # one read for the first, one shared by the whole flood
    for principal in (flood[-1], flood[0]):
        with pytest.raises(Forbidden):
            await directory.resolve(principal)
    assert bpoc.directory_calls == 2
    with pytest.raises(Forbidden):
        await directory.resolve(user("oldest@flood.example"))
    assert bpoc.directory_calls == 3


async def test_provisioned_recruiter_unlisted_by_a_lagging_directory_costs_no_reads(
    bpoc, provisioning, timer
):
    """A recruiter this process created is served from memory while the directory does not list it yet."""
    first = await provisioning.resolve(user("lag@agency.example"))
    calls = bpoc.directory_calls
    bpoc.recruiters = [r for r in bpoc.recruiters if r["email"] != "lag@agency.example"]
    await provisioning.refresh()
    for _ in range(3):
        timer.advance(100)  # past the negative ttl each time
        assert await provisioning.resolve(user("lag@agency.example")) == first
    assert bpoc.directory_calls == calls + 1
    assert len(bpoc.create_calls) == 1


async def test_cache_ttl_zero_reads_the_directory_for_every_lookup(bpoc, bpoc_url, http, timer):
    """RECRUITER_CACHE_TTL=0: nothing is served from memory, yet each read finds the user it was made for."""
    directory = RecruiterDirectory(
        make_settings(bpoc_url, recruiter_cache_ttl=0), http, lambda: API_KEY, timer=timer
    )
    for calls in (1, 2):
        assert (await directory.resolve(user())).recruiter_id == ALICE_ID
        assert bpoc.directory_calls == calls
