"""Who is calling, end to end: every forwarded request needs a verified portal session, and every attributed one a
BPOC recruiter ID, found in the session, in BPOC's directory, or (when allowed) created.

The proxy runs on uvicorn in front of the BPOC sandbox (and, for JWKS and introspection, the fake portal), all on
real loopback sockets. Every response any test here receives is checked for the agency key by a client hook.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy import jwks as jwks_module
from proxy.app import create_app
from proxy.protocol import SERVER_OPTIONS
from proxy.sandbox.bpoc import create_bpoc_app
from proxy.sandbox.portal import PortalState, create_portal_app
from proxy.sandbox.seed import ALICE_ID, BOB_ID, BpocState
from proxy.sandbox.server import bind_socket, serve_in_thread
from proxy.sandbox.tokens import SigningKey, mint_alg_none, mint_hs, mint_with_key
from proxy.settings import Settings

from .conftest import API_KEY, JWT_SECRET, FakeTimer, ProxyFactory, auth, base_env, token_for

JOBS = "/api/v1/jobs/create"
ISSUER = "https://portal.agency.example"
AUDIENCE = "bpoc-proxy"
BOB = "bob@agency.example"
NO_RECRUITER_ID = "has no BPOC recruiter ID"


# --- helpers ------------------------------------------------------------------------------------------------


def _assert_no_api_key(response: httpx.Response) -> None:
    # Booleans first, so that a failure report never prints the key itself.
    in_body = API_KEY in response.text
    assert not in_body, "the agency key leaked into a response body"
    for name, value in response.headers.multi_items():
        in_header = API_KEY in value
        assert not in_header, f"the agency key leaked into the {name} response header"


def _check_sync(response: httpx.Response) -> None:
    response.read()
    _assert_no_api_key(response)


async def _check_async(response: httpx.Response) -> None:
    await response.aread()
    _assert_no_api_key(response)


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    """A client that fails the test if any response carries the agency key."""
    with httpx.Client(timeout=30, trust_env=False, event_hooks={"response": [_check_sync]}) as c:
        yield c


def async_client() -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    return httpx.AsyncClient(
        timeout=30, trust_env=False, limits=limits, event_hooks={"response": [_check_async]}
    )


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for a condition"
        time.sleep(0.01)


def post_job(
    client: httpx.Client, url: str, headers: dict[str, str], title: str = "Recruiter"
) -> httpx.Response:
    return client.post(url + JOBS, headers=headers, json={"title": title})


def bodies_received(bpoc_state: BpocState) -> list[dict[str, Any]]:
    """The JSON bodies of the jobs/create requests the sandbox received, in order."""
    return [json.loads(request.body) for request in bpoc_state.requests_to(JOBS)]


@dataclass
class Stack:
    """A sandbox BPOC and a proxy in front of it, shared by the tests of one group (module scope)."""

    url: str
    bpoc: BpocState
    portal: PortalState | None = None

    def fresh(self) -> Stack:
        self.bpoc.reset_requests()
        if self.portal is not None:
            self.portal.calls.clear()
        return self


@contextmanager
def running_stack(
    env_for: Callable[[str], dict[str, str]], portal: PortalState | None = None
) -> Iterator[Stack]:
    """Serve a seeded sandbox and a proxy configured by ``env_for(bpoc_url)``, once its start-up sync arrived."""
    state = BpocState.seeded(API_KEY)
    with serve_in_thread(create_bpoc_app(state)) as bpoc_url:
        app = create_app(Settings.from_environ(env_for(bpoc_url)))
        with serve_in_thread(app, **SERVER_OPTIONS) as url:
            wait_for(lambda: state.calls["agency/recruiters"] >= 1)
            yield Stack(url, state, portal)


def start_warm(
    start_proxy: ProxyFactory, bpoc_state: BpocState, client: httpx.Client, env: dict[str, str] | None = None
) -> str:
    """A proxy whose start-up directory sync has finished (Bob is cached); the sandbox's log is then cleared."""
    url = start_proxy(env)
    wait_for(lambda: bpoc_state.calls["agency/recruiters"] >= 1)
    # An attributed request joins (or follows) the start-up sync, so once it is answered the cache is filled.
    assert post_job(client, url, auth(), title="warm-up").status_code == 201
    bpoc_state.reset_requests()
    return url


