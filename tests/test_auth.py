"""Sessions: extraction, the three verification modes, their caches, key rotation and portal outages.

Upstreams are small purpose-built Starlette apps on real uvicorn sockets, counting the calls they receive.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy import auth as auth_module
from proxy.auth import Principal, build_authenticator, extract_token
from proxy.errors import AuthenticationError, ConfigError, ServiceUnavailable
from proxy.sandbox.server import bind_socket, serve_in_thread
from proxy.settings import Settings

SECRET = "portal-secret-for-tests-0123456789abcdef"
ISSUER = "https://portal.example"
AUDIENCE = "bpoc-proxy"

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_KEY_2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()


class Portal:
    """The state behind the fake portal: its key set, its sessions, and what it was asked."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.jwks: dict[str, Any] = {"keys": []}
        self.jwks_status = 200
        self.jwks_calls = 0
        self.sessions: dict[str, dict[str, Any]] = {}
        self.session_status: int | None = None
        self.session_body: bytes | None = None
        self.session_calls = 0
        self.cookies: list[str | None] = []


def portal_app(portal: Portal) -> Starlette:
    async def jwks(request: Request) -> Response:
        portal.jwks_calls += 1
        if portal.jwks_status != 200:
            return JSONResponse({"error": "down"}, status_code=portal.jwks_status)
        return JSONResponse(portal.jwks)

    async def session(request: Request) -> Response:
        portal.session_calls += 1
        portal.cookies.append(request.headers.get("cookie"))
        if portal.session_status is not None:
            return Response(portal.session_body or b"{}", status_code=portal.session_status)
        header = request.headers.get("authorization", "")
        answer = portal.sessions.get(header.removeprefix("Bearer "))
        if answer is None:
            return JSONResponse({"error": "unknown session"}, status_code=401)
        return JSONResponse(answer)

    return Starlette(routes=[Route("/jwks", jwks), Route("/session", session)])


@pytest.fixture(scope="module")
def portal_server() -> Iterator[tuple[Portal, str]]:
    portal = Portal()
    with serve_in_thread(portal_app(portal)) as url:
        yield portal, url


@pytest.fixture
def portal(portal_server: tuple[Portal, str]) -> Portal:
    portal_server[0].reset()
    return portal_server[0]


@pytest.fixture
def portal_url(portal_server: tuple[Portal, str]) -> str:
    return portal_server[1]


def closed_port_url() -> str:
    sock = bind_socket()
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


def make_settings(**changes: Any) -> Settings:
    base = Settings(
        auth_mode="jwt_secret",
        jwt_secret=SECRET,
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        jwt_leeway=30,
        session_cache_ttl=60,
        session_failure_ttl=5,
        portal_timeout=2,
    )
    return dataclasses.replace(base, **changes)


def jwks_settings(portal_url: str, **changes: Any) -> Settings:
    return make_settings(auth_mode="jwks", jwt_secret=None, jwks_url=f"{portal_url}/jwks", **changes)


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "user-1",
        "email": "Bob@Agency.example",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 600,
        "role": "recruiter",
        "given_name": "Bob",
    }
    base.update(changes)
    return {name: value for name, value in base.items() if value is not None}


