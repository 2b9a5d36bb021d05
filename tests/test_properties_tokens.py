"""Property: a mutated session token is refused with 401 and nothing is forwarded, unless the mutation left a
token that is still genuinely valid, and then it is honoured as the user it names.

Valid tokens are minted for two proxies in front of the recording upstream: one verifying HS256/384/512 with
the shared secret (and requiring an issuer and an audience), one verifying RS256, ES256 and EdDSA with the
portal's JWKS (served by the upstream). Each is then mutated by a few steps drawn by hypothesis: header
changes (``alg`` swapped to none and its spellings, to another family, to junk; ``kid``, ``typ``, ``crit``,
``b64``), claim changes (``sub``, ``exp``, ``nbf``, ``iat``, ``iss``, ``aud``, the recruiter ID, of every JSON
type, times around the leeway), signature bit flips, re-signing (with the right key, another key, an empty
key, the RSA public key as an HMAC secret, or no signature), and then, on the text, truncation, characters
replaced, base64 padding and alphabet games, segments added, removed or doubled.

Whether the result is still valid is decided here, independently of ``proxy/auth.py``: PyJWT's ``jwt.decode``
with the settings' algorithms, key, issuer, audience, leeway and required ``exp``, and a ``sub`` that names a
user. Valid: the request is forwarded, attributed to the recruiter ID the token names (or the directory's for
its email). Not valid: 401 with ``WWW-Authenticate``, the token nowhere in the answer, nothing forwarded.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import event, example, given
from hypothesis import strategies as st
from jwt.algorithms import get_default_algorithms

from proxy.sandbox.tokens import SigningKey

from .property_support import (
    DirectoryEntry,
    RecordingUpstream,
    build_request,
    is_proxy_refusal,
    new_request_id,
    property_settings,
    proxy_env,
    rarely,
    raw_exchange,
    serve_proxy,
    serve_upstream,
    strict_loads,
    weighted,
)

#: 64 bytes: HS512 wants no less (RFC 7518 section 3.2), and PyJWT warns, which the suite turns into errors.
SECRET = "property-portal-secret-" + "0123456789abcdef" * 3
ISSUER = "https://portal.example"
AUDIENCE = "bpoc-proxy"
LEEWAY = 30
CLAIM_ID = "1d2e3f40-5a6b-4c7d-8e9f-a0b1c2d3e4f5"  # the recruiter ID the tokens carry
DIRECTORY_ID = "2e3f4051-6b7c-4d8e-9fa0-b1c2d3e4f5a6"  # the directory's, for the tokens' email
EMAIL = "nora@agency.example"
DIRECTORY = (DirectoryEntry(DIRECTORY_ID, EMAIL, "recruiter"),)
PATH = "/api/v1/jobs/create"

KEYS = {alg: SigningKey.generate(alg, kid=f"{alg.lower()}-key") for alg in ("RS256", "ES256", "EdDSA")}
STRANGER = SigningKey.generate("RS256", kid="rs256-key")  # same kid as a published key, not published itself
JWKS = {"keys": [key.public_jwk() for key in KEYS.values()]}
RSA_PUBLIC_PEM = (
    KEYS["RS256"]
    .private_key.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
)


@dataclass(frozen=True)
class Setup:
    upstream: RecordingUpstream
    proxies: dict[str, str]  # "hs" or "jwks" -> URL


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    upstream = RecordingUpstream(directory=DIRECTORY, jwks=JWKS)
    with serve_upstream(upstream) as upstream_url:
        claims_env = {
            "PORTAL_JWT_ISSUER": ISSUER,
            "PORTAL_JWT_AUDIENCE": AUDIENCE,
            "PORTAL_JWT_LEEWAY": str(LEEWAY),
        }
        jwks_env = proxy_env(upstream_url, **claims_env, PORTAL_JWKS_URL=upstream_url + upstream.jwks_path)
        del jwks_env["PORTAL_JWT_SECRET"]
        with (
            serve_proxy(proxy_env(upstream_url, **claims_env, PORTAL_JWT_SECRET=SECRET)) as hs,
            serve_proxy(jwks_env) as jwks_url,
        ):
            yield Setup(upstream, {"hs": hs, "jwks": jwks_url})


# --- The token, and the steps that change it ------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Draft:
    """A token being mutated: header and payload as JSON text, and a signature (any bytes)."""

    header: bytes
    payload: bytes
    signature: bytes

    @property
    def signing_input(self) -> bytes:
        return f"{b64(self.header)}.{b64(self.payload)}".encode()

    def text(self) -> str:
        return f"{b64(self.header)}.{b64(self.payload)}.{b64(self.signature)}"


def sign(signing_input: bytes, alg: str, key: Any) -> bytes:
    algorithm = get_default_algorithms()[alg]
    return algorithm.sign(signing_input, algorithm.prepare_key(key))


def minted(mode: str, alg: str, now: float) -> Draft:
    """A valid token: the right alg, key and kid, the user's claims, exp in an hour."""
    header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if mode == "jwks":
        header["kid"] = KEYS[alg].kid
    claims = {
        "sub": "nora",
        "email": EMAIL,
        "bpoc_recruiter_id": CLAIM_ID,
        "role": "recruiter",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": int(now) - 5,
        "nbf": int(now) - 5,
        "exp": int(now) + 3600,
    }
    draft = Draft(json.dumps(header).encode(), json.dumps(claims).encode(), b"")
    key = SECRET if mode == "hs" else KEYS[alg].private_key
    draft.signature = sign(draft.signing_input, alg, key)
    return draft


