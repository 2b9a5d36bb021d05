"""The sandbox BPOC and the fake portal over real sockets: the upstreams every other test relies on."""

from __future__ import annotations

import gzip
import hashlib
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import jwt
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from proxy.sandbox.aids import GZIP_PAYLOAD
from proxy.sandbox.bpoc import BpocState, create_bpoc_app, download_chunks
from proxy.sandbox.portal import PortalState, create_portal_app
from proxy.sandbox.seed import (
    ALICE_ID,
    BOB_ID,
    DEMO_APPLICATION_ID,
    DEMO_JOB_ID,
    IVAN_ID,
    MALLORY_ID,
    MARIA_ID,
)
from proxy.sandbox.server import serve_in_thread
from proxy.sandbox.tokens import SigningKey, mint_alg_none, mint_hs, mint_with_key

API_KEY = "sandbox-test-key"
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


class Swappable:
    """One server per module, each test swapping in an app over fresh state: stopping uvicorn takes ~0.2 s."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def bpoc_server() -> Iterator[tuple[Swappable, str]]:
    upstream = Swappable(create_bpoc_app(BpocState.seeded(API_KEY)))
    with serve_in_thread(upstream) as url:
        yield upstream, url


@pytest.fixture
def state(bpoc_server: tuple[Swappable, str]) -> BpocState:
    state = BpocState.seeded(API_KEY)
    bpoc_server[0].app = create_bpoc_app(state)
    return state


@pytest.fixture
def base_url(state: BpocState, bpoc_server: tuple[Swappable, str]) -> str:
    return bpoc_server[1]


@pytest.fixture
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, headers={"X-API-Key": API_KEY}, timeout=5) as client:
        yield client


# The API key


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}], ids=["missing", "wrong"])
def test_api_key_is_required(base_url: str, headers: dict[str, str]) -> None:
    """Every /api/v1 call without the agency's key is refused with BPOC's 401 body."""
    with httpx.Client(base_url=base_url) as client:
        response = client.get("/api/v1/agency/recruiters", headers=headers)
    assert response.status_code == 401
    assert response.json() == {"error": "Invalid API key", "status": 401}


def test_a_second_api_key_header_fails(client: httpx.Client) -> None:
    """A client's own X-API-Key forwarded next to the proxy's is joined, as Node does, and refused."""
    headers = [("X-API-Key", "client-key"), ("X-API-Key", API_KEY)]
    response = client.get("/api/v1/agency/recruiters", headers=httpx.Headers(headers))
    assert response.status_code == 401


# Attribution

ACTIONS = [
    ("POST", "/api/v1/jobs/create", {"title": "Dev"}, "postedBy", "job_created", 201),
    ("POST", f"/api/v1/jobs/{DEMO_JOB_ID}/approve", {}, "approvedBy", "job_approved", 200),
    ("POST", f"/api/v1/applications/{DEMO_APPLICATION_ID}/release", {"notes": "n"}, "releasedBy", None, 200),
    ("POST", f"/api/v1/applications/{DEMO_APPLICATION_ID}/reject", {"reason": "r"}, "rejectedBy", None, 200),
    ("POST", "/api/v1/interviews", {"applicationId": DEMO_APPLICATION_ID}, "scheduledBy", None, 201),
    ("POST", "/api/v1/onboarding", {"tasks": ["id"]}, "createdBy", "onboarding_created", 201),
    ("PUT", f"/api/v1/onboarding/{UNKNOWN_ID}", {"action": "approve"}, "reviewedBy", None, 200),
]
ACTION_IDS = ["create-job", "approve-job", "release", "reject", "interview", "onboarding", "review-task"]


@pytest.mark.parametrize(("method", "path", "body", "field", "action", "status"), ACTIONS, ids=ACTION_IDS)
def test_each_action_is_logged_with_its_recruiter(
    client: httpx.Client,
    state: BpocState,
    method: str,
    path: str,
    body: dict[str, object],
    field: str,
    action,
    status,
) -> None:
    """The attribution field's recruiter becomes the audit entry's performed_by_id."""
    response = client.request(method, path, json={**body, field: BOB_ID})
    assert response.status_code == status, response.text
    [entry] = state.activity_log()
    assert entry.performed_by_id == BOB_ID
    assert entry.performed_by_type == "recruiter"
    assert action is None or entry.action_type == action


@pytest.mark.parametrize(("method", "path", "body", "field", "action", "status"), ACTIONS, ids=ACTION_IDS)
def test_missing_attribution_is_accepted_but_visible(
    client: httpx.Client,
    state: BpocState,
    method: str,
    path: str,
    body: dict[str, object],
    field: str,
    action,
    status,
) -> None:
    """The guide calls the fields optional: BPOC accepts the call and logs performed_by_id null."""
    assert client.request(method, path, json=body).status_code == status
    assert [entry.performed_by_id for entry in state.activity_log()] == [None]
    assert client.get("/api/v1/activity").json()["activity"][0]["performed_by_id"] is None


def test_a_recruiter_of_another_agency_is_forbidden(client: httpx.Client, state: BpocState) -> None:
    response = client.post("/api/v1/jobs/create", json={"title": "Dev", "postedBy": MALLORY_ID})
    assert response.status_code == 403
    assert response.json() == {"error": "Recruiter does not belong to your agency", "status": 403}
    assert state.activity_log() == []


@pytest.mark.parametrize(
    "value", [UNKNOWN_ID, IVAN_ID, "bob@agency.example", 42], ids=["unknown", "inactive", "email", "int"]
)
def test_an_invalid_recruiter_is_a_400(client: httpx.Client, value: object) -> None:
    response = client.post("/api/v1/interviews", json={"scheduledBy": ALICE_ID, "interviewerId": value})
    assert response.status_code == 400
    assert response.json() == {
        "error": "Invalid recruiter ID",
        "message": f"Invalid recruiter ID: {value}",
        "status": 400,
    }


def test_an_upper_case_uuid_is_accepted_and_stored_lower_case(client: httpx.Client) -> None:
    job = client.post("/api/v1/jobs/create", json={"title": "Dev", "postedBy": BOB_ID.upper()}).json()
    assert client.get(f"/api/v1/jobs/{job['id']}").json()["postedBy"] == BOB_ID


def test_recreating_a_recruiter_invalidates_the_old_uuid(client: httpx.Client, state: BpocState) -> None:
    """The proxy's re-sync path: the old UUID gives "Invalid recruiter", the new one works."""
    new = state.recreate_recruiter("bob@agency.example")
    assert new.id != BOB_ID and new.email == "bob@agency.example"
    stale = client.post("/api/v1/jobs/create", json={"postedBy": BOB_ID})
    assert stale.status_code == 400 and "Invalid recruiter" in stale.json()["message"]
    assert client.post("/api/v1/jobs/create", json={"postedBy": new.id}).status_code == 201