def start_before_bob_joins(start_proxy: ProxyFactory, bpoc_state: BpocState, client: httpx.Client) -> str:
    """A proxy whose start-up sync ran before Bob was in BPOC: his first request is a cache miss.

    The sandbox's log is cleared once Bob has been added back (with his seeded ID).
    """
    with bpoc_state.lock:
        bob = bpoc_state.recruiters.pop(BOB_ID)
    url = start_proxy()
    wait_for(lambda: bpoc_state.calls["agency/recruiters"] >= 1)
    assert post_job(client, url, auth("alice@agency.example"), title="warm-up").status_code == 201
    bpoc_state.add_recruiter(bob.email, bob.first_name, bob.last_name, role=bob.role, id=bob.id)
    bpoc_state.reset_requests()
    return url


def assert_refusal(response: httpx.Response, status: int, phrase: str) -> dict[str, Any]:
    """A proxy refusal: JSON with the status, one sentence containing ``phrase``, and the request id."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert phrase in body["error"]
    assert body["error"].endswith(".")
    assert body["status"] == status
    assert body["requestId"] == response.headers["x-request-id"]
    return body


def assert_unauthenticated(response: httpx.Response, phrase: str, token: str | None) -> None:
    assert_refusal(response, 401, phrase)
    assert response.headers["www-authenticate"].startswith("Bearer")
    if token:
        assert token not in response.text


# --- every forwarded request needs a session ----------------------------------------------------------------


def _hs(**options: Any) -> str:
    claims: dict[str, Any] = {"sub": "bob", "email": BOB, "iss": ISSUER, "aud": AUDIENCE}
    claims.update(options)
    return mint_hs(JWT_SECRET, **claims)


REFUSED_SESSIONS = [
    pytest.param(None, "carries no portal session", id="no-session"),
    pytest.param(lambda: "not-a-jwt-at-all", "malformed", id="garbage"),
    pytest.param(lambda: _hs(exp_in=-3600), "has expired", id="expired"),
    pytest.param(
        lambda: mint_hs(
            "another-portal-secret-0123456789abcdef0123", sub="bob", email=BOB, iss=ISSUER, aud=AUDIENCE
        ),
        "signature is invalid",
        id="wrong-signature",
    ),
    pytest.param(lambda: _hs(aud="some-other-service"), "another audience", id="wrong-audience"),
    pytest.param(lambda: _hs(iss="https://evil.example"), "another issuer", id="wrong-issuer"),
    pytest.param(
        lambda: mint_alg_none(sub="bob", email=BOB, iss=ISSUER, aud=AUDIENCE, recruiter_id=BOB_ID),
        "unsigned (alg none)",
        id="alg-none",
    ),
    pytest.param(
        lambda: mint_alg_none(alg="NONE", sub="bob", email=BOB, iss=ISSUER, aud=AUDIENCE),
        "unsigned (alg none)",
        id="alg-NONE",
    ),
]


@pytest.fixture(scope="module")
def strict_stack() -> Iterator[Stack]:
    """A proxy requiring an issuer and an audience."""
    with running_stack(
        lambda bpoc: base_env(bpoc, PORTAL_JWT_ISSUER=ISSUER, PORTAL_JWT_AUDIENCE=AUDIENCE)
    ) as stack:
        yield stack


@pytest.fixture
def strict(strict_stack: Stack) -> Stack:
    return strict_stack.fresh()


@pytest.mark.parametrize(("make_token", "phrase"), REFUSED_SESSIONS)
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/v1/jobs"), ("POST", JOBS)],
    ids=["pass-through", "rule-route"],
)
def test_bad_session_is_401_and_nothing_is_forwarded(
    strict: Stack,
    client: httpx.Client,
    make_token: Callable[[], str] | None,
    phrase: str,
    method: str,
    path: str,
) -> None:
    """A missing or unverifiable session gets 401 JSON with WWW-Authenticate: Bearer, and BPOC receives nothing."""
    token = make_token() if make_token else None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = {"title": "x"} if method == "POST" else None
    response = client.request(method, strict.url + path, headers=headers, json=body)
    assert_unauthenticated(response, phrase, token)
    assert strict.bpoc.requests == []


def test_good_session_passes_the_strict_proxy(strict: Stack, client: httpx.Client) -> None:
    """The issuer and audience checks refuse only wrong tokens: the right ones are forwarded and attributed."""
    response = post_job(client, strict.url, {"Authorization": f"Bearer {_hs()}"})
    assert response.status_code == 201
    assert response.json()["postedBy"] == BOB_ID
    assert bodies_received(strict.bpoc) == [{"title": "Recruiter", "postedBy": BOB_ID}]


def test_client_request_id_is_kept_on_a_401(strict: Stack, client: httpx.Client) -> None:
    """A refusal carries the client's own X-Request-Id, in the header and in the body."""
    response = client.get(strict.url + "/api/v1/jobs", headers={"X-Request-Id": "trace-42"})
    body = assert_refusal(response, 401, "no portal session")
    assert body["requestId"] == "trace-42"


