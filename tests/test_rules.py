"""rules.yaml: the shipped file, matching, and every kind of mistake with its exact message."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.errors import ConfigError
from proxy.modes import Mode
from proxy.rules import FieldRule, Match, Route, Rule, RuleSet
from proxy.rules_file import load_rules, parse_rules

ROOT = Path(__file__).resolve().parent.parent
UUID = "f47ac10b-58cc-4372-a567-0e02b2c3d479"


@pytest.fixture(scope="module")
def shipped() -> RuleSet:
    return load_rules(ROOT / "rules.yaml")


# -- The shipped rules.yaml ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "template", "fields", "roles"),
    [
        pytest.param(
            "POST",
            "/api/v1/jobs/create",
            "/api/v1/jobs/create",
            {"postedBy": "set"},
            set(),
            id="jobs-create",
        ),
        pytest.param(
            "POST",
            f"/api/v1/jobs/{UUID}/approve",
            "/api/v1/jobs/{id}/approve",
            {"approvedBy": "enforce"},
            {"admin", "manager"},
            id="jobs-approve",
        ),
        pytest.param(
            "POST",
            f"/api/v1/applications/{UUID}/release",
            "/api/v1/applications/{id}/release",
            {"releasedBy": "enforce"},
            set(),
            id="applications-release",
        ),
        pytest.param(
            "POST",
            f"/api/v1/applications/{UUID}/reject",
            "/api/v1/applications/{id}/reject",
            {"rejectedBy": "enforce"},
            set(),
            id="applications-reject",
        ),
        pytest.param(
            "POST",
            "/api/v1/interviews",
            "/api/v1/interviews",
            {"scheduledBy": "set", "interviewerId": "reference"},
            set(),
            id="interviews",
        ),
        pytest.param(
            "POST",
            "/api/v1/onboarding",
            "/api/v1/onboarding",
            {"createdBy": "set"},
            set(),
            id="onboarding-create",
        ),
        pytest.param(
            "PUT",
            f"/api/v1/onboarding/{UUID}",
            "/api/v1/onboarding/{taskId}",
            {"reviewedBy": "enforce"},
            set(),
            id="onboarding-review",
        ),
    ],
)
def test_shipped_rules_cover_the_guide(
    shipped: RuleSet, method: str, path: str, template: str, fields: dict[str, str], roles: set[str]
) -> None:
    """Every endpoint of BPOC's guide that takes a recruiter ID has its rule, writing the caller's ID."""
    match = shipped.match(method, path)
    assert match is not None and match.rule is not None and match.route is None
    assert match.rule.template == template
    assert {f.name: f.mode for f in match.rule.fields} == fields
    assert all(f.value == "recruiter" for f in match.rule.fields)
    assert match.roles == roles
    assert match.rule.needs_recruiter
    assert not match.rule.report_only


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/api/v1/recruiters/create", id="recruiters-create"),
        pytest.param("/api/v1/team/invite", id="team-invite"),
    ],
)
def test_shipped_routes_require_admin(shipped: RuleSet, path: str) -> None:
    """Creating recruiters and inviting team members needs the admin role."""
    match = shipped.match("POST", path)
    assert match is not None and match.route is not None and match.rule is None
    assert match.roles == {"admin"}


def test_shipped_policy(shipped: RuleSet) -> None:
    """The shipped file is a drop-in: unlisted routes forwarded, nothing public, not report-only, no overlaps."""
    assert shipped.unlisted == "forward"
    assert shipped.public == ()
    assert shipped.report_only is False
    assert shipped.overlaps() == []
    assert shipped.path == ROOT / "rules.yaml"
    assert shipped.match("GET", "/api/v1/agency/recruiters") is None
    assert shipped.match("GET", "/api/v1/jobs/create") is None


def test_shipped_describe(shipped: RuleSet) -> None:
    """`check` prints one line per entry with its fields, modes and roles."""
    lines = shipped.describe()
    assert lines[0].endswith(
        "7 rules, 2 routes, 0 public paths; unlisted routes are forwarded; report_only: off"
    )
    assert (
        "rule   POST /api/v1/jobs/{id}/approve -> approvedBy (enforce recruiter); roles: admin, manager"
        in lines
    )
    assert (
        "rule   POST /api/v1/interviews -> scheduledBy (set recruiter), interviewerId (reference recruiter)"
        in lines
    )
    assert "route  POST /api/v1/team/invite -> no fields; roles: admin" in lines


# -- Matching ------------------------------------------------------------------------------------------------

MATCHING = """
rules:
  - match: POST /api/v1/jobs/create
    set: {postedBy: recruiter}
  - match: POST /api/v1/jobs/{id}/approve
    enforce: {approvedBy: recruiter}
  - match: POST /api/v1/jobs/create/approve
    default: {approvedBy: email}
  - match: '* /api/v1/things/{id}'
    set: {by: user_id}
  - match: PATCH /api/v1/things/{thingId}
    set: {patchedBy: recruiter}
  - match: POST /api/v1/{a}/x
    set: {ax: recruiter}
  - match: POST /api/v1/b/{c}
    set: {bc: recruiter}
  - match: POST /
    set: {root: recruiter}
