"""The portal session: find it on the request, verify it, and turn it into a Principal (the portal user).

Three ways to verify, chosen by ``Settings.auth_mode``::

    jwt_secret     a JWT signed with PORTAL_JWT_SECRET (HS256/384/512)
    jwks           a JWT signed with a key from PORTAL_JWKS_URL (RS256, ES256, EdDSA); unknown kid -> refetch
    introspection  an opaque session, asked about with a GET to PORTAL_SESSION_URL

A bad session is an AuthenticationError (401); a portal that cannot be asked is ServiceUnavailable (503).
A token is never logged and never part of a message.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import httpx
import jwt
from cachetools import TTLCache
from jwt.types import Options

from .errors import AuthenticationError, ConfigError, ServiceUnavailable
from .settings import Settings

log = logging.getLogger("proxy.auth")

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
JWKS_ALGORITHMS = ("RS256", "ES256", "EdDSA")
#: Bound on remembered sessions, so a flood of distinct tokens cannot grow memory without limit.
CACHE_SIZE = 10_000
#: An unknown kid refetches the key set at most this often (seconds): rotation is rare, forged kids are cheap.
JWKS_REFETCH_INTERVAL = 60.0
#: With no keys at all, a failed key-set fetch is not retried sooner than this: a down portal is not hammered.
JWKS_RETRY_AFTER_FAILURE = 1.0

_KEYS_UNAVAILABLE = "the portal's signing keys cannot be fetched, so the session cannot be checked"
_PRINTABLE_ALG = re.compile(r"[A-Za-z0-9+_-]{1,20}")

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


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
    if settings.auth_mode == "jwt_secret":
        if not settings.jwt_secret:
            raise ConfigError("PORTAL_JWT_SECRET is missing; it is needed to verify portal sessions")
        if len(settings.jwt_secret.encode()) < 32:
            log.warning(
                "PORTAL_JWT_SECRET is shorter than 32 bytes; HS256 wants at least 32 (RFC 7518 section 3.2)"
            )
        return JwtAuthenticator(settings, _SecretKey(settings.jwt_secret), HMAC_ALGORITHMS, timer=timer)
    if settings.auth_mode == "jwks":
        if not settings.jwks_url:
            raise ConfigError("PORTAL_JWKS_URL is missing; it is needed to verify portal sessions")
        keys = JwksKeys(settings.jwks_url, http, settings.portal_timeout, timer=timer)
        return JwtAuthenticator(settings, keys, JWKS_ALGORITHMS, timer=timer)
    if not settings.session_url:
        raise ConfigError("PORTAL_SESSION_URL is missing; it is needed to verify portal sessions")
    return IntrospectionAuthenticator(settings, http, timer=timer)


class SingleFlight(Generic[K, V]):
    """Concurrent calls for the same key share one run of the work, and all get its result or its error.

    The work runs in its own task, so a caller that goes away (cancelled) does not cancel it for the others.
    """

    def __init__(self) -> None:
        self._running: dict[K, asyncio.Future[V]] = {}

    def __contains__(self, key: K) -> bool:
        return key in self._running

    async def run(self, key: K, work: Callable[[], Awaitable[V]]) -> V:
        future = self._running.get(key)
        if future is None:
            future = asyncio.ensure_future(self._work(key, work))
            self._running[key] = future
        # shield: one waiter being cancelled must not cancel the shared work.
        return await asyncio.shield(future)

    async def _work(self, key: K, work: Callable[[], Awaitable[V]]) -> V:
        try:
            return await work()
        finally:
            del self._running[key]


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
            raise AuthenticationError("the session token is malformed") from None
        alg = header.get("alg")
        if isinstance(alg, str) and alg in self._algorithms:
            return alg, header
        if not isinstance(alg, str) or alg.lower() == "none":
            raise AuthenticationError("the session token is unsigned (alg none), which is refused")
        named = alg if _PRINTABLE_ALG.fullmatch(alg) else "an unknown algorithm"
        accepted = ", ".join(self._algorithms)
        raise AuthenticationError(
            f"the session token is signed with {named}, but only {accepted} are accepted"
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
            raise AuthenticationError(_jwt_refusal(exc)) from None

    def _remember(self, token: str, principal: Principal, claims: Mapping[str, Any]) -> None:
        wall = time.time()
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and nbf > wall:
            return  # accepted only thanks to the leeway: verify again next time rather than trust it early
        lifetime = min(float(claims["exp"]) - wall, self._ttl)
        if lifetime <= 0:
            return
        if len(self._verified) >= CACHE_SIZE:
            self._verified.pop(next(iter(self._verified)), None)
        self._verified[token] = (self._timer() + lifetime, principal)


def _jwt_refusal(exc: jwt.PyJWTError) -> str:
    """One sentence for a refused JWT; the order matters, as PyJWT's errors subclass each other."""
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "the session token has expired"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "the session token is not valid yet"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "the session token's signature is invalid"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"the session token lacks the required {exc.claim!r} claim"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "the session token is meant for another audience"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "the session token was issued by another issuer"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "the session token is signed with an algorithm its key does not allow"
    if isinstance(exc, jwt.DecodeError):
        return "the session token is malformed"
    return "the session token is invalid"