def public_jwk(private_key: Any, kid: str, alg: str) -> dict[str, Any]:
    algorithms: dict[str, Any] = {"RS256": RSAAlgorithm, "ES256": ECAlgorithm, "EdDSA": OKPAlgorithm}
    algorithm = algorithms[alg]
    jwk = algorithm.to_jwk(private_key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


def hs(**changes: Any) -> str:
    return jwt.encode(claims(**changes), SECRET, algorithm="HS256")


def rs(kid: str = "k1", key: Any = RSA_KEY, **changes: Any) -> str:
    return jwt.encode(claims(**changes), key, algorithm="RS256", headers={"kid": kid})


# --- extract_token ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header_name", "cookie_name", "header", "cookie", "expected"),
    [
        ("Authorization", None, "Bearer abc.def.ghi", None, "abc.def.ghi"),
        ("Authorization", None, "bearer   abc  ", None, "abc"),
        ("Authorization", None, "BEARER abc", None, "abc"),
        ("Authorization", None, "Basic dXNlcjpwYXNz", None, None),
        ("Authorization", None, "Bearer ", None, None),
        ("Authorization", None, None, None, None),
        ("Authorization", "sid", None, "a=1; sid=tok; b=2", "tok"),
        ("Authorization", "sid", None, 'sid="quoted"', "quoted"),
        ("Authorization", "sid", None, "broken; sid=tok", "tok"),
        ("Authorization", "sid", None, "xsid=nope; sid_x=nope", None),
        ("Authorization", "sid", "Bearer from-header", "sid=from-cookie", "from-header"),
        ("Authorization", "sid", "Basic x", "sid=from-cookie", "from-cookie"),
        ("Authorization", None, None, "sid=tok", None),
        ("X-Portal-Session", None, " raw-token ", None, "raw-token"),
        ("X-Portal-Session", None, "", None, None),
    ],
    ids=[
        "bearer",
        "bearer-case-and-spaces",
        "bearer-upper",
        "other-scheme",
        "empty-bearer",
        "nothing",
        "cookie",
        "quoted-cookie",
        "tolerant-cookie",
        "similar-cookie-names",
        "header-wins",
        "cookie-when-header-is-not-a-session",
        "cookie-not-configured",
        "custom-header",
        "empty-custom-header",
    ],
)
def test_extract_token(header_name, cookie_name, header, cookie, expected):
    """The header (Bearer for Authorization) wins; else the configured cookie; else nothing."""
    settings = make_settings(session_header=header_name, session_cookie=cookie_name)
    assert extract_token(settings, header, cookie) == expected


# --- shared-secret JWTs -------------------------------------------------------------------------------------


async def test_secret_good_token(http, timer):
    """A well-signed token yields the portal user with every configured claim."""
    authenticator = build_authenticator(make_settings(), http, timer=timer)
    principal = await authenticator.authenticate(hs(bpoc_recruiter_id="r-1"))
    assert principal == Principal(
        user_id="user-1",
        email="Bob@Agency.example",
        recruiter_id="r-1",
        role="recruiter",
        first_name="Bob",
        last_name=None,
    )


async def test_secret_custom_claim_names(http, timer):
    """Claim names come from the settings."""
    settings = make_settings(claim_user_id="uid", claim_email="mail", claim_role="https://portal/role")
    authenticator = build_authenticator(settings, http, timer=timer)
    token = hs(uid=42, mail="a@b.example", **{"https://portal/role": "admin"})
    principal = await authenticator.authenticate(token)
    assert (principal.user_id, principal.email, principal.role) == ("42", "a@b.example", "admin")


@pytest.mark.parametrize("alg", ["HS384", "HS512"])
async def test_secret_other_hmac_sizes(http, timer, alg):
    """HS384 and HS512 belong to the shared-secret family too (with a secret as long as their hash)."""
    long_secret = SECRET * 2
    authenticator = build_authenticator(make_settings(jwt_secret=long_secret), http, timer=timer)
    assert (
        await authenticator.authenticate(jwt.encode(claims(), long_secret, algorithm=alg))
    ).user_id == "user-1"
    with pytest.raises(AuthenticationError, match="signature is invalid"):
        await authenticator.authenticate(jwt.encode(claims(), long_secret + "x", algorithm=alg))


def _none_token() -> str:
    return jwt.encode(claims(), "", algorithm="none")


REFUSED_HS = [
    ("expired", lambda: hs(exp=int(time.time()) - 120), "has expired"),
    ("not-yet-valid", lambda: hs(nbf=int(time.time()) + 300), "not valid yet"),
    ("issued-in-future", lambda: hs(iat=int(time.time()) + 300), "not valid yet"),
    (
        "wrong-signature",
        lambda: jwt.encode(claims(), "another-secret-0123456789abcdef0123", algorithm="HS256"),
        "signature",
    ),
    ("wrong-audience", lambda: hs(aud="someone-else"), "another audience"),
    ("no-audience", lambda: hs(aud=None), "'aud'"),
    ("wrong-issuer", lambda: hs(iss="https://evil.example"), "another issuer"),
    ("no-exp", lambda: hs(exp=None), "'exp'"),
    ("no-user", lambda: hs(sub=None), "does not name a user"),
    ("alg-none", _none_token, "alg none"),
    ("rs256-in-secret-mode", lambda: rs(), "only HS256, HS384, HS512"),
    ("garbage", lambda: "not-a-jwt", "malformed"),
    ("tampered-payload", lambda: hs()[:-4] + "AAAA", "signature"),
]