PUBLIC_RULES = """\
unlisted: forward
public:
  - GET /api/v1/jobs
  - /_sandbox/echo/open
rules:
  - match: POST /api/v1/jobs/create
    set: {postedBy: recruiter}
"""


@pytest.fixture(scope="module")
def public_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A proxy with a custom rules file that lists public paths."""
    rules = tmp_path_factory.mktemp("public") / "rules.yaml"
    rules.write_text(PUBLIC_RULES)
    with running_stack(lambda bpoc: base_env(bpoc, PROXY_RULES=str(rules))) as stack:
        yield stack


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/api/v1/jobs", 200),
        ("GET", "/_sandbox/echo/open", 200),
        ("POST", "/_sandbox/echo/open", 200),
        ("POST", "/api/v1/jobs", 401),
        ("GET", "/api/v1/jobs/f2367e49-d92b-41e9-bb5a-5e03136cc01b", 401),
        ("POST", JOBS, 401),
        ("GET", "/_sandbox/echo/closed", 401),
    ],
    ids=[
        "public-method-path",
        "public-any-method-get",
        "public-any-method-post",
        "other-method-needs-session",
        "longer-path-needs-session",
        "rule-needs-session",
        "unlisted-needs-session",
    ],
)
def test_public_paths_need_no_session(
    public_stack: Stack, client: httpx.Client, method: str, path: str, status: int
) -> None:
    """Only the paths (and methods) listed under public: are forwarded without a session."""
    bpoc = public_stack.fresh().bpoc
    response = client.request(method, public_stack.url + path, content=b"{}" if method == "POST" else None)
    assert response.status_code == status, response.text
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert bpoc.requests == []
    else:
        assert [request.path for request in bpoc.requests] == [path]
        assert bpoc.requests[0].header("x-api-key") == API_KEY


# --- header or cookie -----------------------------------------------------------------------------------------


def test_session_in_a_cookie(
    start_proxy: ProxyFactory, bpoc_url: str, client: httpx.Client, bpoc_state: BpocState
) -> None:
    """With PORTAL_SESSION_COOKIE set, a browser's cookie session is verified and attributed."""
    url = start_proxy(base_env(bpoc_url, PORTAL_SESSION_COOKIE="portal_session"))
    cookie = f"theme=dark; portal_session={token_for(BOB)}"
    response = client.post(url + JOBS, headers={"Cookie": cookie}, json={"title": "From the browser"})
    assert response.status_code == 201
    assert bodies_received(bpoc_state)[-1]["postedBy"] == BOB_ID
    assert bpoc_state.requests_to(JOBS)[-1].header("cookie") == "theme=dark"


def test_header_wins_over_cookie(
    start_proxy: ProxyFactory, bpoc_url: str, client: httpx.Client, bpoc_state: BpocState
) -> None:
    """When both carry a session, the header's user is the caller."""
    url = start_proxy(base_env(bpoc_url, PORTAL_SESSION_COOKIE="portal_session"))
    headers = {**auth(BOB), "Cookie": f"portal_session={token_for('alice@agency.example')}"}
    response = post_job(client, url, headers)
    assert response.status_code == 201
    assert bodies_received(bpoc_state)[-1]["postedBy"] == BOB_ID