def test_a_deactivated_recruiter_is_refused(client: httpx.Client, state: BpocState) -> None:
    state.deactivate("maria@agency.example")
    assert (
        client.post(f"/api/v1/jobs/{DEMO_JOB_ID}/approve", json={"approvedBy": MARIA_ID}).status_code == 400
    )


def test_a_job_shows_who_posted_and_approved_it(client: httpx.Client) -> None:
    job = client.post("/api/v1/jobs/create", json={"title": "Dev", "salary": 1.10, "postedBy": BOB_ID}).json()
    client.post(f"/api/v1/jobs/{job['id']}/approve", json={"approvedBy": ALICE_ID}).raise_for_status()
    fetched = client.get(f"/api/v1/jobs/{job['id']}").json()
    assert (fetched["postedBy"], fetched["approvedBy"], fetched["status"]) == (BOB_ID, ALICE_ID, "approved")
    assert job["id"] in [listed["id"] for listed in client.get("/api/v1/jobs").json()["jobs"]]
    assert client.get(f"/api/v1/jobs/{UNKNOWN_ID}").status_code == 404


def test_activity_can_be_filtered(client: httpx.Client) -> None:
    client.post("/api/v1/jobs/create", json={"postedBy": BOB_ID}).raise_for_status()
    client.post("/api/v1/jobs/create", json={"postedBy": ALICE_ID}).raise_for_status()
    entries = client.get("/api/v1/activity", params={"performed_by_id": ALICE_ID}).json()["activity"]
    assert [(e["action_type"], e["performed_by_id"]) for e in entries] == [("job_created", ALICE_ID)]
    assert set(entries[0]) == {
        "action_type",
        "performed_by_type",
        "performed_by_id",
        "description",
        "timestamp",
        "metadata",
    }


