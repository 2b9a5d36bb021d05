"""`bpoc-proxy explain` and the live proxy agree: the same request gives the same outcome, status and body sent.

Each case goes through a running proxy in front of the sandbox BPOC (what BPOC received is the truth) and through
`explain` with the same session facts: once with the facts carried by the session (recruiter ID and role claims;
explain offline with --recruiter-id and --role), once with an email only (explain --directory reads the
sandbox's directory as the proxy does).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.cli import main
from proxy.sandbox.seed import ALICE_ID, BOB_ID, IVAN_ID, MARIA_ID, BpocState

from .conftest import ROOT, ProxyFactory, base_env, token_for

JOB = "3f0b6c2e-8a9d-4f5e-9b1a-2c3d4e5f6a7b"
APP = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"
TASK = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
PEOPLE = {"alice": (ALICE_ID, "admin"), "bob": (BOB_ID, "recruiter"), "maria": (MARIA_ID, "manager")}
DENY_RULES = (ROOT / "rules.yaml").read_text().replace("unlisted: forward", "unlisted: deny")


@dataclass(frozen=True)
class Case:
    method: str
    target: str
    who: str
    body: bytes = b""
    content_type: str | None = "application/json"
    rules: str | None = None  # None: the shipped rules.yaml


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


CASES = {
    # Every route of the guide.
    "jobs-create": Case(
        "POST", "/api/v1/jobs/create", "alice", _json({"title": "Dev", "postedBy": "forged"})
    ),
    "jobs-approve": Case("POST", f"/api/v1/jobs/{JOB}/approve", "maria", _json({})),
    "release": Case("POST", f"/api/v1/applications/{APP}/release", "bob", _json({"notes": "Great"})),
    "reject": Case("POST", f"/api/v1/applications/{APP}/reject", "bob", _json({"reason": "Skills"})),
    "interviews": Case(
        "POST", "/api/v1/interviews", "bob", _json({"applicationId": APP, "interviewerId": MARIA_ID})
    ),
    "onboarding": Case("POST", "/api/v1/onboarding", "bob", _json({"applicationId": APP, "tasks": []})),
    "onboarding-review": Case("PUT", f"/api/v1/onboarding/{TASK}", "bob", _json({"action": "approve"})),
    # Forwarded as they are, or normalised.
    "unlisted-forward": Case("GET", "/api/v1/jobs?page=2", "bob", content_type=None),
    "route-with-role": Case("POST", "/api/v1/team/invite", "alice", _json({"email": "x@agency.example"})),
    "normalised-path": Case("POST", "/api/v1//jobs/./create/", "bob", _json({"title": "Dev"})),
    "empty-body": Case("POST", "/api/v1/onboarding", "bob", content_type=None),
    # Refused.
    "query-field": Case("POST", "/api/v1/jobs/create?postedBy=x", "bob", _json({"title": "Dev"})),
    "bad-json": Case("POST", "/api/v1/jobs/create", "bob", b'{"title": '),
    "not-an-object": Case("POST", "/api/v1/jobs/create", "bob", b"[1, 2]"),
    "duplicate-key": Case("POST", "/api/v1/jobs/create", "bob", b'{"postedBy": "a", "postedBy": "b"}'),
    "non-json-type": Case(
        "POST", "/api/v1/jobs/create", "bob", b"title=Dev", "application/x-www-form-urlencoded"
    ),
    "enforce-mismatch": Case(
        "POST", f"/api/v1/applications/{APP}/release", "bob", _json({"releasedBy": ALICE_ID})
    ),
    "role-gate": Case("POST", f"/api/v1/jobs/{JOB}/approve", "bob", _json({})),
    "route-role-gate": Case("POST", "/api/v1/recruiters/create", "bob", _json({"email": "x@agency.example"})),
    "unlisted-deny": Case("GET", "/api/v1/jobs", "bob", content_type=None, rules=DENY_RULES),
    "encoded-slash": Case("POST", "/api/v1/jobs%2Fcreate", "bob", _json({})),
    "too-large": Case("POST", "/api/v1/jobs/create", "bob", _json({"title": "x" * 300})),
}
# Offline, explain cannot know whether a recruiter the body names is active: it says so instead of deciding.
NEEDS_DIRECTORY = {
    "reference-inactive": Case("POST", "/api/v1/interviews", "bob", _json({"interviewerId": IVAN_ID})),
}


@dataclass(frozen=True)
class Outcome:
    outcome: str
    status: int | None
    body: object  # the JSON BPOC received on a rule route (None when forwarded unchanged or refused)


def _live(proxy_url: str, state: BpocState, case: Case, *, carried: bool) -> Outcome:
    recruiter_id, role = PEOPLE[case.who]
    claims: dict[str, Any] = {"bpoc_recruiter_id": recruiter_id, "role": role} if carried else {}
    headers = {"Authorization": f"Bearer {token_for(f'{case.who}@agency.example', **claims)}"}
    if case.content_type:
        headers["Content-Type"] = case.content_type
    before = len(state.requests)
    with httpx.Client(trust_env=False, timeout=10) as client:
        response = client.request(case.method, proxy_url + case.target, headers=headers, content=case.body)
    received = [r for r in state.requests[before:] if r.path != "/api/v1/agency/recruiters"]
    if not received:
        assert response.headers["content-type"] == "application/json", response.text
        return Outcome("refused", response.status_code, None)
    assert len(received) == 1
    attributed = "x-attribution-id" in response.headers
    return Outcome("forwarded", None, json.loads(received[0].body) if attributed else None)


def _explain(case: Case, rules: Path, *, carried: bool, capsys: pytest.CaptureFixture[str]) -> Outcome:
    recruiter_id, role = PEOPLE[case.who]
    args = ["explain", case.method, case.target, "--email", f"{case.who}@agency.example", "--json"]
    args += ["--body", case.body.decode(), "--rules", str(rules)]
    args += ["--content-type", case.content_type] if case.content_type else []
    args += ["--recruiter-id", recruiter_id, "--role", role] if carried else ["--directory"]
    code = main(args)
    verdict = json.loads(capsys.readouterr().out)
    assert code == (0 if verdict["outcome"] == "forwarded" else 1)
    body = json.loads(verdict["body"]) if verdict["body"] is not None else None
    if carried or verdict["outcome"] == "refused":
        assert verdict["unchecked"] == [] or case.target == "/api/v1/interviews", verdict["unchecked"]
    return Outcome(verdict["outcome"], verdict["status"], body)


COMPARISONS = [
    *(pytest.param(case, True, id=f"session-facts-{key}") for key, case in CASES.items()),
    *(pytest.param(case, False, id=f"directory-{key}") for key, case in {**CASES, **NEEDS_DIRECTORY}.items()),
]


@pytest.mark.parametrize(("case", "carried"), COMPARISONS)
def test_explain_agrees_with_the_proxy(
    case: Case,
    carried: bool,
    start_proxy: ProxyFactory,
    bpoc_url: str,
    bpoc_state: BpocState,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The same request through the live proxy and through explain: same outcome, status and body sent. With the
    facts in the session (recruiter ID and role claims), explain runs offline, given them; with an email only,
    explain --directory reads BPOC's directory for the ID, the role and the roster, as the proxy does."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(case.rules or (ROOT / "rules.yaml").read_text())
    env = base_env(bpoc_url, PROXY_RULES=str(rules), PROXY_MAX_BODY_BYTES="256")
    live = _live(start_proxy(env), bpoc_state, case, carried=carried)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert _explain(case, rules, carried=carried, capsys=capsys) == live