def test_cookie_is_ignored_when_not_configured(proxy_url: str, client: httpx.Client) -> None:
    """Without PORTAL_SESSION_COOKIE, a session cookie is not a session."""
    response = client.post(
        proxy_url + JOBS, headers={"Cookie": f"portal_session={token_for(BOB)}"}, json={"title": "x"}
    )
    assert_unauthenticated(response, "no portal session", None)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (lambda: {"X-Portal-Session": token_for(BOB)}, 201),
        (lambda: auth(BOB), 401),
    ],
    ids=["custom-header", "authorization-not-read"],
)
def test_custom_session_header(
    start_proxy: ProxyFactory,
    bpoc_url: str,
    client: httpx.Client,
    bpoc_state: BpocState,
    headers: Callable[[], dict[str, str]],
    status: int,
) -> None:
    """PORTAL_SESSION_HEADER names the one header read (raw token, no Bearer); it never reaches BPOC."""
    url = start_proxy(base_env(bpoc_url, PORTAL_SESSION_HEADER="X-Portal-Session"))
    response = post_job(client, url, headers())
    assert response.status_code == status, response.text
    if status == 201:
        received = bpoc_state.requests_to(JOBS)[-1]
        assert json.loads(received.body)["postedBy"] == BOB_ID
        assert received.header("x-portal-session") is None
    else:
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert bpoc_state.requests_to(JOBS) == []


# --- JWKS -----------------------------------------------------------------------------------------------------


@pytest.fixture
def portal_state() -> PortalState:
    return PortalState.with_keys("RS256", "ES256", "EdDSA")


@pytest.fixture
def portal_url(portal_state: PortalState) -> Iterator[str]:
    with serve_in_thread(create_portal_app(portal_state)) as url:
        yield url


def portal_env(bpoc_url: str, **overrides: str) -> dict[str, str]:
    """The base settings without PORTAL_JWT_SECRET, so that another verification mode can be chosen."""
    env = base_env(bpoc_url, **overrides)
    del env["PORTAL_JWT_SECRET"]
    return env


@pytest.fixture(scope="module")
def jwks_stack() -> Iterator[Stack]:
    """A portal publishing an RS256, an ES256 and an EdDSA key, and a proxy verifying sessions with its JWKS."""
    portal = PortalState.with_keys("RS256", "ES256", "EdDSA")
    with serve_in_thread(create_portal_app(portal)) as portal_url:
        jwks_url = portal_url + "/.well-known/jwks.json"
        with running_stack(lambda bpoc: portal_env(bpoc, PORTAL_JWKS_URL=jwks_url), portal) as stack:
            yield stack


@pytest.fixture
def jwks(jwks_stack: Stack) -> Stack:
    return jwks_stack.fresh()


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_jwks_tokens_are_accepted(jwks: Stack, client: httpx.Client, alg: str) -> None:
    """A session signed with any of the portal's published keys is verified and attributed."""
    assert jwks.portal is not None
    key = next(key for key in jwks.portal.keys if key.alg == alg)
    token = mint_with_key(key, sub="bob", email=BOB)
    response = post_job(client, jwks.url, {"Authorization": f"Bearer {token}"})
    assert response.status_code == 201, response.text
    assert bodies_received(jwks.bpoc) == [{"title": "Recruiter", "postedBy": BOB_ID}]


def _foreign_key_token(portal_state: PortalState) -> str:
    """Signed by a key that claims a published kid but is not the published key."""
    published = portal_state.keys[0]
    return mint_with_key(SigningKey.generate(published.alg), kid=published.kid, sub="bob", email=BOB)


@pytest.mark.parametrize(
    ("make_token", "phrase"),
    [
        (lambda portal: token_for(BOB), "only RS256, ES256, EdDSA are accepted"),
        (
            lambda portal: mint_with_key(SigningKey.generate("ES256"), sub="bob", email=BOB),
            "does not publish",
        ),
        (_foreign_key_token, "signature is invalid"),
        (lambda portal: mint_with_key(portal.keys[0], sub="bob", email=BOB, exp_in=-3600), "has expired"),
    ],
    ids=["hs256-token", "unpublished-key", "published-kid-wrong-key", "expired"],
)
def test_jwks_refusals(
    jwks: Stack, client: httpx.Client, make_token: Callable[[PortalState], str], phrase: str
) -> None:
    """A JWKS-configured proxy refuses HMAC tokens and tokens its published keys do not verify."""
    assert jwks.portal is not None
    token = make_token(jwks.portal)
    response = post_job(client, jwks.url, {"Authorization": f"Bearer {token}"})
    assert_unauthenticated(response, phrase, token)
    assert jwks.bpoc.requests == []