@pytest.mark.parametrize(
    "body", [b"{not json", b"[1, 2]", b"\xff\xfe"], ids=["malformed", "array", "not-utf8"]
)
def test_a_body_that_is_not_a_json_object_is_a_400(client: httpx.Client, body: bytes) -> None:
    response = client.post("/api/v1/jobs/create", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"] == "Invalid JSON body"


# The recruiter directory


def test_agency_recruiters_lists_only_our_agency(client: httpx.Client) -> None:
    recruiters = client.get("/api/v1/agency/recruiters").json()["recruiters"]
    by_id = {recruiter["id"]: recruiter for recruiter in recruiters}
    assert set(by_id) == {ALICE_ID, BOB_ID, MARIA_ID, IVAN_ID}
    assert by_id[IVAN_ID]["is_active"] is False
    assert by_id[ALICE_ID] == {
        "id": ALICE_ID,
        "email": "alice@agency.example",
        "firstName": "Alice",
        "lastName": "Admin",
        "role": "admin",
        "is_active": True,
    }


def test_create_recruiter_then_duplicate(client: httpx.Client, state: BpocState) -> None:
    body = {"email": "new@agency.example", "firstName": "New", "lastName": "Person", "role": "manager"}
    created = client.post("/api/v1/recruiters/create", json=body)
    assert created.status_code == 201
    recruiter_id = created.json()["recruiterId"]
    assert state.recruiter_by_id(recruiter_id) is not None
    assert client.post("/api/v1/recruiters/create", json=body).status_code == 409
    assert client.post("/api/v1/jobs/create", json={"postedBy": recruiter_id}).status_code == 201
    assert state.calls["recruiters/create"] == 2


def test_team_invite_returns_a_token(client: httpx.Client) -> None:
    response = client.post(
        "/api/v1/team/invite", json={"email": "j@agency.example", "name": "Jane", "role": "recruiter"}
    )
    assert response.status_code == 201
    assert response.json()["inviteToken"]


def test_switches_down_and_delay(client: httpx.Client, state: BpocState) -> None:
    state.down = True
    response = client.get("/api/v1/agency/recruiters")
    assert response.status_code == 503 and response.json()["status"] == 503
    state.down, state.delay = False, 300.0
    with pytest.raises(httpx.ReadTimeout):  # the client gives up long before the sandbox answers
        client.get("/api/v1/agency/recruiters", timeout=0.5)
    state.delay = 0.0
    assert client.get("/api/v1/agency/recruiters").status_code == 200
    assert state.calls["agency/recruiters"] == 3


def test_requests_are_recorded_as_received(client: httpx.Client, state: BpocState) -> None:
    client.post("/api/v1/jobs/create?x=1", json={"postedBy": BOB_ID}, headers={"X-Trace": "t"})
    client.get("/_sandbox/echo/a%2Fb?q=%20")
    job, echo = state.requests
    assert (job.method, job.path, job.query_string) == ("POST", "/api/v1/jobs/create", "x=1")
    assert job.header("x-trace") == "t" and job.header("x-api-key") == API_KEY
    assert job.body == f'{{"postedBy":"{BOB_ID}"}}'.encode()
    assert (echo.path, echo.raw_path, echo.query_string) == (
        "/_sandbox/echo/a/b",
        b"/_sandbox/echo/a%2Fb",
        "q=%20",
    )
    state.reset_requests()
    assert state.requests == [] and not state.calls


# The /_sandbox/ aids


def test_echo_reports_what_it_received(client: httpx.Client) -> None:
    response = client.request("PATCH", "/_sandbox/echo/x/y?a=1&a=2", content=b"hello")
    echoed = response.json()
    assert (echoed["method"], echoed["path"], echoed["query_string"]) == (
        "PATCH",
        "/_sandbox/echo/x/y",
        "a=1&a=2",
    )
    assert echoed["body_size"] == 5 and echoed["body_sha256"] == hashlib.sha256(b"hello").hexdigest()
    assert ["x-api-key", "<redacted>"] in echoed["headers"]  # the echo never shows the key


def test_echo_answers_any_method_and_head_without_body(client: httpx.Client) -> None:
    assert client.request("PROPFIND", "/_sandbox/echo/dav").json()["method"] == "PROPFIND"
    head = client.head("/_sandbox/echo/h")
    assert head.status_code == 200 and head.content == b""


def test_download_streams_the_requested_size(client: httpx.Client) -> None:
    size = 5 * 64 * 1024 + 123
    digest, received = hashlib.sha256(), 0
    with client.stream("GET", "/_sandbox/download", params={"size": size}) as response:
        assert response.headers["content-length"] == str(size)
        for chunk in response.iter_raw():
            digest.update(chunk)
            received += len(chunk)
    assert received == size
    assert digest.hexdigest() == hashlib.sha256(b"".join(download_chunks(size))).hexdigest()


def test_download_chunked_has_no_content_length(client: httpx.Client) -> None:
    response = client.get("/_sandbox/download", params={"size": 1000, "chunked": 1})
    assert response.headers.get("transfer-encoding") == "chunked" and len(response.content) == 1000


def test_download_gzip_sends_encoded_bytes(client: httpx.Client) -> None:
    with client.stream("GET", "/_sandbox/download", params={"gzip": 1}) as response:
        raw = b"".join(response.iter_raw())
    assert response.headers["content-encoding"] == "gzip"
    assert httpx.Response(200, content=gzip.decompress(raw)).json() == GZIP_PAYLOAD


def test_upload_counts_bytes_without_keeping_them(client: httpx.Client, state: BpocState) -> None:
    payload = b"x" * (3 * 1024 * 1024 + 7)
    response = client.put("/_sandbox/upload", content=iter([payload[:1000], payload[1000:]]))
    assert response.json() == {"size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    assert state.requests[-1].body == b""


def test_status_with_retry_after_and_redirect_not_followed(client: httpx.Client) -> None:
    limited = client.post("/_sandbox/status/429", params={"retry_after": 7})
    assert (limited.status_code, limited.headers["retry-after"], limited.json()) == (
        429,
        "7",
        {"status": 429},
    )
    assert client.get("/_sandbox/status/204").content == b""
    redirect = client.get("/_sandbox/redirect")
    assert (redirect.status_code, redirect.headers["location"]) == (302, "/_sandbox/echo/redirected")


def test_slow_and_slow_body(client: httpx.Client, state: BpocState) -> None:
    """/slow holds the whole answer, /slow-body only its body, /gated-body its body until the test says so: the
    client's own short timeout shows what has not arrived, an event what has."""
    with pytest.raises(httpx.ReadTimeout):
        client.get("/_sandbox/slow", params={"seconds": 300}, timeout=0.5)
    assert client.get("/_sandbox/slow", params={"seconds": 0}).json() == {"slept": 0.0}
    with client.stream("GET", "/_sandbox/slow-body", params={"seconds": 300}, timeout=0.5) as response:
        assert response.status_code == 200  # the head came at once
        with pytest.raises(httpx.ReadTimeout):
            response.read()
    with client.stream("GET", "/_sandbox/gated-body", timeout=10) as response:
        assert response.status_code == 200
        state.body_gate.set()
        assert response.read()


def test_hop_by_hop_headers_reach_the_wire(base_url: str) -> None:
    """uvicorn writes the hop-by-hop headers as given, so a proxy test sees them arrive and must strip."""
    address = urlsplit(base_url)
    with socket.create_connection((address.hostname, address.port), timeout=5) as sock:
        sock.sendall(b"GET /_sandbox/hop HTTP/1.1\r\nHost: sandbox\r\n\r\n")
        received = b""
        while b"\r\n\r\n" not in received:
            received += sock.recv(65536)
    head = received.split(b"\r\n\r\n")[0].decode().lower()
    for line in (
        "keep-alive: timeout=5",
        "proxy-authenticate: x",
        "x-private: secret",
        "connection: x-private",
    ):
        assert line in head.split("\r\n")


def test_unknown_paths_are_json_404s(client: httpx.Client, state: BpocState) -> None:
    assert client.get("/api/v1/nothing").json()["status"] == 404
    assert client.delete("/elsewhere").status_code == 404
    assert [r.path for r in state.requests] == ["/api/v1/nothing", "/elsewhere"]


# The portal


@pytest.fixture(scope="module")
def keys() -> list[SigningKey]:
    return [SigningKey.generate("RS256"), SigningKey.generate("ES256"), SigningKey.generate("EdDSA")]


@pytest.fixture(scope="module")
def portal_server() -> Iterator[tuple[Swappable, str]]:
    upstream = Swappable(create_portal_app(PortalState()))
    with serve_in_thread(upstream) as url:
        yield upstream, url


@pytest.fixture
def portal(
    keys: list[SigningKey], portal_server: tuple[Swappable, str]
) -> Iterator[tuple[PortalState, httpx.Client]]:
    state = PortalState(keys)
    state.add_session("good", user_id="u1", email="bob@agency.example", recruiter_id=BOB_ID, first_name="Bob")
    portal_server[0].app = create_portal_app(state)
    with httpx.Client(base_url=portal_server[1], timeout=5) as client:
        yield state, client


def test_introspection_by_bearer_or_cookie(portal: tuple[PortalState, httpx.Client]) -> None:
    state, client = portal
    good = client.get("/session", headers={"Authorization": "Bearer good"})
    assert good.json() == {
        "userId": "u1",
        "email": "bob@agency.example",
        "role": "recruiter",
        "bpocRecruiterId": BOB_ID,
        "firstName": "Bob",
    }
    assert client.get("/session", headers={"Cookie": "portal_session=good"}).status_code == 200
    assert state.calls["session"] == 2


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Basic good"},
        {"Cookie": "portal_session=nope"},
    ],
    ids=["none", "unknown", "not-bearer", "unknown-cookie"],
)
def test_introspection_refuses_unknown_sessions(
    portal: tuple[PortalState, httpx.Client], headers: dict[str, str]
) -> None:
    _, client = portal
    response = client.get("/session", headers=headers)
    assert response.status_code == 401 and "error" in response.json()


