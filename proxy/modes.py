"""Rule modes: how one attribution field is written, one table entry per mode.

::

    set        always written; whatever the client sent is overwritten
    default    written when the client sent none (absent or null); a client value stays
    enforce    written when absent or null; a client value that is not the caller's own is refused (403)
    reference  written when absent or null; a client value must name an active recruiter of the agency (422)

A mode is a member of :class:`Mode` and its entry in :data:`MODES`: what a rules file may give it as a value,
whether it consults the agency's roster of active recruiters, and ``decide``, which says what happens to one
field of one body. Adding a mode is one member, one entry and its tests; ``tests/test_modes.py`` fails while a
member has no entry, so a new mode can never fall silently into another mode's branch.

``plan`` runs the table over a rule's fields; ``apply`` does the writes. Both are pure: no I/O, no clock.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from .errors import BadRequest, Forbidden, ProxyError, Unprocessable

if TYPE_CHECKING:
    from .rules import FieldRule, Rule


class Mode(enum.StrEnum):
    SET = "set"
    DEFAULT = "default"
    ENFORCE = "enforce"
    REFERENCE = "reference"


@dataclass(frozen=True, slots=True)
class Caller:
    """The session facts a rule can write: the BPOC recruiter ID (if known), portal user id and email."""

    recruiter_id: str | None
    user_id: str
    email: str | None


@dataclass(frozen=True, slots=True)
class Write:
    """One value the proxy writes: the field's dotted name, the value, and the mode that wrote it."""

    field: str
    value: str
    mode: Mode


@dataclass(frozen=True, slots=True)
class Unchecked:
    """A client value left as sent whose fate depends on what cannot be known here (``explain`` offline)."""

    field: str
    condition: str


class Roster(Protocol):
    """The agency's active recruiters, as far as they can be known where the plan is made."""

    def is_active(self, recruiter_id: str) -> bool | None:
        """Whether ``recruiter_id`` is an active recruiter of the agency; None when it cannot be told."""
        ...


class ActiveRecruiters:
    """A roster from a directory snapshot: the lowercase IDs of the agency's active recruiters."""

    __slots__ = ("_ids",)

    def __init__(self, ids: frozenset[str]) -> None:
        self._ids = ids

    def is_active(self, recruiter_id: str) -> bool:
        return recruiter_id.lower() in self._ids


class UnknownRoster:
    """A roster that cannot be consulted (``bpoc-proxy explain`` without ``--directory``)."""

    def is_active(self, recruiter_id: str) -> None:
        return None


#: What a mode decides for one field: write this, leave the client's value (None), or leave it unchecked.
Decision = Write | Unchecked | None
Decide = Callable[["FieldRule", Any, Caller, Roster], Decision]


@dataclass(frozen=True, slots=True)
class ModeSpec:
    """A mode's entry in the table: its behaviour and what the rules file may give it."""

    writes: str  # what it writes, in the words of ``bpoc-proxy check`` and the README
    refuses: str  # when it refuses a request ("never" for none)
    values: frozenset[str]  # the value sources a rules file may give it (rules.VALUE_SOURCES)
    consults_roster: bool  # whether it needs the agency's active recruiters
    decide: Decide


@dataclass(frozen=True, slots=True)
class Plan:
    """What a rule does to one body: the writes, the first refusal, and what could not be checked here."""

    writes: tuple[Write, ...]
    refusal: ProxyError | None = None
    unchecked: tuple[Unchecked, ...] = ()


_NOUNS = {"recruiter": "BPOC recruiter ID", "user_id": "portal user id", "email": "email address"}
_ALL_VALUES = frozenset(_NOUNS)


def caller_value(field: FieldRule, caller: Caller) -> str:
    """The caller's value for ``field``; Forbidden if the session has none."""
    value = {"recruiter": caller.recruiter_id, "user_id": caller.user_id, "email": caller.email}[field.value]
    if not value:
        raise Forbidden(
            f"The field {field.name} needs your {_NOUNS[field.value]}, and your session has none."
        )
    return value


def _set(field: FieldRule, sent: Any, caller: Caller, roster: Roster) -> Decision:
    return Write(field.name, caller_value(field, caller), field.mode)