def test_jwks_rotation_costs_one_fetch(
    start_proxy: ProxyFactory,
    bpoc_url: str,
    portal_url: str,
    portal_state: PortalState,
    client: httpx.Client,
    bpoc_state: BpocState,
    timer: FakeTimer,
) -> None:
    """After the portal rotates its keys, a token with the new kid is accepted after exactly one JWKS fetch."""
    url = start_proxy(
        portal_env(bpoc_url, PORTAL_JWKS_URL=portal_url + "/.well-known/jwks.json"), clock=timer
    )
    assert portal_state.calls["jwks"] == 1  # fetched at start-up
    old = mint_with_key(portal_state.keys[0], sub="bob", email=BOB)
    assert post_job(client, url, {"Authorization": f"Bearer {old}"}).status_code == 201
    timer.advance(jwks_module.JWKS_REFETCH_INTERVAL + 1)  # an unknown kid may now cause a refetch

    new_key = portal_state.rotate("ES256")
    for n in range(10):
        token = mint_with_key(new_key, sub=f"user-{n}", email=BOB)
        response = post_job(client, url, {"Authorization": f"Bearer {token}"})
        assert response.status_code == 201, response.text
    assert portal_state.calls["jwks"] == 2
    assert post_job(client, url, {"Authorization": f"Bearer {old}"}).status_code == 201
    assert all(body["postedBy"] == BOB_ID for body in bodies_received(bpoc_state))


def test_jwks_unknown_kids_do_not_hammer_the_portal(jwks: Stack, client: httpx.Client) -> None:
    """A flood of tokens with unknown kids is refused with at most one JWKS fetch, not one per token."""
    assert jwks.portal is not None
    for _ in range(10):
        token = mint_with_key(SigningKey.generate("EdDSA"), sub="bob", email=BOB)
        assert post_job(client, jwks.url, {"Authorization": f"Bearer {token}"}).status_code == 401
    assert jwks.portal.calls["jwks"] <= 1
    assert jwks.bpoc.requests == []


# --- introspection ------------------------------------------------------------------------------------------


@pytest.fixture
def session_proxy(
    start_proxy: ProxyFactory, bpoc_url: str, portal_url: str, portal_state: PortalState
) -> str:
    portal_state.add_session("opaque-bob-session", user_id="u-bob", email=BOB)
    return start_proxy(portal_env(bpoc_url, PORTAL_SESSION_URL=portal_url + "/session"))


def test_introspected_session_is_accepted_and_cached(
    session_proxy: str, client: httpx.Client, bpoc_state: BpocState, portal_state: PortalState
) -> None:
    """An opaque session is asked about once; twenty requests with it cost one introspection call."""
    headers = {"Authorization": "Bearer opaque-bob-session"}
    for _ in range(20):
        assert post_job(client, session_proxy, headers).status_code == 201
    assert portal_state.calls["session"] == 1
    bodies = bodies_received(bpoc_state)
    assert len(bodies) == 20
    assert all(body["postedBy"] == BOB_ID for body in bodies)


def test_introspection_unknown_session_is_401(
    session_proxy: str, client: httpx.Client, bpoc_state: BpocState
) -> None:
    """A session the portal does not recognise is refused with 401 and never forwarded."""
    response = post_job(client, session_proxy, {"Authorization": "Bearer forged-opaque-session"})
    assert_unauthenticated(response, "does not recognise this session", "forged-opaque-session")
    assert bpoc_state.requests_to(JOBS) == []