# A step is data (drawn by hypothesis), applied when the test runs: times are relative to the clock then.
Step = tuple[Any, ...]

ALGS = [
    "none",
    "None",
    "NONE",
    "nOnE",
    "HS256",
    "HS384",
    "HS512",
    "RS256",
    "RS384",
    "PS256",
    "ES256",
    "ES512",
]
ALGS += ["EdDSA", "", "hs256", "HS256 "]
# Away from now +- the 30 s leeway, so that the proxy and the oracle, a moment apart, agree; 10**400 is an exp
# PyJWT accepts that no float can hold.
TIME_OFFSETS = [-(10**9), -86400, -3600, -120, 120, 3600, 86400, 10**9, 10**400]
HEADER_VALUES: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from(ALGS),
    st.sampled_from([None, 1, True, [], {}, ["HS256"], "rs256-key", "es256-key", "eddsa-key", "unknown-kid"]),
    st.text(max_size=8),
)
CLAIM_VALUES: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from(TIME_OFFSETS).map(lambda offset: ("time", offset)),
    st.sampled_from([10**30, 10**400, -1, 0, 1.5, "9999999999", " 9999999999 ", "soon", True, None, [], {}]),
    st.sampled_from([ISSUER, AUDIENCE, [AUDIENCE, "x"], ["x"], CLAIM_ID, " " + CLAIM_ID + " ", "", "  ", 42]),
    st.sampled_from(["alice", EMAIL, EMAIL.upper(), "mallory@other.example", "admin"]),
    st.text(max_size=10),
)
HEADER_KEYS = ["alg", "kid", "typ", "crit", "b64", "jku", "x5u", "zip"]
CLAIM_KEYS = ["sub", "exp", "nbf", "iat", "iss", "aud", "email", "bpoc_recruiter_id", "role", "jti"]
SIGNERS = [
    "right",
    "right-key-wrong-alg",
    "other-secret",
    "empty-secret",
    "public-key-as-hmac",
    "stranger",
    "none",
]
TEXT_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/.~!"


