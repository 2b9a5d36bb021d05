"""``bpoc-proxy explain``: what the proxy would do with one request, worked out by the functions that serve it.

The request goes through the same steps as in the pipeline (``normalise_path``, ``attribution.check_unlisted``,
``require_role`` and ``prepare``), with the session facts given on the command line. Nothing is sent anywhere by
default: BPOC's directory is replaced by :class:`OfflineDirectory`, which asks no one and lists what depends on
the directory ("interviewerId: must be an active recruiter of the agency; not checked offline") instead of
inventing an answer. ``--directory`` reads BPOC's directory with the configured key, so those checks are made for
real.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from .attribution import UNKNOWN, AttributedRequest, Directory, Unknown, check_unlisted, prepare, require_role
from .auth import Principal
from .errors import ProxyError
from .modes import Unchecked
from .paths import check_method, normalise_path
from .recruiters import Identity, email_of
from .rules import Match, RuleSet


@dataclass(frozen=True, slots=True)
class ExplainRequest:
    method: str
    target: str  # the path, with an optional ?query, as a client would send it
    body: bytes
    content_type: str | None
    principal: Principal


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the proxy would do: forward (with the writes and body) or refuse (with the client's answer)."""

    method: str
    path: str
    outcome: Literal["forwarded", "refused"]
    entry: str  # which entry of the rules file decided, in words
    status: int | None = None
    code: str | None = None
    error: str | None = None
    rule: str | None = None  # "METHOD /template" of the matched rule or route
    fields: dict[str, str] = field(default_factory=dict)
    unchecked: tuple[str, ...] = ()
    body: str | None = None  # the body sent to BPOC on a rule route

    def as_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "status": self.status,
            "code": self.code,
            "error": self.error,
            "method": self.method,
            "path": self.path,
            "rule": self.rule,
            "entry": self.entry,
            "fields": self.fields,
            "unchecked": list(self.unchecked),
            "body": self.body,
        }

    def as_text(self) -> str:
        lines = [f"{self.method} {self.path}", f"  entry:     {self.entry}"]
        if self.outcome == "refused":
            lines.append(f"  outcome:   refused with {self.status} ({self.code}): {self.error}")
        else:
            lines.append("  outcome:   forwarded" + ("" if self.body is not None else " unchanged"))
        lines += [f"  writes:    {name} = {value}" for name, value in self.fields.items()]
        lines += [f"  unchecked: {condition}" for condition in self.unchecked]
        if self.body is not None:
            lines.append(f"  body:      {self.body or '(empty)'}")
        return "\n".join(lines)


class OfflineDirectory:
    """Stands in for BPOC's directory without asking it: what depends on the directory is noted, not decided."""

    def __init__(self) -> None:
        self.unchecked: list[Unchecked] = []

    async def resolve(self, principal: Principal) -> Identity:
        if principal.recruiter_id is not None:
            return Identity(principal.recruiter_id, principal.role)
        email = email_of(principal)  # the proxy's own 403 when the session carries neither
        self.unchecked.append(Unchecked("recruiter", f"the caller's ID is looked up by email ({email})"))
        return Identity(f"<recruiter id of {email}>", principal.role)

    async def role_of(self, principal: Principal) -> str | None | Literal[Unknown.UNKNOWN]:
        return principal.role if principal.role is not None else UNKNOWN

    async def active_ids(self) -> frozenset[str] | None:
        return None

    async def resync(self, principal: Principal, stale_id: str) -> str | None:
        return None


async def explain(
    rules: RuleSet, request: ExplainRequest, directory: Directory, max_body_bytes: int
) -> Verdict:
    """The verdict on ``request``; ProxyErrors become a refusal, exactly as the pipeline answers them."""
    method = request.method.upper()
    raw_path, _, query = request.target.partition("?")
    verdict = Verdict(method, raw_path, "forwarded", "none (the path was refused before matching)")
    try:
        path = normalise_path(raw_path.encode("utf-8"))
        check_method(method)
        match = rules.match(method, path)
        check_unlisted(rules, match, method, path)
        verdict = Verdict(
            method,
            path,
            "forwarded",
            _entry(rules, method, path, match),
            rule=match.label if match is not None else None,
        )
        if match is not None and match.rule is not None:
            attributed = AttributedRequest(
                match.rule, query.encode("utf-8"), request.body, request.content_type, None, max_body_bytes
            )
            attribution = await prepare(attributed, request.principal, directory)
            if attribution.refusal is not None:
                raise attribution.refusal
            return replace(
                verdict,
                fields={write.field: write.value for write in attribution.writes},
                unchecked=_notes(directory, attribution.unchecked),
                body=attribution.sent.decode("utf-8", "replace"),
            )
        note = (
            await require_role(match.roles, request.principal, directory) if match and match.roles else None
        )
        return replace(verdict, unchecked=_notes(directory, (note,) if note else ()))
    except ProxyError as exc:
        return replace(
            verdict,
            outcome="refused",
            status=exc.status_code,
            code=exc.code,
            error=exc.message,
            unchecked=_notes(directory, ()),
        )


def _entry(rules: RuleSet, method: str, path: str, match: Match | None) -> str:
    public = "; public: no session needed" if rules.is_public(method, path) else ""
    if match is None:
        return f"no rule or route (unlisted: {rules.unlisted}){public}"
    item = match.rule or match.route
    assert item is not None
    kind = "rule" if match.rule is not None else "route"
    flags = "; report-only" if match.rule is not None and match.rule.report_only else ""
    roles = f"; roles: {', '.join(sorted(match.roles))}" if match.roles else ""
    return f"{kind} {item.method} {item.template} ({rules.source}:{item.line}){roles}{flags}{public}"


def _notes(directory: Directory, unchecked: tuple[Unchecked, ...]) -> tuple[str, ...]:
    """What could not be checked here, in words: the offline directory's notes first, then the stage's."""
    offline = directory.unchecked if isinstance(directory, OfflineDirectory) else []
    return tuple(f"{u.field}: {u.condition}; not checked offline" for u in (*offline, *unchecked))
