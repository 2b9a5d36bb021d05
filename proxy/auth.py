"""The portal session: find it on the request, verify it, and turn it into a Principal (the portal user).

Three ways to verify, one entry each in ``VERIFIERS``, chosen by which of their settings is given::

    jwt_secret     a JWT signed with PORTAL_JWT_SECRET (HS256/384/512)
    jwks           a JWT signed with a key from PORTAL_JWKS_URL (RS256, ES256, EdDSA); unknown kid -> refetch
    introspection  an opaque session, asked about with a GET to PORTAL_SESSION_URL

A bad session is an AuthenticationError (401); a portal that cannot be asked is ServiceUnavailable (503).
A token is never logged and never part of a message.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

import httpx
import jwt
from cachetools import TTLCache
from jwt.types import Options

from .errors import AuthenticationError, ConfigError, ServiceUnavailable
from .jwks import JwksKeys
from .singleflight import SingleFlight

if TYPE_CHECKING:  # settings.py reads VERIFIERS, so the import goes one way at run time
    from .settings import Settings

log = logging.getLogger("proxy.auth")

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
JWKS_ALGORITHMS = ("RS256", "ES256", "EdDSA")
#: Bound on remembered sessions, so a flood of distinct tokens cannot grow memory without limit.
CACHE_SIZE = 10_000

_PRINTABLE_ALG = re.compile(r"[A-Za-z0-9+_-]{1,20}")


@dataclass(frozen=True, slots=True)
class Principal:
    """The portal user behind a verified session."""

    user_id: str
    email: str | None
    recruiter_id: str | None
    role: str | None
    first_name: str | None = None
    last_name: str | None = None


class Authenticator(Protocol):
    async def authenticate(self, token: str) -> Principal:
        """The user behind ``token``; raises AuthenticationError (401) or ServiceUnavailable (503)."""
        ...

    async def start(self) -> None:
        """Warm up at application start-up (fetch keys); a no-op unless a mode has something to fetch."""
        return None


def extract_token(settings: Settings, header_value: str | None, cookie_header: str | None) -> str | None:
    """The session token from the configured header (which wins) or the configured cookie, else None."""
    if header_value is not None:
        token = _from_header(settings.session_header, header_value)
        if token:
            return token
    if cookie_header and settings.session_cookie:
        return _cookie(cookie_header, settings.session_cookie)
    return None


def _from_header(name: str, value: str) -> str | None:
    value = value.strip()
    if name.lower() != "authorization":
        return value or None
    scheme, _, rest = value.partition(" ")
    if scheme.lower() != "bearer":
        return None  # Basic and other schemes are not a portal session
    return rest.strip() or None


def _cookie(header: str, name: str) -> str | None:
    # A tolerant split rather than http.cookies, which gives up on the whole header for one malformed cookie.
    for part in header.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value or None
    return None


def build_authenticator(
    settings: Settings, http: httpx.AsyncClient, *, timer: Callable[[], float] = time.monotonic
) -> Authenticator:
    """The authenticator for ``settings.auth_mode``; ``http`` makes the JWKS and session-service calls."""
    verifier = next((v for v in VERIFIERS.values() if v.mode == settings.auth_mode), None)
    if verifier is None:
        raise ConfigError(f"no session verifier is called {settings.auth_mode!r}")
    value = getattr(settings, verifier.field)
    if not value:
        raise ConfigError(f"{verifier.setting} is missing; it is needed to verify portal sessions")
    return verifier.build(settings, value, http, timer)


def _jwt_secret(
    settings: Settings, secret: str, http: httpx.AsyncClient, timer: Callable[[], float]
) -> Authenticator:
    if len(secret.encode()) < 32:
        log.warning(
            "PORTAL_JWT_SECRET is shorter than 32 bytes; HS256 wants at least 32 (RFC 7518 section 3.2)"
        )
    return JwtAuthenticator(settings, _SecretKey(secret), HMAC_ALGORITHMS, timer=timer)


def _jwks(settings: Settings, url: str, http: httpx.AsyncClient, timer: Callable[[], float]) -> Authenticator:
    keys = JwksKeys(url, http, settings.portal_timeout, timer=timer)
    return JwtAuthenticator(settings, keys, JWKS_ALGORITHMS, timer=timer)


def _introspection(
    settings: Settings, url: str, http: httpx.AsyncClient, timer: Callable[[], float]
) -> Authenticator:
    return IntrospectionAuthenticator(settings, url, http, timer=timer)


@dataclass(frozen=True, slots=True)
class Verifier:
    """One way to verify portal sessions, chosen by setting ``setting`` (exactly one must be set)."""

    setting: str  # the environment variable that selects it, and gives the secret or the URL
    mode: str  # its name in Settings.auth_mode, /readyz and `bpoc-proxy check`
    field: str  # the Settings field holding that value
    secret: bool  # read as a secret (NAME or NAME_FILE) rather than as an http(s) URL
    build: Callable[[Settings, str, httpx.AsyncClient, Callable[[], float]], Authenticator]


#: The session verifiers, keyed by the setting that selects them: settings validation and the factory both read
#: this table, so a new verifier is one entry here (and its Settings field).
VERIFIERS: Mapping[str, Verifier] = MappingProxyType(
    {
        v.setting: v
        for v in (
            Verifier("PORTAL_JWT_SECRET", "jwt_secret", "jwt_secret", True, _jwt_secret),
            Verifier("PORTAL_JWKS_URL", "jwks", "jwks_url", False, _jwks),
            Verifier("PORTAL_SESSION_URL", "introspection", "session_url", False, _introspection),
        )
    }
)


# --- JWT ----------------------------------------------------------------------------------------------------


class _KeySource(Protocol):
    async def key_for(self, header: Mapping[str, Any], alg: str) -> str | jwt.PyJWK: ...

    async def start(self) -> None: ...


class _SecretKey:
    def __init__(self, secret: str) -> None:
        self._secret = secret

    async def key_for(self, header: Mapping[str, Any], alg: str) -> str | jwt.PyJWK:
        return self._secret

    async def start(self) -> None:
        return None


class JwtAuthenticator(Authenticator):
    """Verifies a JWT once, then remembers the Principal until the token expires (or the cache ttl ends)."""

    def __init__(
        self,
        settings: Settings,
        keys: _KeySource,
        algorithms: tuple[str, ...],
        *,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._keys = keys
        self._algorithms = algorithms
        self._timer = timer
        self._ttl = settings.session_cache_ttl
        # A plain dict, not a cachetools cache: a hit must cost one lookup and one compare (the hot path of
        # every request). Entries are (expires_at on the timer, principal); when full the oldest goes first.
        self._verified: dict[str, tuple[float, Principal]] = {}
        self._options: Options = {"require": ["exp"], "verify_aud": settings.jwt_audience is not None}

    async def start(self) -> None:
        await self._keys.start()

    async def authenticate(self, token: str) -> Principal:
        entry = self._verified.get(token)
        if entry is not None:
            if entry[0] > self._timer():
                return entry[1]
            self._verified.pop(token, None)
        alg, header = self._header(token)
        key = await self._keys.key_for(header, alg)
        claims = self._decode(token, key, alg)
        principal = _principal_from_claims(self._settings, claims)
        self._remember(token, principal, claims)
        return principal

    def _header(self, token: str) -> tuple[str, dict[str, Any]]:
        """The alg and header; alg none and algorithms outside the configured family are refused first."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthenticationError("The session token is malformed", reason="malformed") from None
        alg = header.get("alg")
        if isinstance(alg, str) and alg in self._algorithms:
            return alg, header
        if not isinstance(alg, str) or alg.lower() == "none":
            raise AuthenticationError(
                "The session token is unsigned (alg none), which is refused", reason="unsigned"
            )
        named = alg if _PRINTABLE_ALG.fullmatch(alg) else "an unknown algorithm"
        accepted = ", ".join(self._algorithms)
        raise AuthenticationError(
            f"The session token is signed with {named}, but only {accepted} are accepted", reason="algorithm"
        )

    def _decode(self, token: str, key: str | jwt.PyJWK, alg: str) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                key,
                algorithms=[alg],
                options=self._options,
                audience=self._settings.jwt_audience,
                issuer=self._settings.jwt_issuer,
                leeway=self._settings.jwt_leeway,
            )
        except jwt.PyJWTError as exc:
            raise _jwt_refusal(exc) from None

    def _remember(self, token: str, principal: Principal, claims: Mapping[str, Any]) -> None:
        wall = time.time()
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and nbf > wall:
            return  # accepted only thanks to the leeway: verify again next time rather than trust it early
        # exp as PyJWT validated it (int(exp)), clamped before any float arithmetic: 10**400 overflows a float.
        exp = min(int(claims["exp"]), int(wall + self._ttl) + 1)
        lifetime = min(exp - wall, self._ttl)
        if lifetime <= 0:
            return
        if len(self._verified) >= CACHE_SIZE:
            self._verified.pop(next(iter(self._verified)), None)
        self._verified[token] = (self._timer() + lifetime, principal)


