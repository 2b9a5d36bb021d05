"""What happens on an attributed route, in order, for the proxy and for ``bpoc-proxy explain`` alike.

::

    rules.match, check_unlisted                 the entry the request matches; unlisted under deny: 403
    require_role(roles, principal, directory)   a role the entry requires (403)
    prepare(request, principal, directory):     on a rule route:
        size, then check_query                    a body over PROXY_MAX_BODY_BYTES (413); a query parameter
                                                  named like a field (400)
        decode_body                               a strict JSON object (400, 413, 415)
        directory.resolve                         the caller's recruiter ID (403, 503), if the rule needs it
        require_role                              the rule's roles (403)
        plan, per mode                            (403, 422), against the agency's active recruiters
        render                                    the bytes to forward
    is_stale_refusal(status, answer)            after BPOC answered: did it refuse the recruiter ID as stale?
    replay(attribution, principal, directory)   then the same request once more, with the re-synced ID

The pipeline runs these to serve; ``explain`` runs the same functions with the same inputs and prints the
result. The directory is an interface: the live :class:`~proxy.recruiters.RecruiterDirectory`, or explain's
offline stand-in, which asks no one and says what it could not check (:class:`~proxy.modes.Unchecked`)
instead of inventing a refusal.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol
from urllib.parse import unquote_to_bytes

from .auth import Principal
from .errors import AuthenticationError, BadRequest, Forbidden, PayloadTooLarge, ProxyError
from .jsonbody import JsonBody, decode_body, render
from .modes import ActiveRecruiters, Caller, Plan, Unchecked, UnknownRoster, Write, plan
from .recruiters import Identity
from .rules import Match, Rule, RuleSet

# BPOC's answers that mean "the recruiter ID you sent is stale" (the guide's Troubleshooting section).
_STALE_RECRUITER = (b"Recruiter does not belong to your agency", b"Invalid recruiter")


class Unknown(enum.Enum):
    """What a directory answers when it cannot know (``explain`` offline)."""

    UNKNOWN = "unknown"


UNKNOWN = Unknown.UNKNOWN


class Directory(Protocol):
    """What an attributed route needs to know about the agency's recruiters."""

    async def resolve(self, principal: Principal) -> Identity: ...

    async def role_of(self, principal: Principal) -> str | None | Literal[Unknown.UNKNOWN]: ...

    async def active_ids(self) -> frozenset[str] | None:
        """The lowercase IDs of the agency's active recruiters; None when they cannot be known here."""
        ...

    async def resync(self, principal: Principal, stale_id: str) -> str | None: ...


@dataclass(frozen=True, slots=True)
class AttributedRequest:
    """The parts of a request on a rule route that the rule reads."""

    rule: Rule
    query: bytes
    body: bytes
    content_type: str | None
    content_encoding: str | None
    max_body_bytes: int


@dataclass(frozen=True, slots=True)
class Attribution:
    """What a rule makes of one request: the writes, the bytes to forward, or the refusal."""

    request: AttributedRequest
    recruiter_id: str | None
    plan: Plan
    sent: bytes  # the body to forward: rewritten, or the client's own bytes when the rule is report-only
    unchecked: tuple[Unchecked, ...] = ()
    refusal: ProxyError | None = None  # the plan's refusal, unless the rule is report-only
    replayed_after: str | None = None  # the stale recruiter ID this attribution replaces

    @property
    def writes(self) -> tuple[Write, ...]:
        return self.plan.writes


def check_unlisted(rules: RuleSet, match: Match | None, method: str, path: str) -> None:
    """Forbidden for a request no entry matches (``rules.match`` gave None) under ``unlisted: deny``."""
    if match is None and rules.unlisted == "deny":
        raise Forbidden(f"{method} {path} is not a route this proxy allows (unlisted: deny).")


async def require_role(
    roles: frozenset[str], principal: Principal | None, directory: Directory
) -> Unchecked | None:
    """Forbidden unless the caller has one of ``roles`` (the session's role, else the directory's)."""
    if principal is None:
        raise AuthenticationError("This route requires a portal session.", error="invalid_request")
    role = await directory.role_of(principal)
    allowed = ", ".join(sorted(roles))
    if role is UNKNOWN:
        return Unchecked("role", f"must be one of {allowed}")
    if role not in roles:
        raise Forbidden(f"This route requires one of the roles {allowed}; your role is {role or 'not set'}.")
    return None


