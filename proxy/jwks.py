"""The portal's JWT signing keys, fetched from PORTAL_JWKS_URL (RFC 7517) for ``auth_mode`` jwks."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import jwt

from .errors import AuthenticationError, ServiceUnavailable
from .singleflight import SingleFlight

# The logger of proxy.auth, as before the key set had its own module: log readers filter on it.
log = logging.getLogger("proxy.auth")

#: An unknown kid refetches the key set at most this often (seconds): rotation is rare, forged kids are cheap.
JWKS_REFETCH_INTERVAL = 60.0
#: With no keys at all, a failed key-set fetch is not retried sooner than this: a down portal is not hammered.
JWKS_RETRY_AFTER_FAILURE = 1.0

_KEYS_UNAVAILABLE = "The portal's signing keys cannot be fetched, so the session cannot be checked"


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
            raise AuthenticationError(
                "The session token is signed with a key the portal does not publish", reason="unknown_key"
            )
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
