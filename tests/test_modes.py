"""The tables behind rule modes and session verifiers: every member has its entry, and each entry is used."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from proxy.auth import VERIFIERS, build_authenticator
from proxy.errors import ConfigError, Forbidden, Unprocessable
from proxy.modes import MODES, ActiveRecruiters, Caller, Mode, Unchecked, UnknownRoster, Write, plan
from proxy.rules import VALUE_SOURCES, FieldRule, Rule
from proxy.rules_file import parse_rules
from proxy.settings import Settings

ME = "f47ac10b-58cc-4372-a567-0e02b2c3d479"
COLLEAGUE = "0b7e5f8c-1d2a-4c3b-9e8f-7a6b5c4d3e2f"
CALLER = Caller(ME, "portal-42", "bob@agency.example")


def test_every_mode_has_a_spec() -> None:
    """A new Mode member without its MODES entry fails here, before it can fall into another mode's branch."""
    assert set(MODES) == set(Mode)
    for mode, spec in MODES.items():
        assert spec.values and spec.values <= set(VALUE_SOURCES), mode
        assert spec.writes and spec.refuses, mode


@pytest.mark.parametrize("mode", list(Mode), ids=str)
def test_every_mode_is_a_key_of_the_rules_file(mode: Mode) -> None:
    """Each mode is accepted as a rule key, with each of the values its spec allows, and refused with others."""
    for value in VALUE_SOURCES:
        text = f"rules:\n  - match: POST /x\n    {mode}: {{by: {value}}}\n"
        if value in MODES[mode].values:
            rules = parse_rules(text)
            assert rules.rules[0].fields == (FieldRule(("by",), mode, value),)
        else:
            with pytest.raises(ConfigError, match=f"a {mode} field takes"):
                parse_rules(text)


def _plan(mode: Mode, sent: Any, roster: ActiveRecruiters | UnknownRoster) -> Any:
    rule = Rule("POST", "/x", (FieldRule(("by",), mode, "recruiter"),))
    body = {} if sent is None else {"by": sent}
    return plan(rule, body, CALLER, roster)


ROSTER = ActiveRecruiters(frozenset({ME, COLLEAGUE}))


@pytest.mark.parametrize(
    ("mode", "sent", "writes", "refusal"),
    [
        pytest.param(Mode.SET, None, (Write("by", ME, Mode.SET),), None, id="set-absent"),
        pytest.param(Mode.SET, COLLEAGUE, (Write("by", ME, Mode.SET),), None, id="set-overwrites"),
        pytest.param(Mode.DEFAULT, None, (Write("by", ME, Mode.DEFAULT),), None, id="default-absent"),
        pytest.param(Mode.DEFAULT, COLLEAGUE, (), None, id="default-keeps"),
        pytest.param(Mode.ENFORCE, None, (Write("by", ME, Mode.ENFORCE),), None, id="enforce-absent"),
        pytest.param(Mode.ENFORCE, ME.upper(), (), None, id="enforce-own-any-case"),
        pytest.param(Mode.ENFORCE, COLLEAGUE, (), Forbidden, id="enforce-other"),
        pytest.param(Mode.REFERENCE, None, (Write("by", ME, Mode.REFERENCE),), None, id="reference-absent"),
        pytest.param(Mode.REFERENCE, COLLEAGUE, (), None, id="reference-colleague"),
        pytest.param(Mode.REFERENCE, "someone-else", (), Unprocessable, id="reference-stranger"),
        pytest.param(Mode.REFERENCE, 7, (), Unprocessable, id="reference-not-a-string"),
    ],
)
def test_each_mode_decides(mode: Mode, sent: Any, writes: tuple[Write, ...], refusal: type | None) -> None:
    """What each mode writes and when it refuses, as the README's table says."""
    decided = _plan(mode, sent, ROSTER)
    assert decided.writes == writes
    assert (type(decided.refusal) if decided.refusal else None) is refusal


def test_reference_against_an_unknown_roster_is_left_unchecked() -> None:
    """Offline (explain), a colleague named in a reference field is neither accepted nor refused: it is noted."""
    decided = _plan(Mode.REFERENCE, COLLEAGUE, UnknownRoster())
    assert decided.refusal is None and decided.writes == ()
    assert decided.unchecked == (Unchecked("by", "must be an active recruiter of the agency"),)
    assert _plan(Mode.REFERENCE, ME, UnknownRoster()).unchecked == ()  # the caller's own ID needs no roster


def test_only_modes_that_consult_the_roster_make_a_rule_need_it() -> None:
    for mode, spec in MODES.items():
        rule = Rule(
            "POST", "/x", (FieldRule(("by",), mode, "user_id" if "user_id" in spec.values else "recruiter"),)
        )
        assert rule.consults_roster is spec.consults_roster


ENV = {"BPOC_API_KEY": "k", "BPOC_BASE_URL": "http://127.0.0.1:9"}
VALUES = {
    "PORTAL_JWT_SECRET": "s" * 32,
    "PORTAL_JWKS_URL": "http://127.0.0.1:9/jwks",
    "PORTAL_SESSION_URL": "http://127.0.0.1:9/session",
}


def test_every_verifier_setting_is_known() -> None:
    assert set(VERIFIERS) == set(VALUES)


@pytest.mark.parametrize("setting", list(VERIFIERS))
async def test_each_verifier_is_chosen_by_its_setting(setting: str) -> None:
    """Settings validation and the authenticator factory read the same table."""
    verifier = VERIFIERS[setting]
    settings = Settings.from_environ({**ENV, setting: VALUES[setting]})
    assert settings.auth_mode == verifier.mode and getattr(settings, verifier.field) == VALUES[setting]
    async with httpx.AsyncClient() as http:
        authenticator = build_authenticator(settings, http)
    assert type(authenticator).__name__ in ("JwtAuthenticator", "IntrospectionAuthenticator")


def test_two_verifiers_or_none_is_one_line_naming_them() -> None:
    with pytest.raises(
        ConfigError, match="set exactly one of PORTAL_JWT_SECRET, PORTAL_JWKS_URL, PORTAL_SESSION_URL"
    ):
        Settings.from_environ(ENV)
    with pytest.raises(ConfigError, match=r"\(set: PORTAL_JWT_SECRET, PORTAL_JWKS_URL\)"):
        Settings.from_environ({**ENV, **{k: VALUES[k] for k in ("PORTAL_JWT_SECRET", "PORTAL_JWKS_URL")}})