async def prepare(request: AttributedRequest, principal: Principal, directory: Directory) -> Attribution:
    """Run a rule over a request, in the order of the module docstring; raise the first refusal before the plan,
    return the plan's own refusal (so it can be logged with what the rule would have written)."""
    rule = request.rule
    if len(request.body) > request.max_body_bytes:
        raise PayloadTooLarge(
            f"The request body is larger than PROXY_MAX_BODY_BYTES ({request.max_body_bytes} bytes)."
        )
    check_query(rule, request.query)
    body = _decode(request)
    identity = await directory.resolve(principal) if rule.needs_recruiter else None
    role = await require_role(rule.roles, principal, directory) if rule.roles else None
    recruiter_id = identity.recruiter_id if identity is not None else None
    return await _attribute(request, body, principal, recruiter_id, directory, (role,) if role else ())


async def replay(attribution: Attribution, principal: Principal, directory: Directory) -> Attribution | None:
    """After BPOC refused ``attribution``'s recruiter ID as stale: re-sync the caller, and the attribution to
    send once more with the new ID, or None if the directory knows no other ID (BPOC's answer then stands)."""
    stale = attribution.recruiter_id
    if stale is None:
        return None
    new_id = await directory.resync(principal, stale)
    if new_id is None:
        return None
    fresh = _decode(attribution.request)  # a new object: the first render may have written into the last one
    again = await _attribute(attribution.request, fresh, principal, new_id, directory, ())
    return replace(again, replayed_after=stale)


def is_stale_refusal(status: int, answer: bytes) -> bool:
    """Whether BPOC's answer says the recruiter ID sent is stale (re-created, or of another agency)."""
    return 400 <= status < 500 and any(marker in answer for marker in _STALE_RECRUITER)


def check_query(rule: Rule, query_string: bytes) -> None:
    """Refuse a query parameter named like one of the rule's fields (a second value BPOC might read).

    Names are percent-decoded and compared case-insensitively with each field's top-level and dotted name;
    bracket forms such as ``metadata[performedBy]`` or ``postedBy[]`` count too.
    """
    if not query_string:
        return
    names = {f.path[0].lower() for f in rule.fields} | {f.name.lower() for f in rule.fields}
    for part in re.split(rb"[&;]", query_string):
        raw_name = part.split(b"=", 1)[0].replace(b"+", b" ")
        name = unquote_to_bytes(raw_name).decode("utf-8", "replace").strip().lower()
        dotted = re.sub(r"\[([^\]]*)\]", r".\1", name).rstrip(".")
        if name in names or dotted in names or dotted.split(".", 1)[0] in names:
            raise BadRequest(
                f"The query parameter {name!r} has the name of a field the proxy writes; remove it."
            )


def audit_record(attribution_id: str, attribution: Attribution) -> dict[str, Any]:
    """The audit record of one attributed request: which rule wrote what, for whom (never the body)."""
    rule = attribution.request.rule
    record: dict[str, Any] = {
        "attributionId": attribution_id,
        "rule": rule.label,
        "recruiterId": attribution.recruiter_id,
        "writes": {write.field: write.value for write in attribution.writes},
        "reportOnly": rule.report_only,
    }
    if attribution.plan.refusal is not None:
        record["wouldRefuse" if rule.report_only else "refused"] = attribution.plan.refusal.message
    if attribution.replayed_after is not None:
        record["replayedAfter"] = attribution.replayed_after
    return record


def _decode(request: AttributedRequest) -> JsonBody:
    return decode_body(request.body, request.content_type, request.content_encoding, request.max_body_bytes)


async def _attribute(
    request: AttributedRequest,
    body: JsonBody,
    principal: Principal,
    recruiter_id: str | None,
    directory: Directory,
    earlier: tuple[Unchecked, ...],
) -> Attribution:
    rule = request.rule
    roster: ActiveRecruiters | UnknownRoster = UnknownRoster()
    if rule.consults_roster and (ids := await directory.active_ids()) is not None:
        roster = ActiveRecruiters(ids)
    decided = plan(rule, body.data, Caller(recruiter_id, principal.user_id, principal.email), roster)
    unchecked = (*earlier, *decided.unchecked)
    if rule.report_only:  # the one deliberate exception to failing closed: forward as sent
        return Attribution(request, recruiter_id, decided, request.body, unchecked)
    if decided.refusal is not None:
        return Attribution(request, recruiter_id, decided, b"", unchecked, decided.refusal)
    return Attribution(request, recruiter_id, decided, render(body, decided), unchecked)