def test_introspection_portal_down_is_503_but_cached_sessions_still_work(
    session_proxy: str, client: httpx.Client, bpoc_state: BpocState, portal_state: PortalState
) -> None:
    """With the portal failing, an uncached session gets 503 (not 401); an already verified one still passes."""
    portal_state.add_session("opaque-alice-session", user_id="u-alice", email="alice@agency.example")
    cached = {"Authorization": "Bearer opaque-bob-session"}
    assert post_job(client, session_proxy, cached).status_code == 201
    portal_state.down = True
    response = post_job(client, session_proxy, {"Authorization": "Bearer opaque-alice-session"})
    body = assert_refusal(response, 503, "portal session service")
    assert body["code"] == "service_unavailable"
    assert "opaque-alice-session" not in response.text
    assert "www-authenticate" not in response.headers
    assert post_job(client, session_proxy, cached).status_code == 201
    assert [body["postedBy"] for body in bodies_received(bpoc_state)] == [BOB_ID, BOB_ID]


def test_introspection_portal_unreachable_is_503(
    start_proxy: ProxyFactory, bpoc_url: str, client: httpx.Client, bpoc_state: BpocState
) -> None:
    """A session service nobody listens on is a 503, not a 401."""
    sock = bind_socket()
    closed = f"http://127.0.0.1:{sock.getsockname()[1]}/session"
    sock.close()
    url = start_proxy(portal_env(bpoc_url, PORTAL_SESSION_URL=closed, PORTAL_TIMEOUT="2"))
    response = post_job(client, url, {"Authorization": "Bearer opaque-session"})
    assert_refusal(response, 503, "cannot be reached")
    assert bpoc_state.requests_to(JOBS) == []


# --- recruiter resolution ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_stack() -> Iterator[Stack]:
    """A proxy with the test defaults (shared secret, shipped rules), its start-up directory sync done."""
    with running_stack(base_env) as stack:
        yield stack


@pytest.fixture
def default(default_stack: Stack) -> Stack:
    return default_stack.fresh()


@pytest.mark.parametrize("role", ["recruiter", None], ids=["with-role-claim", "without-role-claim"])
def test_signed_recruiter_claim_needs_no_directory(
    default: Stack, client: httpx.Client, role: str | None
) -> None:
    """A recruiter ID carried by the signed session is used as is: no directory call, even for an unlisted email."""
    headers = auth("bob.portal-alias@agency.example", recruiter_id=BOB_ID, role=role)
    response = post_job(client, default.url, headers)
    assert response.status_code == 201, response.text
    assert bodies_received(default.bpoc) == [{"title": "Recruiter", "postedBy": BOB_ID}]
    assert default.bpoc.calls["agency/recruiters"] == 0


def test_directory_match_is_case_insensitive(
    start_proxy: ProxyFactory, client: httpx.Client, bpoc_state: BpocState
) -> None:
    """A session email in another letter case finds the recruiter, with one directory call."""
    url = start_before_bob_joins(start_proxy, bpoc_state, client)
    response = post_job(client, url, auth("BOB@Agency.Example"))
    assert response.status_code == 201, response.text
    assert bodies_received(bpoc_state)[-1]["postedBy"] == BOB_ID
    assert bpoc_state.calls["agency/recruiters"] == 1


async def test_concurrent_first_requests_share_one_directory_call(
    start_proxy: ProxyFactory, client: httpx.Client, bpoc_state: BpocState
) -> None:
    """Fifty simultaneous first requests from Bob cost one directory call and are all attributed to Bob."""
    url = start_before_bob_joins(start_proxy, bpoc_state, client)
    headers = auth(BOB)
    async with async_client() as aclient:
        responses = await asyncio.gather(
            *(aclient.post(url + JOBS, headers=headers, json={"title": f"job {n}"}) for n in range(50))
        )
    assert [r.status_code for r in responses] == [201] * 50
    assert bpoc_state.calls["agency/recruiters"] == 1
    bodies = bodies_received(bpoc_state)
    assert len(bodies) == 50
    assert all(body["postedBy"] == BOB_ID for body in bodies)
    assert len(bpoc_state.activity_for(BOB_ID)) == 50