# PyJWT's refusals, in the order they are tested (its errors subclass each other): the reason label and sentence.
_JWT_REFUSALS: tuple[tuple[type[jwt.PyJWTError], str, str], ...] = (
    (jwt.ExpiredSignatureError, "expired", "The session token has expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid", "The session token is not valid yet"),
    (jwt.InvalidSignatureError, "signature", "The session token's signature is invalid"),
    (jwt.MissingRequiredClaimError, "missing_claim", "The session token lacks the required {claim!r} claim"),
    (jwt.InvalidAudienceError, "audience", "The session token is meant for another audience"),
    (jwt.InvalidIssuerError, "issuer", "The session token was issued by another issuer"),
    (
        jwt.InvalidAlgorithmError,
        "algorithm",
        "The session token is signed with an algorithm its key does not allow",
    ),
    (jwt.DecodeError, "malformed", "The session token is malformed"),
)


def _jwt_refusal(exc: jwt.PyJWTError) -> AuthenticationError:
    """The 401 for a JWT that PyJWT refused: one sentence, and a reason from a fixed set for the metrics."""
    for kind, reason, sentence in _JWT_REFUSALS:
        if isinstance(exc, kind):
            return AuthenticationError(sentence.format(claim=getattr(exc, "claim", "")), reason=reason)
    return AuthenticationError("The session token is invalid")