@pytest.mark.parametrize(
    ("make", "message"), [(m, msg) for _, m, msg in REFUSED_HS], ids=[i for i, _, _ in REFUSED_HS]
)
async def test_secret_refusals(http, timer, make, message):
    """Every bad token is a 401 with a readable reason that never repeats the token."""
    authenticator = build_authenticator(make_settings(), http, timer=timer)
    token = make()
    with pytest.raises(AuthenticationError, match=message) as caught:
        await authenticator.authenticate(token)
    assert caught.value.status_code == 401
    assert "WWW-Authenticate" in caught.value.headers
    assert token not in caught.value.message


async def test_issuer_and_audience_are_optional(http, timer):
    """Without PORTAL_JWT_ISSUER/PORTAL_JWT_AUDIENCE, iss and aud are not checked."""
    authenticator = build_authenticator(make_settings(jwt_issuer=None, jwt_audience=None), http, timer=timer)
    assert (await authenticator.authenticate(hs(iss="anyone", aud="anything"))).user_id == "user-1"


async def test_leeway_accepts_slightly_expired(http, timer):
    """A token expired within the leeway is still accepted."""
    authenticator = build_authenticator(make_settings(jwt_leeway=30), http, timer=timer)
    assert (await authenticator.authenticate(hs(exp=int(time.time()) - 5))).user_id == "user-1"


@pytest.fixture
def decode_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = jwt.decode

    def counting(token: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)
    return calls


async def test_verified_once_then_cached_until_ttl(http, timer, decode_calls):
    """A token is verified once and remembered for the session cache ttl."""
    authenticator = build_authenticator(make_settings(session_cache_ttl=60), http, timer=timer)
    token = hs()
    for _ in range(100):
        await authenticator.authenticate(token)
    assert len(decode_calls) == 1
    timer.advance(61)
    await authenticator.authenticate(token)
    assert len(decode_calls) == 2


async def test_cache_never_outlives_exp(http, timer, decode_calls):
    """An entry expires at the token's exp when that comes before the cache ttl."""
    authenticator = build_authenticator(make_settings(session_cache_ttl=600, jwt_leeway=0), http, timer=timer)
    token = hs(exp=int(time.time()) + 20)
    await authenticator.authenticate(token)
    timer.advance(10)
    await authenticator.authenticate(token)
    assert len(decode_calls) == 1
    timer.advance(11)
    await authenticator.authenticate(token)  # re-verified (PyJWT's wall clock says it is still valid)
    assert len(decode_calls) == 2


@pytest.mark.parametrize("exp", [10**400, "99999999999"], ids=["beyond-a-float", "numeric-string"])
async def test_far_exp_is_remembered_for_the_ttl(http, timer, decode_calls, exp):
    """An exp PyJWT accepts but float() cannot hold (10**400; found by the token property) is no 500: the token
    is valid and remembered for the cache ttl, like any far exp."""
    authenticator = build_authenticator(make_settings(session_cache_ttl=60), http, timer=timer)
    token = hs(exp=exp)
    for _ in range(2):
        assert (await authenticator.authenticate(token)).user_id == "user-1"
    assert len(decode_calls) == 1
    timer.advance(61)
    await authenticator.authenticate(token)
    assert len(decode_calls) == 2


async def test_refusals_and_early_tokens_are_not_cached(http, timer, decode_calls):
    """Refused tokens, and tokens accepted only thanks to the leeway on nbf, are verified every time."""
    authenticator = build_authenticator(make_settings(jwt_leeway=30), http, timer=timer)
    early = hs(nbf=int(time.time()) + 10)
    bad = hs(aud="other")
    for _ in range(3):
        await authenticator.authenticate(early)
        with pytest.raises(AuthenticationError):
            await authenticator.authenticate(bad)
    assert len(decode_calls) == 6


async def test_cache_is_bounded(http, timer, monkeypatch):
    """The verified-token cache never holds more than its bound; the oldest entry goes first."""
    monkeypatch.setattr(auth_module, "CACHE_SIZE", 5)
    authenticator = build_authenticator(make_settings(), http, timer=timer)
    tokens = [hs(sub=f"user-{i}") for i in range(8)]
    for token in tokens:
        await authenticator.authenticate(token)
    cached = authenticator._verified  # type: ignore[attr-defined]
    assert len(cached) == 5
    assert list(cached) == tokens[3:]