@pytest.mark.parametrize(
    "email",
    ["nobody@agency.example", "ivan@agency.example", "mallory@other.example"],
    ids=["unknown", "inactive", "other-agency"],
)
def test_no_recruiter_is_403(default: Stack, client: httpx.Client, email: str) -> None:
    """A user with no active recruiter of this agency is refused with 403 on a rule route; nothing is forwarded."""
    token = token_for(email)
    response = post_job(client, default.url, {"Authorization": f"Bearer {token}"})
    body = assert_refusal(response, 403, NO_RECRUITER_ID)
    assert email in body["error"]
    assert token not in response.text
    assert default.bpoc.requests_to(JOBS) == []


def test_pass_through_needs_no_recruiter(default: Stack, client: httpx.Client) -> None:
    """A valid session whose user BPOC does not know still reads through the proxy: no directory is needed."""
    response = client.get(default.url + "/api/v1/jobs", headers=auth("stranger@agency.example"))
    assert response.status_code == 200
    assert "jobs" in response.json()
    assert [request.path for request in default.bpoc.requests] == ["/api/v1/jobs"]


def _newcomer_headers() -> dict[str, str]:
    return auth("nina@agency.example", first_name="Nina", last_name="Newcomer")


def test_auto_provision_creates_the_recruiter(
    start_proxy: ProxyFactory, bpoc_url: str, client: httpx.Client, bpoc_state: BpocState
) -> None:
    """With RECRUITER_AUTO_PROVISION, an unknown user gets a BPOC recruiter and the job is attributed to it."""
    url = start_warm(start_proxy, bpoc_state, client, base_env(bpoc_url, RECRUITER_AUTO_PROVISION="true"))
    response = post_job(client, url, _newcomer_headers())
    assert response.status_code == 201, response.text
    created = bpoc_state.find_recruiter("nina@agency.example")
    assert created is not None
    assert (created.first_name, created.last_name, created.role) == ("Nina", "Newcomer", "recruiter")
    assert created.id not in (ALICE_ID, BOB_ID)
    assert response.json()["postedBy"] == created.id
    assert bodies_received(bpoc_state)[-1]["postedBy"] == created.id
    assert len(bpoc_state.activity_for(created.id)) == 1


async def test_auto_provision_once_under_concurrency(
    start_proxy: ProxyFactory, bpoc_url: str, client: httpx.Client, bpoc_state: BpocState
) -> None:
    """Twenty simultaneous first requests from a new user create exactly one BPOC recruiter."""
    url = start_warm(start_proxy, bpoc_state, client, base_env(bpoc_url, RECRUITER_AUTO_PROVISION="true"))
    headers = _newcomer_headers()
    async with async_client() as aclient:
        responses = await asyncio.gather(
            *(aclient.post(url + JOBS, headers=headers, json={"title": f"job {n}"}) for n in range(20))
        )
    assert [r.status_code for r in responses] == [201] * 20
    assert len(bpoc_state.requests_to("/api/v1/recruiters/create")) == 1
    created = bpoc_state.find_recruiter("nina@agency.example")
    assert created is not None
    assert {body["postedBy"] for body in bodies_received(bpoc_state)} == {created.id}


# --- stale serving ------------------------------------------------------------------------------------------


class FlakyBpoc:
    """A purpose-built BPOC whose directory alone can be switched to 503; jobs/create records what it got."""

    def __init__(self) -> None:
        self.directory_status = 200
        self.directory_calls = 0
        self.jobs: list[dict[str, Any]] = []

    def app(self) -> Starlette:
        async def directory(request: Request) -> Response:
            self.directory_calls += 1
            if request.headers.get("x-api-key") != API_KEY:
                return JSONResponse({"error": "Invalid API key"}, 401)
            if self.directory_status != 200:
                return JSONResponse({"error": "unavailable"}, self.directory_status)
            bob = {"id": BOB_ID, "email": BOB, "role": "recruiter", "is_active": True}
            return JSONResponse({"recruiters": [bob]})

        async def create_job(request: Request) -> Response:
            body = await request.json()
            self.jobs.append(body)
            return JSONResponse({"id": str(uuid.uuid4()), **body}, 201)

        return Starlette(
            routes=[
                Route("/api/v1/agency/recruiters", directory, methods=["GET"]),
                Route(JOBS, create_job, methods=["POST"]),
            ]
        )