def _default(field: FieldRule, sent: Any, caller: Caller, roster: Roster) -> Decision:
    return Write(field.name, caller_value(field, caller), field.mode) if sent is None else None


def _enforce(field: FieldRule, sent: Any, caller: Caller, roster: Roster) -> Decision:
    mine = caller_value(field, caller)
    if sent is None:
        return Write(field.name, mine, field.mode)
    # UUIDs and email addresses compare without regard to case; an opaque portal user id compares exactly.
    same = isinstance(sent, str) and (
        sent == mine if field.value == "user_id" else sent.lower() == mine.lower()
    )
    if not same:
        raise Forbidden(
            f"The field {field.name} must be your own {_NOUNS[field.value]} ({mine}), or left out."
        )
    return None


def _reference(field: FieldRule, sent: Any, caller: Caller, roster: Roster) -> Decision:
    if sent is None:
        return Write(field.name, caller_value(field, caller), field.mode)
    if isinstance(sent, str) and sent:
        mine = caller.recruiter_id
        if mine is not None and sent.lower() == mine.lower():
            return None
        active = roster.is_active(sent)
        if active is None:
            return Unchecked(field.name, "must be an active recruiter of the agency")
        if active:
            return None
    raise Unprocessable(
        f"The field {field.name} names {_short(sent)}, which is not an active recruiter of this agency."
    )


MODES: Mapping[Mode, ModeSpec] = MappingProxyType(
    {
        Mode.SET: ModeSpec("always, over the client's value", "never", _ALL_VALUES, False, _set),
        Mode.DEFAULT: ModeSpec("when absent or null", "never", _ALL_VALUES, False, _default),
        Mode.ENFORCE: ModeSpec(
            "when absent or null",
            "403 when the client's value is not the caller's",
            _ALL_VALUES,
            False,
            _enforce,
        ),
        Mode.REFERENCE: ModeSpec(
            "when absent or null",
            "422 when the client's value is not an active recruiter of the agency",
            frozenset({"recruiter"}),
            True,
            _reference,
        ),
    }
)


def plan(rule: Rule, body: Mapping[str, Any], caller: Caller, roster: Roster) -> Plan:
    """The writes ``rule`` makes to ``body`` for ``caller``, the first refusal, and what is left unchecked.

    Planning goes on past a refusal, so report-only mode can log everything the rule would write.
    """
    writes: list[Write] = []
    unchecked: list[Unchecked] = []
    refusal: ProxyError | None = None
    for field in rule.fields:
        try:
            decision = MODES[field.mode].decide(field, _lookup(body, field), caller, roster)
        except ProxyError as exc:
            refusal = refusal or exc
            continue
        if isinstance(decision, Write):
            writes.append(decision)
        elif isinstance(decision, Unchecked):
            unchecked.append(decision)
    return Plan(tuple(writes), refusal, tuple(unchecked))


def _lookup(body: Mapping[str, Any], field: FieldRule) -> Any:
    """What the client sent for ``field`` (None when absent or null); BadRequest if its path is blocked."""
    node: Any = body
    for depth, key in enumerate(field.path):
        if node is None:
            return None
        if not isinstance(node, Mapping):
            blocked = ".".join(field.path[:depth])
            raise BadRequest(
                f"The field {field.name} cannot be written because {blocked} is {json_kind(node)}, not an object."
            )
        node = node.get(key)
    return node


def apply(body: dict[str, Any], decided: Plan) -> dict[str, Any]:
    """Do the writes of ``decided`` in ``body`` itself (mutated and returned), creating objects on the way.

    A null on the way counts as absent and becomes an object. A plan with a refusal is not applied: its
    refusal is raised, so a forgotten check cannot forward a refused body.
    """
    if decided.refusal is not None:
        raise decided.refusal
    for write in decided.writes:
        *parents, last = write.field.split(".")
        node = body
        for key in parents:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif not isinstance(child, dict):
                raise BadRequest(f"The field {write.field} cannot be written because {key} is not an object.")
            node = child
        node[last] = write.value
    return body


def json_kind(value: Any) -> str:
    """How a JSON value is named in a refusal: "an array", "a string", "null", ..."""
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


def _short(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else json_kind(value)
    return text if len(text) <= 60 else text[:57] + "..."