def test_portal_down(portal: tuple[PortalState, httpx.Client]) -> None:
    state, client = portal
    state.down = True
    assert client.get("/session", headers={"Authorization": "Bearer good"}).status_code == 503
    assert client.get("/.well-known/jwks.json").status_code == 503


@pytest.mark.parametrize("index", [0, 1, 2], ids=["RS256", "ES256", "EdDSA"])
def test_jwks_verifies_a_token_minted_with_the_key(
    portal: tuple[PortalState, httpx.Client], keys: list[SigningKey], index: int
) -> None:
    state, client = portal
    key = keys[index]
    token = mint_with_key(key, sub="u1", email="bob@agency.example", recruiter_id=BOB_ID, role="admin")
    published = {jwk["kid"]: jwk for jwk in client.get("/.well-known/jwks.json").json()["keys"]}
    assert state.calls["jwks"] == 1
    jwk = jwt.PyJWK(published[jwt.get_unverified_header(token)["kid"]])
    claims = jwt.decode(token, jwk.key, algorithms=[key.alg])
    assert (claims["sub"], claims["bpoc_recruiter_id"], claims["role"]) == ("u1", BOB_ID, "admin")


def test_rotation_adds_and_drops_kids(
    portal: tuple[PortalState, httpx.Client], keys: list[SigningKey]
) -> None:
    state, client = portal
    new = state.rotate("ES256")
    kids = [jwk["kid"] for jwk in client.get("/.well-known/jwks.json").json()["keys"]]
    assert kids == [*(key.kid for key in keys), new.kid]
    newest = state.rotate("RS256", drop_old=True)
    assert [jwk["kid"] for jwk in client.get("/.well-known/jwks.json").json()["keys"]] == [newest.kid]


