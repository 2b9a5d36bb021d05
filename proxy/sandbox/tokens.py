"""Portal session tokens for the demo and tests: HMAC, asymmetric (with a ``kid``), hostile ``alg: none``.

Claims use the proxy's default names (``sub``, ``email``, ``bpoc_recruiter_id``, ``role``, ``given_name``,
``family_name``); ``extra`` adds or overrides any claim, and a claim set to None in ``extra`` is left out.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal, Required, TypedDict, Unpack

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

AsymmetricAlg = Literal["RS256", "ES256", "EdDSA"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class ClaimOptions(TypedDict, total=False):
    sub: Required[str]
    email: Required[str]
    recruiter_id: str | None
    role: str | None
    first_name: str | None
    last_name: str | None
    exp_in: float | None  # seconds from now; None leaves ``exp`` out
    nbf: float | None  # an absolute epoch time, as in the claim
    iss: str | None
    aud: str | list[str] | None
    extra: dict[str, Any] | None
    now: float | None  # the clock, for tests of expiry; default time.time()


@dataclass(frozen=True)
class SigningKey:
    """A portal signing key: the private half signs tokens, ``public_jwk()`` goes into the JWKS."""

    kid: str
    alg: AsymmetricAlg
    private_key: PrivateKey

    @classmethod
    def generate(cls, alg: AsymmetricAlg = "RS256", kid: str | None = None) -> SigningKey:
        return cls(kid or f"{alg.lower()}-{uuid.uuid4().hex[:12]}", alg, _generate_private_key(alg))

    def public_jwk(self) -> dict[str, Any]:
        public = self.private_key.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        elif isinstance(public, ec.EllipticCurvePublicKey):
            jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}


def _generate_private_key(alg: AsymmetricAlg) -> PrivateKey:
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


def claims(**options: Unpack[ClaimOptions]) -> dict[str, Any]:
    """The payload the mint functions sign."""
    now = options.get("now") or time.time()
    optional = {
        "bpoc_recruiter_id": options.get("recruiter_id"),
        "role": options.get("role"),
        "given_name": options.get("first_name"),
        "family_name": options.get("last_name"),
        "nbf": options.get("nbf"),
        "iss": options.get("iss"),
        "aud": options.get("aud"),
    }
    exp_in = options.get("exp_in", 3600)
    if exp_in is not None:
        optional["exp"] = int(now + exp_in)
    payload = {"sub": options["sub"], "email": options["email"], "iat": int(now), **optional}
    payload.update(options.get("extra") or {})
    return {name: value for name, value in payload.items() if value is not None}


def mint_hs(secret: str | bytes, *, alg: str = "HS256", **options: Unpack[ClaimOptions]) -> str:
    """A token signed with the shared secret (HS256, HS384 or HS512)."""
    return jwt.encode(claims(**options), secret, algorithm=alg)


def mint_with_key(
    key: SigningKey,
    *,
    kid: str | None = None,
    headers: dict[str, Any] | None = None,
    **options: Unpack[ClaimOptions],
) -> str:
    """A token signed with ``key``; the ``kid`` header is the key's unless given (a wrong kid is a test)."""
    header = {"kid": kid or key.kid, **(headers or {})}
    return jwt.encode(claims(**options), key.private_key, algorithm=key.alg, headers=header)


def mint_alg_none(*, alg: str = "none", **options: Unpack[ClaimOptions]) -> str:
    """An unsigned token (``header.payload.``) that a verifier must refuse; vary ``alg`` ("None", "NONE")."""
    header = {"alg": alg, "typ": "JWT"}
    return f"{_b64(header)}.{_b64(claims(**options))}."


def _b64(value: dict[str, Any]) -> str:
    raw = json.dumps(value, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