async def test_a_cached_token_is_not_verified_again(http, timer, decode_calls):
    """The hot path: after the first request, a token costs a dict lookup, not a signature check (counted with
    a pass-through spy on PyJWT, so the test does not depend on the machine's speed)."""
    authenticator = build_authenticator(make_settings(), http, timer=timer)
    token, other = hs(), hs(sub="user-2")
    for _ in range(50):
        assert (await authenticator.authenticate(token)).user_id == "user-1"
    await authenticator.authenticate(other)
    assert decode_calls == [token, other]


def test_missing_secret_is_a_config_error():
    with pytest.raises(ConfigError, match="PORTAL_JWT_SECRET"):
        build_authenticator(make_settings(jwt_secret=None), httpx.AsyncClient())


# --- JWKS ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("private_key", "alg"),
    [(RSA_KEY, "RS256"), (EC_KEY, "ES256"), (ED_KEY, "EdDSA")],
    ids=["RS256", "ES256", "EdDSA"],
)
async def test_jwks_good_tokens(http, timer, portal, portal_url, private_key, alg):
    """Tokens signed with any published key of the family verify; the key set is fetched once."""
    portal.jwks = {"keys": [public_jwk(private_key, "k-" + alg, alg)]}
    authenticator = build_authenticator(jwks_settings(portal_url), http, timer=timer)
    token = jwt.encode(claims(), private_key, algorithm=alg, headers={"kid": "k-" + alg})
    assert (await authenticator.authenticate(token)).user_id == "user-1"
    assert (
        await authenticator.authenticate(jwt.encode(claims(sub="u2"), private_key, alg, {"kid": "k-" + alg}))
    ).user_id == "u2"
    assert portal.jwks_calls == 1


def _confused() -> str:
    # The classic confusion: HS256 "signed" with the public key as the secret, naming the RSA kid.
    return jwt.encode(claims(), "k" * 64, algorithm="HS256", headers={"kid": "k1"})


REFUSED_JWKS = [
    ("expired", lambda: rs(exp=int(time.time()) - 120), "has expired"),
    ("not-yet-valid", lambda: rs(nbf=int(time.time()) + 300), "not valid yet"),
    ("wrong-key", lambda: rs(key=RSA_KEY_2), "signature is invalid"),
    ("wrong-audience", lambda: rs(aud="someone-else"), "another audience"),
    ("wrong-issuer", lambda: rs(iss="https://evil.example"), "another issuer"),
    ("alg-none", _none_token, "alg none"),
    ("hs256-confusion", _confused, "signed with HS256, but only RS256, ES256, EdDSA"),
    (
        "es256-token-for-rsa-key",
        lambda: jwt.encode(claims(), EC_KEY, algorithm="ES256", headers={"kid": "k1"}),
        "algorithm",
    ),
    ("no-kid-two-keys", lambda: jwt.encode(claims(), RSA_KEY, algorithm="RS256"), "does not publish"),
]


@pytest.mark.parametrize(
    ("make", "message"), [(m, msg) for _, m, msg in REFUSED_JWKS], ids=[i for i, _, _ in REFUSED_JWKS]
)
async def test_jwks_refusals(http, timer, portal, portal_url, make, message):
    """Bad tokens are refused with a 401 in JWKS mode too, whatever their header claims."""
    portal.jwks = {"keys": [public_jwk(RSA_KEY, "k1", "RS256"), public_jwk(RSA_KEY_2, "k2", "RS256")]}
    authenticator = build_authenticator(jwks_settings(portal_url), http, timer=timer)
    await authenticator.start()
    token = make()
    with pytest.raises(AuthenticationError, match=message) as caught:
        await authenticator.authenticate(token)
    assert token not in caught.value.message


async def test_jwks_single_key_without_kid(http, timer, portal, portal_url):
    """A token without kid is accepted when exactly one published key could have signed it."""
    portal.jwks = {"keys": [public_jwk(RSA_KEY, "k1", "RS256")]}
    authenticator = build_authenticator(jwks_settings(portal_url), http, timer=timer)
    assert (
        await authenticator.authenticate(jwt.encode(claims(), RSA_KEY, algorithm="RS256"))
    ).user_id == "user-1"