def _principal_from_claims(settings: Settings, claims: Mapping[str, Any]) -> Principal:
    user_id = _user_id(claims.get(settings.claim_user_id))
    if user_id is None:
        raise AuthenticationError(
            f"the session token does not name a user (claim {settings.claim_user_id!r})"
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


class JwksKeys:
    """The portal's public keys, fetched lazily from PORTAL_JWKS_URL and again when an unknown kid appears."""

    def __init__(
        self,
        url: str,
        http: httpx.AsyncClient,
        timeout: float,
        *,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._http = http
        self._timeout = timeout
        self._timer = timer
        self._keys: list[jwt.PyJWK] = []
        self._last_attempt: float | None = None
        self._last_failed = False
        self._flight: SingleFlight[str, None] = SingleFlight()

    async def start(self) -> None:
        try:
            await self._refetch()
        except ServiceUnavailable:
            pass  # logged by _fetch; requests will try again

    async def key_for(self, header: Mapping[str, Any], alg: str) -> str | jwt.PyJWK:
        kid = header.get("kid")
        key = self._find(kid, alg)
        if key is not None:
            return key
        if not self._keys:
            if not self._may_retry_empty():
                raise ServiceUnavailable(_KEYS_UNAVAILABLE)
            await self._refetch()  # raises ServiceUnavailable: nothing to verify with
        elif self._may_refetch():
            try:
                await self._refetch()
            except ServiceUnavailable:
                pass  # keep the keys we have; the unknown kid is refused below
        key = self._find(kid, alg)
        if key is None:
            raise AuthenticationError("the session token is signed with a key the portal does not publish")
        return key

    def _find(self, kid: Any, alg: str) -> jwt.PyJWK | None:
        if kid is None:
            # No kid: acceptable only when exactly one key could have signed it.
            usable = [key for key in self._keys if key.algorithm_name == alg]
            return usable[0] if len(usable) == 1 else None
        named = [key for key in self._keys if key.key_id == kid]
        return next((key for key in named if key.algorithm_name == alg), named[0] if named else None)

    def _may_refetch(self) -> bool:
        return "jwks" in self._flight or (
            self._last_attempt is None or self._timer() - self._last_attempt >= JWKS_REFETCH_INTERVAL
        )

    def _may_retry_empty(self) -> bool:
        return (
            "jwks" in self._flight
            or self._last_attempt is None
            or not self._last_failed
            or self._timer() - self._last_attempt >= JWKS_RETRY_AFTER_FAILURE
        )

    async def _refetch(self) -> None:
        await self._flight.run("jwks", self._fetch)

    async def _fetch(self) -> None:
        self._last_attempt = self._timer()
        try:
            keys = await self._download()
        except ServiceUnavailable as exc:
            self._last_failed = True
            log.warning(
                "could not fetch the portal's signing keys", extra={"fields": {"reason": exc.message}}
            )
            raise
        self._last_failed = False
        added = {key.key_id for key in keys} - {key.key_id for key in self._keys}
        self._keys = keys
        log.info(
            "fetched the portal's signing keys", extra={"fields": {"keys": len(keys), "new": len(added)}}
        )

    async def _download(self) -> list[jwt.PyJWK]:
        try:
            response = await self._http.get(self._url, timeout=self._timeout)
        except httpx.HTTPError as exc:
            log.warning("PORTAL_JWKS_URL cannot be reached", extra={"fields": {"error": type(exc).__name__}})
            raise ServiceUnavailable(_KEYS_UNAVAILABLE) from exc
        if response.status_code != 200:
            log.warning("PORTAL_JWKS_URL answered %s", response.status_code)
            raise ServiceUnavailable(_KEYS_UNAVAILABLE)
        try:
            document = response.json()
            keys = jwt.PyJWKSet.from_dict(document).keys if isinstance(document, dict) else []
        except (ValueError, jwt.PyJWTError):
            keys = []
        # Keys meant for encryption do not sign sessions (RFC 7517 section 4.2).
        keys = [key for key in keys if key.public_key_use in (None, "sig")]
        if not keys:
            log.warning("PORTAL_JWKS_URL did not answer with a JWK set holding a usable signing key")
            raise ServiceUnavailable(_KEYS_UNAVAILABLE)
        return keys


# --- Introspection ------------------------------------------------------------------------------------------


class IntrospectionAuthenticator(Authenticator):
    """Asks the portal's session service about an opaque session; remembers answers, refusals more briefly."""

    def __init__(
        self, settings: Settings, http: httpx.AsyncClient, *, timer: Callable[[], float] = time.monotonic
    ) -> None:
        if settings.session_url is None:
            raise ConfigError("PORTAL_SESSION_URL is missing; it is needed to verify portal sessions")
        self._url = settings.session_url
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
            raise AuthenticationError(refusal)
        return await self._flight.run(token, lambda: self._ask(token))

    async def _ask(self, token: str) -> Principal:
        response = await self._request(token)
        if response.status_code in (401, 403):
            refusal = "the portal does not recognise this session (it may have expired or been signed out)"
            self._refused[token] = refusal
            raise AuthenticationError(refusal)
        if response.status_code != 200:
            log.warning("the portal session service answered %s", response.status_code)
            raise ServiceUnavailable(
                "the portal session service is failing, so the session cannot be checked"
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
                "the portal session service cannot be reached, so the session cannot be checked"
            ) from exc

    @staticmethod
    def _principal(response: httpx.Response) -> Principal:
        try:
            answer = response.json()
        except ValueError:
            answer = None
        user_id = _user_id(answer.get("userId")) if isinstance(answer, dict) else None
        if answer is None or user_id is None:
            log.warning("the portal session service answered 200 without a JSON object carrying a userId")
            raise ServiceUnavailable("the portal session service gave an answer the proxy cannot read")
        return Principal(
            user_id=user_id,
            email=_text(answer.get("email")),
            recruiter_id=_text(answer.get("bpocRecruiterId")),
            role=_text(answer.get("role")),
            first_name=_text(answer.get("firstName")),
            last_name=_text(answer.get("lastName")),
        )
