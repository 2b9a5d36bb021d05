"""A fake agency portal: opaque-session introspection and a JWKS, each with a call counter and a 503 switch.

``GET /session`` answers for ``Authorization: Bearer <token>`` or the ``portal_session`` cookie with the
session stored in ``state.sessions``; ``GET /.well-known/jwks.json`` publishes the public ``state.keys``.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .tokens import AsymmetricAlg, SigningKey

SESSION_COOKIE = "portal_session"


class PortalState:
    """The portal's sessions and signing keys, call counters ("session", "jwks") and switches."""

    def __init__(self, keys: list[SigningKey] | None = None) -> None:
        self.sessions: dict[str, dict[str, Any]] = {}
        self.keys: list[SigningKey] = list(keys or [])
        self.calls: Counter[str] = Counter()
        self.down = False
        self.delay = 0.0
        self.lock = threading.Lock()

    @classmethod
    def with_keys(cls, *algs: AsymmetricAlg) -> PortalState:
        """A portal with one fresh key per algorithm: ``with_keys("RS256", "ES256", "EdDSA")``."""
        return cls([SigningKey.generate(alg) for alg in algs])

    def add_session(
        self,
        token: str,
        *,
        user_id: str,
        email: str,
        recruiter_id: str | None = None,
        role: str = "recruiter",
        first_name: str | None = None,
        last_name: str | None = None,
    ) -> dict[str, Any]:
        session = {"userId": user_id, "email": email, "role": role, "bpocRecruiterId": recruiter_id}
        session |= {"firstName": first_name, "lastName": last_name}
        session = {name: value for name, value in session.items() if value is not None}
        with self.lock:
            self.sessions[token] = session
        return session

    def revoke(self, token: str) -> None:
        with self.lock:
            self.sessions.pop(token, None)

    def rotate(self, alg: AsymmetricAlg = "RS256", *, drop_old: bool = False) -> SigningKey:
        """Add a new key with a new kid (and drop the old ones if asked); returns the new key."""
        key = SigningKey.generate(alg)
        with self.lock:
            self.keys = [key] if drop_old else [*self.keys, key]
        return key

    def key(self, kid: str) -> SigningKey:
        with self.lock:
            return next(key for key in self.keys if key.kid == kid)

    def jwks(self) -> dict[str, Any]:
        with self.lock:
            keys = list(self.keys)
        return {"keys": [key.public_jwk() for key in keys]}

    def session(self, token: str) -> dict[str, Any] | None:
        with self.lock:
            found = self.sessions.get(token)
            return None if found is None else dict(found)

    def count(self, endpoint: str) -> None:
        with self.lock:
            self.calls[endpoint] += 1


def create_portal_app(state: PortalState) -> Starlette:
    async def session(request: Request) -> Response:
        return await _gated(state, "session") or _introspect(state, request)

    async def jwks(request: Request) -> Response:
        return await _gated(state, "jwks") or JSONResponse(
            state.jwks(), headers={"cache-control": "max-age=300"}
        )

    return Starlette(
        routes=[
            Route("/session", session, methods=["GET"]),
            Route("/.well-known/jwks.json", jwks, methods=["GET"]),
        ]
    )


async def _gated(state: PortalState, endpoint: str) -> Response | None:
    """Count the call, wait ``state.delay``, answer 503 while ``state.down``; None lets the call through."""
    state.count(endpoint)
    if state.delay > 0:
        await asyncio.sleep(state.delay)
    if state.down:
        return JSONResponse({"error": "portal unavailable"}, 503)
    return None


def _introspect(state: PortalState, request: Request) -> Response:
    token = _token(request)
    found = None if token is None else state.session(token)
    if found is None:
        headers = {"www-authenticate": 'Bearer realm="portal"'}
        return JSONResponse({"error": "invalid or expired session"}, 401, headers)
    return JSONResponse(found)


def _token(request: Request) -> str | None:
    authorization = request.headers.get("authorization")
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        return token.strip() or None if scheme.lower() == "bearer" else None
    return request.cookies.get(SESSION_COOKIE)