# Tokens


def test_mint_hs_claims() -> None:
    token = mint_hs(
        "s" * 32,
        sub="u1",
        email="e@x",
        first_name="A",
        last_name="B",
        iss="portal",
        aud="proxy",
        extra={"tenant": "t"},
    )
    claims = jwt.decode(token, "s" * 32, algorithms=["HS256"], audience="proxy", issuer="portal")
    assert claims["given_name"] == "A" and claims["family_name"] == "B" and claims["tenant"] == "t"
    assert claims["exp"] - claims["iat"] == 3600
    assert "bpoc_recruiter_id" not in claims


def test_mint_hs_expired_and_without_exp() -> None:
    expired = mint_hs("s" * 32, sub="u1", email="e@x", exp_in=-10)
    with pytest.raises(jwt.ExpiredSignatureError):
        jwt.decode(expired, "s" * 32, algorithms=["HS256"])
    forever = mint_hs("s" * 64, alg="HS512", sub="u1", email="e@x", exp_in=None)
    assert "exp" not in jwt.decode(forever, "s" * 64, algorithms=["HS512"])


def test_alg_none_token_is_unsigned() -> None:
    token = mint_alg_none(sub="u1", email="e@x", alg="None")
    assert token.endswith(".") and jwt.get_unverified_header(token)["alg"] == "None"
    with pytest.raises(jwt.InvalidTokenError):
        jwt.decode(token, "s" * 32, algorithms=["HS256"])