@pytest.mark.parametrize(
    ("stale_ttl", "status"),
    [("60", 201), ("5", 503)],
    ids=["within-stale-ttl", "past-stale-ttl"],
)
def test_stale_entry_served_while_directory_is_down(
    start_proxy: ProxyFactory, client: httpx.Client, timer: FakeTimer, stale_ttl: str, status: int
) -> None:
    """An expired cache entry stands in while the directory fails, for RECRUITER_STALE_TTL seconds, then 503."""
    bpoc = FlakyBpoc()
    with serve_in_thread(bpoc.app()) as upstream:
        env = base_env(upstream, RECRUITER_CACHE_TTL="10", RECRUITER_STALE_TTL=stale_ttl)
        url = start_proxy(env, clock=timer)
        assert post_job(client, url, auth(BOB)).status_code == 201
        assert bpoc.jobs[-1]["postedBy"] == BOB_ID
        bpoc.directory_status = 503
        calls_before = bpoc.directory_calls
        timer.advance(11)  # past the cache ttl, and past the shorter stale ttl
        response = post_job(client, url, auth(BOB), title="while the directory is down")
        assert bpoc.directory_calls > calls_before  # the entry had expired: the directory was asked
        if status == 201:
            assert response.status_code == 201, response.text
            assert bpoc.jobs[-1] == {"title": "while the directory is down", "postedBy": BOB_ID}
        else:
            body = assert_refusal(response, 503, "directory cannot be reached")
            assert body["code"] == "service_unavailable"
            assert len(bpoc.jobs) == 1


# --- re-sync and replay -------------------------------------------------------------------------------------


def test_recreated_recruiter_is_resynced_and_replayed(
    start_proxy: ProxyFactory, client: httpx.Client, bpoc_state: BpocState
) -> None:
    """BPOC refusing a cached ID that was re-created makes the proxy look Bob up again and replay once."""
    url = start_warm(start_proxy, bpoc_state, client)
    assert post_job(client, url, auth(BOB), title="before").json()["postedBy"] == BOB_ID
    new_bob = bpoc_state.recreate_recruiter(BOB)
    bpoc_state.reset_requests()

    response = post_job(client, url, auth(BOB), title="after")
    assert response.status_code == 201, response.text
    assert response.json()["postedBy"] == new_bob.id
    assert [body["postedBy"] for body in bodies_received(bpoc_state)] == [BOB_ID, new_bob.id]
    assert [entry.metadata["title"] for entry in bpoc_state.activity_for(new_bob.id)] == ["after"]

    assert post_job(client, url, auth(BOB), title="next").json()["postedBy"] == new_bob.id
    assert len(bpoc_state.requests_to(JOBS)) == 3  # the next request goes straight to the new ID


def test_stale_session_claim_is_replaced_by_the_directory(
    start_proxy: ProxyFactory, client: httpx.Client, bpoc_state: BpocState
) -> None:
    """A session carrying an ID that BPOC refuses is replayed with the directory's ID for the session's email."""
    url = start_warm(start_proxy, bpoc_state, client)
    headers = auth(BOB, recruiter_id=str(uuid.uuid4()))
    response = post_job(client, url, headers)
    assert response.status_code == 201, response.text
    assert response.json()["postedBy"] == BOB_ID
    assert len(bpoc_state.requests_to(JOBS)) == 2
    assert post_job(client, url, headers).status_code == 201
    assert len(bpoc_state.requests_to(JOBS)) == 3  # the refused claim is not sent again


def test_deactivated_recruiter_is_not_replayed(
    start_proxy: ProxyFactory, client: httpx.Client, bpoc_state: BpocState
) -> None:
    """When the directory offers no other ID, BPOC's 4xx reaches the client as is and nothing is replayed."""
    url = start_warm(start_proxy, bpoc_state, client)
    bpoc_state.deactivate(BOB)
    response = post_job(client, url, auth(BOB))
    assert response.status_code == 400
    assert response.json() == {
        "error": "Invalid recruiter ID",
        "status": 400,
        "message": f"Invalid recruiter ID: {BOB_ID}",
    }
    assert [body["postedBy"] for body in bodies_received(bpoc_state)] == [BOB_ID]