routes:
  - match: GET /api/v1/jobs/{id}
    roles: [viewer]
  - match: DELETE /api/v1/jobs/create
"""


@pytest.mark.parametrize(
    ("method", "path", "expected", "params"),
    [
        pytest.param("POST", "/api/v1/jobs/create", "POST /api/v1/jobs/create", {}, id="literal"),
        pytest.param("POST", "/API/V1/JOBS/CREATE", "POST /api/v1/jobs/create", {}, id="any-letter-case"),
        pytest.param("post", "/api/v1/jobs/create", "POST /api/v1/jobs/create", {}, id="lowercase-method"),
        pytest.param(
            "POST",
            "/api/v1/jobs/AbC/approve",
            "POST /api/v1/jobs/{id}/approve",
            {"id": "AbC"},
            id="param-keeps-case",
        ),
        pytest.param(
            "POST",
            "/api/v1/jobs/create/approve",
            "POST /api/v1/jobs/create/approve",
            {},
            id="literal-beats-param",
        ),
        pytest.param(
            "POST",
            "/api/v1/jobs/Create/APPROVE",
            "POST /api/v1/jobs/create/approve",
            {},
            id="literal-beats-param-any-case",
        ),
        pytest.param("POST", "/api/v1/b/x", "POST /api/v1/b/{c}", {"c": "x"}, id="leftmost-literal-wins"),
        pytest.param("POST", "/api/v1/q/x", "POST /api/v1/{a}/x", {"a": "q"}, id="backtracks-to-param"),
        pytest.param(
            "GET", "/api/v1/jobs/create", "GET /api/v1/jobs/{id}", {"id": "create"}, id="backtracks-on-method"
        ),
        pytest.param("HEAD", "/api/v1/jobs/7", "GET /api/v1/jobs/{id}", {"id": "7"}, id="head-uses-get"),
        pytest.param("DELETE", "/api/v1/jobs/create", "DELETE /api/v1/jobs/create", {}, id="route"),
        pytest.param("GET", "/api/v1/things/7", "* /api/v1/things/{id}", {"id": "7"}, id="any-method"),
        pytest.param(
            "PATCH",
            "/api/v1/things/7",
            "PATCH /api/v1/things/{thingId}",
            {"thingId": "7"},
            id="method-beats-any",
        ),
        pytest.param("POST", "/", "POST /", {}, id="root"),
        pytest.param(
            "POST",
            "/api/v1/jobs/a%20b/approve",
            "POST /api/v1/jobs/{id}/approve",
            {"id": "a%20b"},
            id="escaped",
        ),
    ],
)
def test_match(method: str, path: str, expected: str, params: dict[str, str]) -> None:
    """The most specific entry wins: literal before {name}, left to right; then the method before *."""
    match = parse_rules(MATCHING).match(method, path)
    assert match is not None
    entry = match.rule or match.route
    assert entry is not None
    assert f"{entry.method} {entry.template}" == expected
    assert match.params == params


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("PUT", "/api/v1/jobs/create", id="other-method"),
        pytest.param("POST", "/api/v1/jobs", id="shorter"),
        pytest.param("POST", "/api/v1/jobs/create/approve/now", id="longer"),
        pytest.param("POST", "/api/v1/jobs/create2", id="prefix-is-not-a-match"),
        pytest.param("POST", "/api/v1/jobs//approve", id="empty-segment-is-no-param"),
        pytest.param("GET", "/", id="root-other-method"),
        pytest.param("HEAD", "/api/v1/jobs/create/approve", id="head-has-no-post-fallback"),
    ],
)
def test_no_match(method: str, path: str) -> None:
    """A request no entry names is unlisted."""
    assert parse_rules(MATCHING).match(method, path) is None


def test_match_types() -> None:
    """A rule match carries the Rule; a routes match carries the Route; roles come from either."""
    rules = parse_rules(MATCHING)
    rule_match = rules.match("POST", "/api/v1/jobs/create")
    route_match = rules.match("GET", "/api/v1/jobs/1")
    assert rule_match == Match(
        Rule("POST", "/api/v1/jobs/create", (FieldRule(("postedBy",), Mode.SET, "recruiter"),), line=3),
        None,
        {},
    )
    assert route_match == Match(
        None, Route("GET", "/api/v1/jobs/{id}", frozenset({"viewer"}), line=20), {"id": "1"}
    )
    assert route_match.roles == {"viewer"}


def test_matching_many_rules() -> None:
    """Ten thousand rules compile, and each path still finds its own rule (the timing is in the benchmark)."""
    rules = RuleSet(
        tuple(
            Rule(
                "POST",
                f"/api/v1/r{i}/{{id}}/x{i % 7}",
                (FieldRule((f"by{i}",), Mode.SET, "recruiter"),),
                line=i,
            )
            for i in range(10_000)
        )
    )
    for i in (0, 1, 4_999, 9_999):
        match = rules.match("POST", f"/api/v1/R{i}/abc/X{i % 7}")
        assert match is not None and match.rule is not None
        assert match.rule.fields[0].name == f"by{i}"
        assert match.params == {"id": "abc"}
    assert rules.match("POST", "/api/v1/r10000/abc/x0") is None
    assert rules.match("POST", "/api/v1/r1/abc/x2") is None


def test_duplicate_in_code_built_ruleset() -> None:
    """A RuleSet built in code checks duplicates too, naming the entries."""
    rule = Rule("POST", "/a/{x}", (FieldRule(("by",), Mode.SET, "recruiter"),), line=4)
    with pytest.raises(
        ConfigError, match=r"^rules\.yaml:9: routes\[0\]\.match: duplicate route POST /A/\{y\}: "
    ):
        RuleSet((rule,), (Route("POST", "/A/{y}", line=9),))


# -- Fields, report-only, public ----------------------------------------------------------------------------


def test_fields_and_flags() -> None:
    """Modes, values, dotted paths, roles and the report_only inheritance are read as written."""
    rules = parse_rules(
        "report_only: true\n"
        "rules:\n"
        "  - match: POST /a\n"
        "    set: {metadata.performedBy: recruiter, metadata.portalUser: user_id}\n"
        "    default: {contact: email}\n"
        "    roles: [admin, manager, admin]\n"
        "  - match: POST /b\n"
        "    reference: {interviewerId: recruiter}\n"
        "    report_only: false\n"
        "  - match: POST /c\n"
        "    enforce: {owner: user_id}\n"
    )
    a, b, c = rules.rules
    assert a.fields == (
        FieldRule(("metadata", "performedBy"), Mode.SET, "recruiter"),
        FieldRule(("metadata", "portalUser"), Mode.SET, "user_id"),
        FieldRule(("contact",), Mode.DEFAULT, "email"),
    )
    assert a.fields[0].name == "metadata.performedBy"
    assert a.roles == {"admin", "manager"}
    assert (a.report_only, b.report_only, c.report_only) == (True, False, True)
    assert rules.report_only is True
    assert (a.needs_recruiter, b.needs_recruiter, c.needs_recruiter) == (True, True, False)
    assert (a.consults_roster, b.consults_roster, c.consults_roster) == (False, True, False)


@pytest.mark.parametrize(
    ("method", "path", "public"),
    [
        pytest.param("GET", "/healthz", True, id="any-method-entry"),
        pytest.param("POST", "/HEALTHZ", True, id="any-case"),
        pytest.param("GET", "/docs/intro", True, id="method-and-param"),
        pytest.param("HEAD", "/docs/intro", True, id="head-uses-get"),
        pytest.param("POST", "/docs/intro", False, id="other-method"),
        pytest.param("GET", "/docs", False, id="shorter"),
        pytest.param("POST", "/api/v1/jobs/create", False, id="rule-route"),
    ],
)
def test_is_public(method: str, path: str, public: bool) -> None:
    """Public entries match like rules: same template syntax, optional method."""
    rules = parse_rules(
        "rules:\n  - match: POST /api/v1/jobs/create\n    set: {postedBy: recruiter}\n"
        "public: [/healthz, 'GET /docs/{page}']\n"
    )
    assert rules.is_public(method, path) is public


def test_defaults() -> None:
    """Only `rules` is required; the rest defaults to the drop-in behaviour."""
    rules = parse_rules("rules: []\n")
    assert (rules.rules, rules.routes, rules.public) == ((), (), ())
    assert (rules.unlisted, rules.report_only, rules.path) == ("forward", False, None)
    assert rules.match("POST", "/api/v1/jobs/create") is None
    assert not rules.is_public("GET", "/")


def test_unlisted_deny_and_routes_without_roles() -> None:
    """Under unlisted: deny, a routes entry without roles lists a route for any session."""
    rules = parse_rules("unlisted: deny\nrules: []\nroutes:\n  - match: GET /api/v1/jobs\n")
    assert rules.unlisted == "deny"
    match = rules.match("GET", "/api/v1/jobs")
    assert match is not None and match.route is not None and match.roles == frozenset()


def test_overlaps() -> None:
    """`check` lists templates that can match the same request, and which one wins."""
    assert parse_rules(MATCHING).overlaps() == [
        "rules.yaml:5: rules[1] POST /api/v1/jobs/{id}/approve overlaps rules[2] POST /api/v1/jobs/create/approve "
        "(line 7): for POST /api/v1/jobs/create/approve, rules[2] POST /api/v1/jobs/create/approve wins",
        "rules.yaml:9: rules[3] * /api/v1/things/{id} overlaps rules[4] PATCH /api/v1/things/{thingId} (line 11): "
        "for PATCH /api/v1/things/{id}, rules[4] PATCH /api/v1/things/{thingId} wins",
        "rules.yaml:9: rules[3] * /api/v1/things/{id} overlaps rules[5] POST /api/v1/{a}/x (line 13): "
        "for POST /api/v1/things/x, rules[3] * /api/v1/things/{id} wins",
        "rules.yaml:13: rules[5] POST /api/v1/{a}/x overlaps rules[6] POST /api/v1/b/{c} (line 15): "
        "for POST /api/v1/b/x, rules[6] POST /api/v1/b/{c} wins",
    ]


# -- Loading and mistakes ------------------------------------------------------------------------------------


def test_load_rules_names_the_file(tmp_path: Path) -> None:
    """Errors from a file carry its path; the RuleSet remembers it."""
    path = tmp_path / "mine.yaml"
    path.write_text("rules:\n  - match: POST /a\n    set: {x: recuiter}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^.*mine\.yaml:3: rules\[0\]\.set\.x: unknown value 'recuiter'"):
        load_rules(path)
    path.write_text("rules: []\n", encoding="utf-8")
    assert load_rules(path).path == path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(None, "the rules file cannot be read: No such file or directory", id="missing"),
        pytest.param(b"rules: [\xff]\n", "the rules file is not UTF-8 text", id="not-utf8"),
    ],
)
def test_load_rules_unreadable(tmp_path: Path, content: bytes | None, message: str) -> None:
    """An unreadable rules file is a ConfigError naming it."""
    path = tmp_path / "rules.yaml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_rules(path)
    assert str(caught.value) == f"{path}: {message}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            "rules:\n  - match: POST /api/v1/jobs/create\n    set: {postedBy: recuiter}\n",
            (
                "rules.yaml:3: rules[0].set.postedBy: unknown value 'recuiter' (expected one of: "
                "recruiter, user_id, email)"
            ),
            id="unknown-value",
        ),
        pytest.param(
            "rules:\n  - match: POST /api/v1/jobs/create\n    sett: {postedBy: recruiter}\n",
            (
                "rules.yaml:3: rules[0].sett: unknown key; did you mean 'set'? (expected one of: match, "
                "set, default, enforce, reference, roles, report_only)"
            ),
            id="unknown-mode",
        ),
        pytest.param(
            "rulez: []\n",
            (
                "rules.yaml:1: rulez: unknown key; did you mean 'rules'? (expected one of: rules, "
                "routes, public, unlisted, report_only)"
            ),
            id="unknown-top",
        ),
        pytest.param(
            "unlisted: deny\n",
            ("rules.yaml:1: missing key 'rules' (a list of rules, may be empty: rules: [])"),
            id="missing-rules",
        ),
        pytest.param(
            "rules:\n  - match: POST api/v1/jobs\n    set: {postedBy: recruiter}\n",
            ("rules.yaml:2: rules[0].match: bad template 'api/v1/jobs': it must start with '/'"),
            id="bad-template",
        ),
        pytest.param(
            "rules:\n  - match: POST /api/v1/jobs/{id\n    set: {postedBy: recruiter}\n",
            (
                "rules.yaml:2: rules[0].match: bad template '/api/v1/jobs/{id': segment '{id' is neither "
                "a {name} nor plain text (letters, digits and - . _ ~ ! $ & ' ( ) + , = : @; no "
                "percent-escapes)"
            ),
            id="bad-template-seg",
        ),
        pytest.param(
            "rules:\n  - match: POST /api/v1/jobs/\n    set: {postedBy: recruiter}\n",
            (
                "rules.yaml:2: rules[0].match: bad template '/api/v1/jobs/': it has an empty segment (a "
                "doubled or trailing '/')"
            ),
            id="trailing",
        ),
        pytest.param(
            "rules:\n  - match: POST /api/v1/%6aobs\n    set: {postedBy: recruiter}\n",
            (
                "rules.yaml:2: rules[0].match: bad template '/api/v1/%6aobs': segment '%6aobs' is "
                "neither a {name} nor plain text (letters, digits and - . _ ~ ! $ & ' ( ) + , = : @; no "
                "percent-escapes)"
            ),
            id="pct",
        ),
        pytest.param(
            "rules:\n  - match: POST /a/{id}/{id}\n    set: {postedBy: recruiter}\n",
            ("rules.yaml:2: rules[0].match: bad template '/a/{id}/{id}': the name {id} appears twice"),
            id="dup-param",
        ),
        pytest.param(
            "rules:\n  - match: /api/v1/jobs\n    set: {postedBy: recruiter}\n",
            (
                "rules.yaml:2: rules[0].match: expected 'METHOD /template' such as 'POST /api/v1/jobs', "
                "got '/api/v1/jobs'"
            ),
            id="no-method",
        ),
        pytest.param(
            "rules:\n  - match: FETCH /api/v1/jobs\n    set: {postedBy: recruiter}\n",
            (
                "rules.yaml:2: rules[0].match: unknown method 'FETCH' (expected one of: GET, HEAD, POST, "
                "PUT, PATCH, DELETE, OPTIONS, or * for any)"
            ),
            id="bad-method",
        ),
        pytest.param(
            "rules:\n  - match: POST /api/v1/jobs/{id}/approve\n    set: {approvedBy: recruiter}\n  - "
            "match: post /API/v1/jobs/{jobId}/approve\n    set: {x: recruiter}\n",
            (
                "rules.yaml:4: rules[1].match: duplicate route POST /API/v1/jobs/{jobId}/approve: "
                "rules[0] (line 2) has it"
            ),
            id="dup-route",
        ),
        pytest.param(
            "rules:\n  - match: POST /a\n    set: {x: recruiter}\nroutes:\n  - match: POST /A\n",
            ("rules.yaml:5: routes[0].match: duplicate route POST /A: rules[0] (line 2) has it"),
            id="dup-rule-route",
        ),
        pytest.param(
            "rules:\n  - match: POST /a\n    set:\n      postedBy: recruiter\n      postedBy: email\n",
            ("rules.yaml:5: rules[0].set.postedBy: duplicate key (first given at line 4)"),
            id="dup-yaml-key",
        ),
        pytest.param(
            "rules: []\nunlisted: deny\nunlisted: forward\n",
            ("rules.yaml:3: unlisted: duplicate key (first given at line 2)"),
            id="dup-yaml-top",
        ),
        pytest.param(
            "",
            ("rules.yaml: the rules file is empty; it must be a mapping with a 'rules' list"),
            id="empty",
        ),
        pytest.param(
            "# nothing\n",
            ("rules.yaml: the rules file is empty; it must be a mapping with a 'rules' list"),
            id="comment-only",
        ),
        pytest.param(
            "- a\n- b\n",
            ("rules.yaml:1: the top level must be a mapping with a 'rules' list, got a list"),
            id="list-top",
        ),
        pytest.param(
            "hello\n",
            ("rules.yaml:1: the top level must be a mapping with a 'rules' list, got text 'hello'"),
            id="scalar-top",
        ),
        pytest.param(
            "rules:\n  - match: POST /a\n    set: {x: recruiter}\n    roles: admin\n",
            ("rules.yaml:4: rules[0].roles: expected a list of role names such as [admin], got text 'admin'"),
            id="roles-str",
        ),
        pytest.param(
            "rules:\n  - match: POST /a\n    set: {x: recruiter}\n    roles: [admin, 3]\n",
            ("rules.yaml:4: rules[0].roles[1]: expected a role name, got a number"),
            id="roles-num",
        ),
        pytest.param(
            "rules:\n  - match: POST /a\n    set: {x: recruiter}\n    roles: ['']\n",
            ("rules.yaml:4: rules[0].roles[0]: a role name cannot be empty"),
            id="roles-empty",
        ),
        pytest.param(
            "report_only: maybe\nrules: []\n",
            ("rules.yaml:1: report_only: expected true or false, got text 'maybe'"),
            id="report-only-str",
        ),
        pytest.param(
            "rules:\n  - match: POST /a\n    set: {x: recruiter}\n    report_only: 1\n",
            ("rules.yaml:4: rules[0].report_only: expected true or false, got a number"),
            id="rule-report-only",
        ),
        pytest.param(
            "unlisted: allow\nrules: []\n",
            ("rules.yaml:1: unlisted: unknown value 'allow' (expected one of: forward, deny)"),
            id="unlisted-bad",
        ),
        pytest.param(
            "rules:\n  - match: POST /a\n    roles: [admin]\n",
            (
                "rules.yaml:2: rules[0]: a rule needs at least one field under set, default, enforce or "
                "reference (list a route without fields under 'routes')"
            ),
            id="no-fields",
        ),
        pytest.param(
            "rules:\n  - set: {x: recruiter}\n",
            ("rules.yaml:2: rules[0]: missing key 'match' (such as match: POST /api/v1/jobs/create)"),
            id="no-match",
        ),
        pytest.param(
            "rules: {match: POST /a}\n",
            ("rules.yaml:1: rules: expected a list, got a mapping"),
            id="rules-not-list",
        ),
        pytest.param(
            "rules:\n  - POST /a\n",
            ("rules.yaml:2: rules[0]: expected a mapping, got text 'POST /a'"),
            id="rule-not-mapping",
        ),
        pytest.param(
            "rules:\n  - match: POST /a\n    set: [x]\n",
            ("rules.yaml:3: rules[0].set: expected a mapping, got a list"),
            id="set-not-mapping",
        ),
        pytest.param(
            "rules:\n  - match: POST /a\n    set: {x: 1}\n",
            ("rules.yaml:3: rules[0].set.x: expected text, got a number"),
            id="value-not-text",
        ),
        pytest.param(
            "rules:\n  - match: POST /a\n    set: {'metadata..x': recruiter}\n",
            (
                "rules.yaml:3: rules[0].set.metadata..x: a field is a JSON key name, or names joined by "
                "dots (such as metadata.performedBy)"
            ),
            id="bad-field",
        ),
        pytest.param(
            "rules:\n  - match: POST /a\n    set: {x: recruiter}\n    enforce: {x: recruiter}\n",
            ("rules.yaml:4: rules[0].enforce.x: the field is already given as set.x (line 3)"),
            id="field-twice",
        ),
        pytest.param(
            "rules:\n  - match: POST /a\n    set: {metadata: email, metadata.by: recruiter}\n",
            (
                "rules.yaml:3: rules[0].set.metadata.by: conflicts with set.metadata (line 3): one is "
                "inside the other"
            ),
            id="field-prefix",
        ),
        pytest.param(
            "rules:\n  - match: POST /a\n    reference: {interviewerId: email}\n",
            (
                "rules.yaml:3: rules[0].reference.interviewerId: a reference field takes 'recruiter' as its "
                "value, got 'email'"
            ),
            id="reference-email",
        ),
        pytest.param(
            "rules: []\nroutes:\n  - match: POST /a\n    set: {x: recruiter}\n",
            (
                "rules.yaml:4: routes[0].set: a routes entry has no fields; put an entry with fields "
                "under 'rules'"
            ),
            id="route-unknown-key",
        ),
        pytest.param(
            "rules: []\npublic: ['GET /a extra']\n",
            (
                "rules.yaml:2: public[0]: expected '[METHOD ]/template' such as 'GET /healthz', got 'GET "
                "/a extra'"
            ),
            id="public-bad",
        ),
        pytest.param(
            "rules: []\npublic: [{match: GET /a}]\n",
            ("rules.yaml:2: public[0]: expected text, got a mapping"),
            id="public-not-text",
        ),
        pytest.param(
            "rules:\n  - match: POST /a/{id}\n    set: {x: recruiter}\npublic: ['/a/b']\n",
            (
                "rules.yaml:4: public[0]: * /a/b can match the same requests as rules[0] (line 2) POST "
                "/a/{id}, which needs a session (it has fields or roles), so it cannot be public"
            ),
            id="public-overlaps-rule",
        ),
        pytest.param(
            "rules: []\nroutes:\n  - match: GET /a\n    roles: [admin]\npublic: ['GET /{x}']\n",
            (
                "rules.yaml:5: public[0]: GET /{x} can match the same requests as routes[0] (line 3) GET "
                "/a, which needs a session (it has fields or roles), so it cannot be public"
            ),
            id="public-overlaps-roles",
        ),
        pytest.param(
            "rules: []\npublic: ['GET /a', 'get /A']\n",
            ("rules.yaml:2: public[1]: duplicate public path GET /A: public[0] has it"),
            id="public-dup",
        ),
        pytest.param(
            "rules:\n  - match: [POST /a\n",
            ("rules.yaml:3: invalid YAML: expected ',' or ']', but got '<stream end>'"),
            id="yaml-syntax",
        ),
        pytest.param(
            "rules:\n\t- x\n",
            ("rules.yaml:2: invalid YAML: found character '\\t' that cannot start any token"),
            id="yaml-tab",
        ),
        pytest.param(
            "rules: []\n---\nrules: []\n",
            ("rules.yaml:2: invalid YAML: but found another document"),
            id="multi-doc",
        ),
        pytest.param(
            "rules: []\n? [a]\n: b\n",
            ("rules.yaml:2: a key must be a name, got a list"),
            id="key-not-scalar",
        ),
        pytest.param(
            "rules: !!python/object:os.system {}\n",
            ("rules.yaml:1: rules: expected a list, got a mapping"),
            id="tagged",
        ),
    ],
)
def test_bad_rules_file(text: str, message: str) -> None:
    """A mistake stops start-up with one line: file, line, place and what is wrong."""
    with pytest.raises(ConfigError) as caught:
        parse_rules(text)
    assert str(caught.value) == message