STRUCTURAL: st.SearchStrategy[Step] = st.one_of(
    st.tuples(st.just("header"), st.sampled_from(HEADER_KEYS), HEADER_VALUES),
    st.tuples(st.just("header-delete"), st.sampled_from(HEADER_KEYS)),
    st.tuples(st.just("claim"), st.sampled_from(CLAIM_KEYS), CLAIM_VALUES),
    st.tuples(st.just("claim-delete"), st.sampled_from(CLAIM_KEYS)),
    st.tuples(st.just("flip"), st.integers(0, 10_000)),
    st.tuples(st.just("resign"), st.sampled_from(SIGNERS)),
    st.tuples(
        st.just("raw-header"), st.sampled_from(["dup-alg-none", "dup-alg-hs", "array", "not-json", "spaced"])
    ),
    st.tuples(st.just("raw-payload"), st.sampled_from(["dup-sub", "array", "not-json", "nan-exp", "spaced"])),
)
TEXTUAL: st.SearchStrategy[Step] = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 2000)),
    st.tuples(st.just("replace"), st.integers(0, 2000), st.sampled_from(TEXT_ALPHABET)),
    st.tuples(st.just("pad"), st.integers(0, 2), st.sampled_from(["=", "==", "==="])),
    st.tuples(st.just("standard-alphabet"), st.integers(0, 2)),
    st.tuples(
        st.just("segments"), st.sampled_from(["add", "drop-dot", "double-dot", "trailing-dot", "leading-dot"])
    ),
)


@dataclass(frozen=True)
class TokenCase:
    mode: str  # "hs" or "jwks"
    alg: str  # the algorithm it was minted with
    structural: tuple[Step, ...]
    textual: tuple[Step, ...]

    def build(self, now: float) -> str:
        draft = minted(self.mode, self.alg, now)
        for step in self.structural:
            _apply(draft, step, self, now)
        token = draft.text()
        for step in self.textual:
            token = _apply_text(token, step)
        return token


@st.composite
def token_cases(draw: st.DrawFn, mode: str) -> TokenCase:
    alg = draw(st.sampled_from(["HS256", "HS384", "HS512"] if mode == "hs" else list(KEYS)))
    structural = draw(st.lists(STRUCTURAL, max_size=3))
    if rarely(draw, 3):  # signed again at the end: the mutated token may well be valid
        structural.append(("resign", weighted(draw, (4, "right"), (1, draw(st.sampled_from(SIGNERS))))))
    textual = draw(st.lists(TEXTUAL, max_size=2)) if rarely(draw, 3) else []
    return TokenCase(mode, alg, tuple(structural), tuple(textual))