async def test_jwks_skips_encryption_and_unusable_keys(http, timer, portal, portal_url):
    """Keys marked use=enc and keys PyJWT cannot load are ignored; the signing key still works."""
    encryption = {**public_jwk(RSA_KEY_2, "enc", "RS256"), "use": "enc"}
    portal.jwks = {"keys": [encryption, {"kty": "nonsense", "kid": "x"}, public_jwk(RSA_KEY, "k1", "RS256")]}
    authenticator = build_authenticator(jwks_settings(portal_url), http, timer=timer)
    assert (await authenticator.authenticate(rs())).user_id == "user-1"
    with pytest.raises(AuthenticationError, match="does not publish"):
        await authenticator.authenticate(rs(kid="enc", key=RSA_KEY_2))


async def test_jwks_start_prefetches(http, timer, portal, portal_url):
    """start() fetches the key set, so the first request does not wait for it."""
    portal.jwks = {"keys": [public_jwk(RSA_KEY, "k1", "RS256")]}
    authenticator = build_authenticator(jwks_settings(portal_url), http, timer=timer)
    await authenticator.start()
    assert portal.jwks_calls == 1
    await authenticator.authenticate(rs())
    assert portal.jwks_calls == 1


async def test_jwks_rotation_refetches_once_per_minute(http, timer, portal, portal_url):
    """A new kid triggers one refetch; a burst of unknown kids refetches at most once a minute."""
    portal.jwks = {"keys": [public_jwk(RSA_KEY, "k1", "RS256")]}
    authenticator = build_authenticator(jwks_settings(portal_url), http, timer=timer)
    await authenticator.authenticate(rs())
    assert portal.jwks_calls == 1

    portal.jwks = {"keys": [public_jwk(RSA_KEY, "k1", "RS256"), public_jwk(RSA_KEY_2, "k2", "RS256")]}
    timer.advance(61)
    assert (await authenticator.authenticate(rs(kid="k2", key=RSA_KEY_2, sub="rotated"))).user_id == "rotated"
    assert portal.jwks_calls == 2

    forged = [rs(kid=f"forged-{i}") for i in range(30)]
    results = await asyncio.gather(*(authenticator.authenticate(t) for t in forged), return_exceptions=True)
    assert all(isinstance(r, AuthenticationError) for r in results)
    for token in forged:
        with pytest.raises(AuthenticationError, match="does not publish"):
            await authenticator.authenticate(token)
    assert portal.jwks_calls == 2  # the last fetch was less than a minute ago

    timer.advance(61)
    results = await asyncio.gather(*(authenticator.authenticate(t) for t in forged), return_exceptions=True)
    assert all(isinstance(r, AuthenticationError) for r in results)
    assert portal.jwks_calls == 3  # one refetch for the whole concurrent burst


async def test_jwks_unreachable_without_keys_is_503(http, timer):
    """With no keys and the key set unreachable, the answer is 503, not 401."""
    authenticator = build_authenticator(jwks_settings(closed_port_url()), http, timer=timer)
    await authenticator.start()  # logs, does not raise: start-up must not depend on the portal
    with pytest.raises(ServiceUnavailable, match="signing keys cannot be fetched"):
        await authenticator.authenticate(rs())


async def test_jwks_failing_then_recovering(http, timer, portal, portal_url):
    """A failing key set (HTTP 500, bad JSON) is 503; once the portal recovers, tokens verify."""
    portal.jwks_status = 500
    authenticator = build_authenticator(jwks_settings(portal_url), http, timer=timer)
    with pytest.raises(ServiceUnavailable):
        await authenticator.authenticate(rs())
    with pytest.raises(ServiceUnavailable):
        await authenticator.authenticate(rs())
    assert portal.jwks_calls == 1  # retries are spaced out while nothing is known
    portal.jwks_status = 200
    portal.jwks = {"keys": "not a list"}
    timer.advance(2)
    with pytest.raises(ServiceUnavailable):
        await authenticator.authenticate(rs())
    portal.jwks = {"keys": [public_jwk(RSA_KEY, "k1", "RS256")]}
    timer.advance(2)
    assert (await authenticator.authenticate(rs())).user_id == "user-1"


async def test_jwks_down_keeps_known_keys(http, timer, portal, portal_url):
    """When the key set goes away, known keys keep verifying and unknown kids are refused (401)."""
    portal.jwks = {"keys": [public_jwk(RSA_KEY, "k1", "RS256")]}
    authenticator = build_authenticator(jwks_settings(portal_url), http, timer=timer)
    await authenticator.start()
    portal.jwks_status = 503
    timer.advance(61)
    assert (await authenticator.authenticate(rs(sub="other"))).user_id == "other"
    with pytest.raises(AuthenticationError, match="does not publish"):
        await authenticator.authenticate(rs(kid="k9", key=RSA_KEY_2))
    assert portal.jwks_calls == 2


