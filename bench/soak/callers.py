"""The soak's callers and the requests they send, shared by the load side and the recording upstream.

Each caller is a portal user with a session of its own and a BPOC recruiter of its own, so attribution is
checked per caller: every POST body says who sent it (``soakCaller``), and the upstream checks that its
``postedBy`` is that caller's recruiter ID. Even callers carry their recruiter ID in the session; odd ones do not,
and the proxy finds it in the agency's directory, which the upstream serves.

The mix, per ten requests: six attributed POSTs (no ``postedBy``), one POST spoofing another caller's
``postedBy`` (the rule's ``set`` must overwrite it), and three pass-through GETs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from ..cases import JOB_PATH, LIST_PATH, job_body

ATTRIBUTED, SPOOFED, GET = "attributed", "spoofed", "get"
KINDS = (ATTRIBUTED, SPOOFED, GET)
#: Ten requests in the order each caller's turn takes them: 60% attributed, 10% spoofed, 30% GET.
MIX = (ATTRIBUTED, GET, ATTRIBUTED, ATTRIBUTED, SPOOFED, GET, ATTRIBUTED, ATTRIBUTED, GET, ATTRIBUTED)
CALLER_FIELD, KIND_FIELD = "soakCaller", "soakKind"
DIRECTORY_PATH = "/api/v1/agency/recruiters"


@dataclass(frozen=True)
class Caller:
    index: int
    user_id: str
    email: str
    recruiter_id: str
    carries_id: bool  # the session carries the recruiter ID; else the proxy looks the email up


def callers(count: int) -> list[Caller]:
    return [
        Caller(i, f"soak-user-{i}", f"soak{i}@agency.example", recruiter_id(i), i % 2 == 0)
        for i in range(count)
    ]


def recruiter_id(index: int) -> str:
    return f"50a50000-0000-4000-8000-{index:012d}"


def spoofed_id(caller: Caller, count: int) -> str:
    """The ``postedBy`` a spoofing POST of ``caller`` sends: the next caller's, a real recruiter of the agency."""
    return recruiter_id((caller.index + 1) % count)


def directory_json(count: int) -> bytes:
    recruiters = [
        {"id": c.recruiter_id, "email": c.email, "role": "recruiter", "is_active": True}
        for c in callers(count)
    ]
    return json.dumps({"recruiters": recruiters}).encode()


def post_body(caller: Caller, kind: str, count: int) -> bytes:
    """The 1 KB job posting of bench/cases.py with the caller's mark, and for a spoof another's ``postedBy``."""
    job = json.loads(job_body())
    job[CALLER_FIELD] = caller.index
    job[KIND_FIELD] = kind
    if kind == SPOOFED:
        job["postedBy"] = spoofed_id(caller, count)
    return json.dumps(job, separators=(",", ":")).encode()


def raw_requests(host: str, port: int, tokens: Sequence[str], mix: Sequence[str] = MIX) -> list[bytes]:
    """The requests of ``mix`` as raw HTTP/1.1, the callers taking turns at each: ``tokens[i]`` is caller i's
    session."""
    count = len(tokens)
    people = callers(count)
    return [_raw(host, port, people[i], tokens[i], kind, count) for kind in mix for i in range(count)]


def _raw(host: str, port: int, caller: Caller, token: str, kind: str, count: int) -> bytes:
    lines = [f"Host: {host}:{port}", f"Authorization: Bearer {token}"]
    if kind == GET:
        head = f"GET {LIST_PATH} HTTP/1.1"
        body = b""
    else:
        head = f"POST {JOB_PATH} HTTP/1.1"
        body = post_body(caller, kind, count)
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join([head, *lines]) + "\r\n\r\n").encode("latin-1") + body