def _apply(draft: Draft, step: Step, case: TokenCase, now: float) -> None:
    kind = step[0]
    if kind in ("header", "header-delete", "claim", "claim-delete"):
        part = "header" if kind.startswith("header") else "payload"
        try:
            document = json.loads(getattr(draft, part))
        except ValueError:
            return  # a raw step made it something else; leave it
        if not isinstance(document, dict):
            return
        if kind.endswith("delete"):
            document.pop(step[1], None)
        else:
            value = step[2]
            document[step[1]] = int(now) + value[1] if isinstance(value, tuple) else value
        setattr(draft, part, json.dumps(document).encode())
    elif kind == "flip":
        if draft.signature:
            bit = step[1] % (len(draft.signature) * 8)
            signature = bytearray(draft.signature)
            signature[bit // 8] ^= 1 << (bit % 8)
            draft.signature = bytes(signature)
    elif kind == "resign":
        draft.signature = _signature(draft, step[1], case)
    elif kind == "raw-header":
        draft.header = {
            "dup-alg-none": b'{"alg":"%s","alg":"none"}' % case.alg.encode(),
            "dup-alg-hs": b'{"alg":"none","alg":"%s"}' % case.alg.encode(),
            "array": b'["%s"]' % case.alg.encode(),
            "not-json": b"alg=" + case.alg.encode(),
            "spaced": b' {\n "alg" : "%s" } ' % case.alg.encode(),
        }[step[1]]
    elif kind == "raw-payload":
        text = draft.payload.decode()
        draft.payload = {
            "dup-sub": text[:-1].encode() + b', "sub": "alice"}',
            "array": b"[" + draft.payload + b"]",
            "not-json": b"sub=alice",
            "nan-exp": text[:-1].encode() + b', "exp": NaN}',
            "spaced": b"\n " + draft.payload + b" \t",
        }[step[1]]


def _signature(draft: Draft, signer: str, case: TokenCase) -> bytes:
    """A new signature over the draft as it is now."""
    message = draft.signing_input
    try:
        header_alg = json.loads(draft.header).get("alg")
    except (ValueError, AttributeError):
        header_alg = None
    if signer == "none":
        return b""
    if signer == "public-key-as-hmac":  # the classic confusion: HS256 keyed with the published RSA key
        return hmac.new(RSA_PUBLIC_PEM, message, hashlib.sha256).digest()
    if signer in ("other-secret", "empty-secret"):
        secret = b"another-portal-secret-0123456789abcdef" if signer == "other-secret" else b""
        return hmac.new(secret, message, hashlib.sha256).digest()
    if signer == "stranger":
        return sign(message, "RS256", STRANGER.private_key)
    # The right key, with the alg the header names when that key signs with it, else with the key's own
    # ("right"), or deliberately with another alg of the same key ("right-key-wrong-alg").
    if case.mode == "hs":
        named = header_alg if header_alg in ("HS256", "HS384", "HS512") else "HS256"
        wrong = {"HS256": "HS512", "HS384": "HS256", "HS512": "HS384"}[named]
        return sign(message, named if signer == "right" else wrong, SECRET)
    key = KEYS[case.alg]
    if signer == "right" or key.alg == "EdDSA":  # Ed25519 signs one way only
        return sign(message, key.alg, key.private_key)
    if isinstance(key.private_key, ec.EllipticCurvePrivateKey):  # ASN.1 DER, where JOSE wants r || s
        return key.private_key.sign(message, ec.ECDSA(hashes.SHA256()))
    return sign(message, "PS256", key.private_key)  # the RSA key, with PSS padding


def _apply_text(token: str, step: Step) -> str:
    kind = step[0]
    if kind == "truncate":
        return token[: step[1] % (len(token) + 1)]
    if kind == "replace":
        if not token:
            return token
        at = step[1] % len(token)
        return f"{token[:at]}{step[2]}{token[at + 1 :]}"
    parts = token.split(".")
    if kind == "pad":
        index = step[1] % len(parts)
        parts[index] += step[2]
        return ".".join(parts)
    if kind == "standard-alphabet":
        index = step[1] % len(parts)
        parts[index] = parts[index].replace("-", "+").replace("_", "/")
        return ".".join(parts)
    return {
        "add": token + ".e30",
        "drop-dot": token.replace(".", "", 1),
        "double-dot": token.replace(".", "..", 1),
        "trailing-dot": token + ".",
        "leading-dot": "." + token,
    }[step[1]]


# --- The oracle -------------------------------------------------------------------------------------------------


def genuinely_valid(mode: str, token: str) -> dict[str, Any] | None:
    """The token's claims if it is a valid session for these settings, decided with PyJWT alone."""
    claims: dict[str, Any] | None
    try:
        if mode == "hs":
            claims = _decode(token, SECRET, ["HS256", "HS384", "HS512"])
        else:
            claims = _decode_with_jwks(token)
    except jwt.PyJWTError:
        return None
    if claims is None:
        return None
    sub = claims.get("sub")
    names_a_user = (isinstance(sub, str) and sub.strip() != "") or (
        isinstance(sub, int) and not isinstance(sub, bool)
    )
    return claims if names_a_user else None


def _decode(token: str, key: Any, algorithms: list[str]) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(
        token,
        key,
        algorithms=algorithms,
        options={"require": ["exp"]},
        issuer=ISSUER,
        audience=AUDIENCE,
        leeway=LEEWAY,
    )
    return claims


def _decode_with_jwks(token: str) -> dict[str, Any] | None:
    """Valid if a published key, named by the kid (or the only one of the header's alg when there is no kid),
    verifies it with that key's own algorithm."""
    header = jwt.get_unverified_header(token)
    kid = header.get("kid")
    candidates = [
        k for k in KEYS.values() if (k.kid == kid if kid is not None else k.alg == header.get("alg"))
    ]
    for key in candidates:
        try:
            return _decode(token, key.private_key.public_key(), [key.alg])
        except jwt.PyJWTError:
            continue
    return None


def expected_recruiter(claims: dict[str, Any]) -> str | None:
    """Whom a valid token's request is attributed to: its recruiter claim, else the directory's entry for its
    email; None when neither names anyone (then a 403)."""
    claimed = claims.get("bpoc_recruiter_id")
    if isinstance(claimed, str) and claimed.strip():
        return claimed.strip()
    email = claims.get("email")
    if isinstance(email, str) and email.strip().lower() == EMAIL:
        return DIRECTORY_ID
    return None


# --- The property -------------------------------------------------------------------------------------------------


def check(setup: Setup, case: TokenCase) -> None:
    token = case.build(time.time())
    claims = genuinely_valid(case.mode, token)
    request_id = new_request_id()
    headers = [
        ("Authorization", f"Bearer {token}"),
        ("X-Request-Id", request_id),
        ("Content-Type", "application/json"),
    ]
    answer = raw_exchange(setup.proxies[case.mode], build_request("POST", PATH, headers, b'{"title":"t"}'))
    received = setup.upstream.received_for(request_id)
    assert len(token) < 16 or token.encode() not in answer.body, "the token came back in the answer"
    if claims is None:
        event("refused (not valid)")
        assert answer.status == 401, f"a token that is not valid got a {answer.status}: {answer.body[:300]!r}"
        assert is_proxy_refusal(answer, request_id)
        assert (answer.header("www-authenticate") or "").startswith("Bearer")
        assert received == [], "a token that is not valid got a request forwarded"
        return
    event("still valid")
    recruiter = expected_recruiter(claims)
    if recruiter is None:
        assert answer.status == 403 and received == [], answer.status
        return
    assert answer.status == 200, f"a valid token got a {answer.status}: {answer.body[:300]!r}"
    assert len(received) == 1
    body = strict_loads(received[0].body)
    assert body["postedBy"] == recruiter


@property_settings(300)
@given(case=token_cases("hs"))
@example(case=TokenCase("hs", "HS512", (("claim", "exp", ("time", 10**400)), ("resign", "right")), ()))
def test_mutated_hs256_sessions(setup: Setup, case: TokenCase) -> None:
    """HS256/384/512 sessions: a mutation is refused with 401 and forwards nothing, unless still valid."""
    check(setup, case)


@property_settings(200)
@given(case=token_cases("jwks"))
def test_mutated_jwks_sessions(setup: Setup, case: TokenCase) -> None:
    """RS256/ES256/EdDSA sessions from a JWKS, alg confusion included: the same."""
    check(setup, case)


def test_the_oracle_accepts_what_is_valid_and_only_that() -> None:
    """The oracle is not vacuous: a freshly minted token is valid in either mode, its mutations mostly not."""
    now = time.time()
    for mode, alg in (("hs", "HS256"), ("jwks", "RS256"), ("jwks", "EdDSA")):
        token = TokenCase(mode, alg, (), ()).build(now)
        assert genuinely_valid(mode, token) is not None
        flipped = TokenCase(mode, alg, (("flip", 3),), ()).build(now)
        assert genuinely_valid(mode, flipped) is None
    confused = TokenCase("jwks", "RS256", (("header", "alg", "HS256"), ("resign", "public-key-as-hmac")), ())
    assert genuinely_valid("jwks", confused.build(now)) is None
    resigned = TokenCase("hs", "HS256", (("claim", "sub", "alice"), ("resign", "right")), ()).build(now)
    assert (genuinely_valid("hs", resigned) or {}).get("sub") == "alice"