# --- introspection ------------------------------------------------------------------------------------------


def introspection_settings(portal_url: str, **changes: Any) -> Settings:
    return make_settings(
        auth_mode="introspection", jwt_secret=None, session_url=f"{portal_url}/session", **changes
    )


async def test_introspection_good_session_cached(http, timer, portal, portal_url):
    """50 concurrent and 50 sequential requests with one session make one call to the portal."""
    portal.sessions["opaque-1"] = {
        "userId": "u-1",
        "email": "Ann@Agency.example",
        "bpocRecruiterId": "r-9",
        "role": "admin",
        "firstName": "Ann",
        "lastName": "Lee",
    }
    authenticator = build_authenticator(introspection_settings(portal_url), http, timer=timer)
    results = await asyncio.gather(*(authenticator.authenticate("opaque-1") for _ in range(50)))
    for _ in range(50):
        results.append(await authenticator.authenticate("opaque-1"))
    assert set(results) == {Principal("u-1", "Ann@Agency.example", "r-9", "admin", "Ann", "Lee")}
    assert portal.session_calls == 1
    timer.advance(61)
    await authenticator.authenticate("opaque-1")
    assert portal.session_calls == 2


async def test_introspection_passes_cookie(http, timer, portal, portal_url):
    """With PORTAL_SESSION_COOKIE set, the session goes to the portal as that cookie too."""
    portal.sessions["opaque-2"] = {"userId": 7}
    settings = introspection_settings(portal_url, session_cookie="portal_sid")
    principal = await build_authenticator(settings, http, timer=timer).authenticate("opaque-2")
    assert principal == Principal("7", None, None, None)
    assert portal.cookies == ["portal_sid=opaque-2"]


@pytest.mark.parametrize("status", [401, 403])
async def test_introspection_refusal_cached_briefly(http, timer, portal, portal_url, status):
    """401/403 from the portal is a 401, remembered for the shorter failure ttl."""
    authenticator = build_authenticator(
        introspection_settings(portal_url, session_failure_ttl=5), http, timer=timer
    )
    portal.session_status = status
    for _ in range(10):
        with pytest.raises(AuthenticationError, match="does not recognise this session"):
            await authenticator.authenticate("revoked")
    assert portal.session_calls == 1
    timer.advance(6)
    portal.session_status = None
    portal.sessions["revoked"] = {"userId": "back"}
    assert (await authenticator.authenticate("revoked")).user_id == "back"
    assert portal.session_calls == 2


async def test_introspection_unreachable_is_503(http, timer):
    """If the session service cannot be reached the answer is 503, not 401."""
    authenticator = build_authenticator(introspection_settings(closed_port_url()), http, timer=timer)
    with pytest.raises(ServiceUnavailable, match="cannot be reached"):
        await authenticator.authenticate("anything")


@pytest.mark.parametrize(
    ("status", "body"),
    [(500, b"oops"), (404, b"{}"), (200, b"not json"), (200, b'{"email": "no-user-id@x"}'), (200, b"[]")],
    ids=["500", "404", "bad-json", "no-user-id", "not-an-object"],
)
async def test_introspection_broken_answers_are_503_and_not_cached(
    http, timer, portal, portal_url, status, body
):
    """A failing or unreadable session service is a 503, asked again on the next request."""
    authenticator = build_authenticator(introspection_settings(portal_url), http, timer=timer)
    portal.session_status, portal.session_body = status, body
    for _ in range(2):
        with pytest.raises(ServiceUnavailable):
            await authenticator.authenticate("tok")
    assert portal.session_calls == 2


async def test_introspection_slow_portal_times_out(http, timer):
    """A session service slower than PORTAL_TIMEOUT is a 503."""

    release = threading.Event()

    async def slow(request: Request) -> Response:
        while not release.is_set():
            await asyncio.sleep(0.01)
        return JSONResponse({"userId": "late"})

    with serve_in_thread(Starlette(routes=[Route("/session", slow)])) as url:
        settings = introspection_settings(url, portal_timeout=0.1)
        try:
            with pytest.raises(ServiceUnavailable, match="cannot be reached"):
                await build_authenticator(settings, http, timer=timer).authenticate("tok")
        finally:
            release.set()