def _principal_from_claims(settings: Settings, claims: Mapping[str, Any]) -> Principal:
    user_id = _user_id(claims.get(settings.claim_user_id))
    if user_id is None:
        raise AuthenticationError(
            f"The session token does not name a user (claim {settings.claim_user_id!r})", reason="no_user"
        )
    return Principal(
        user_id=user_id,
        email=_text(claims.get(settings.claim_email)),
        recruiter_id=_text(claims.get(settings.claim_recruiter_id)),
        role=_text(claims.get(settings.claim_role)),
        first_name=_text(claims.get(settings.claim_first_name)),
        last_name=_text(claims.get(settings.claim_last_name)),
    )


def _user_id(value: Any) -> str | None:
    # Integers are allowed too: portals keyed by a SERIAL id put numbers in their session answers.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _text(value)


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return None


# --- Introspection ------------------------------------------------------------------------------------------


class IntrospectionAuthenticator(Authenticator):
    """Asks the portal's session service about an opaque session; remembers answers, refusals more briefly."""

    def __init__(
        self,
        settings: Settings,
        url: str,
        http: httpx.AsyncClient,
        *,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._cookie = settings.session_cookie
        self._timeout = settings.portal_timeout
        self._http = http
        self._valid: TTLCache[str, Principal] = TTLCache(CACHE_SIZE, settings.session_cache_ttl, timer=timer)
        self._refused: TTLCache[str, str] = TTLCache(CACHE_SIZE, settings.session_failure_ttl, timer=timer)
        self._flight: SingleFlight[str, Principal] = SingleFlight()

    async def authenticate(self, token: str) -> Principal:
        principal = self._valid.get(token)
        if principal is not None:
            return principal
        refusal = self._refused.get(token)
        if refusal is not None:
            raise AuthenticationError(refusal, reason="refused")
        return await self._flight.run(token, lambda: self._ask(token))

    async def _ask(self, token: str) -> Principal:
        response = await self._request(token)
        if response.status_code in (401, 403):
            refusal = "The portal does not recognise this session (it may have expired or been signed out)"
            self._refused[token] = refusal
            raise AuthenticationError(refusal, reason="refused")
        if response.status_code != 200:
            log.warning("The portal session service answered %s", response.status_code)
            raise ServiceUnavailable(
                "The portal session service is failing, so the session cannot be checked"
            )
        principal = self._principal(response)
        self._valid[token] = principal
        return principal

    async def _request(self, token: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        if self._cookie:
            headers["Cookie"] = f"{self._cookie}={token}"
        try:
            return await self._http.get(self._url, headers=headers, timeout=self._timeout)
        except httpx.HTTPError as exc:
            log.warning(
                "PORTAL_SESSION_URL cannot be reached", extra={"fields": {"error": type(exc).__name__}}
            )
            raise ServiceUnavailable(
                "The portal session service cannot be reached, so the session cannot be checked"
            ) from exc

    @staticmethod
    def _principal(response: httpx.Response) -> Principal:
        try:
            answer = response.json()
        except ValueError:
            answer = None
        user_id = _user_id(answer.get("userId")) if isinstance(answer, dict) else None
        if answer is None or user_id is None:
            log.warning("The portal session service answered 200 without a JSON object carrying a userId")
            raise ServiceUnavailable("The portal session service gave an answer the proxy cannot read")
        return Principal(
            user_id=user_id,
            email=_text(answer.get("email")),
            recruiter_id=_text(answer.get("bpocRecruiterId")),
            role=_text(answer.get("role")),
            first_name=_text(answer.get("firstName")),
            last_name=_text(answer.get("lastName")),
        )
