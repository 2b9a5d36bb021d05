"""The sandbox BPOC's data: recruiters, records, the audit trail, and every request it received.

``BpocState`` is shared between the sandbox server's thread and the test or demo that inspects it, so
every write and every copy-out goes through one ``threading.Lock``. ``BpocState.seeded(api_key)`` builds
the agency that the demo and the tests start from; its fixed UUIDs are the constants below.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

AGENCY_ID = "5d723bfe-fab4-4936-a258-4409bfbd7b3d"
OTHER_AGENCY_ID = "3ee15a10-e9e6-4151-9f65-3fbb2d5ab919"

ALICE_ID = "88dab5bb-58b7-46cc-9d5f-06a7eae14467"  # alice@agency.example, admin
BOB_ID = "5dc2a700-ab04-45e1-9b2e-5e022d5c5698"  # bob@agency.example, recruiter
MARIA_ID = "0f00640a-4b31-43cd-999d-cb945e2cd5a0"  # maria@agency.example, manager
IVAN_ID = "b6251d9f-0cdc-4ac8-8daf-46b28f0ef95c"  # ivan@agency.example, recruiter, inactive
MALLORY_ID = "ff9a7ce0-f531-4b7b-aed6-ea126f2d4549"  # mallory@other.example, recruiter of another agency

DEMO_JOB_ID = "f2367e49-d92b-41e9-bb5a-5e03136cc01b"
DEMO_APPLICATION_ID = "f13a3cfc-3bf2-4b8b-94d5-29f9cb98e699"

ROLES = ("admin", "manager", "recruiter")

#: BPOC keeps recruiter IDs in a Postgres uuid column; the sandbox accepts only the canonical 8-4-4-4-12 form.
_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)

Table = Literal["jobs", "applications", "interviews", "onboarding_tasks", "invites"]


def is_uuid(value: object) -> bool:
    return isinstance(value, str) and _UUID_RE.fullmatch(value) is not None


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Recruiter:
    id: str
    email: str
    first_name: str
    last_name: str
    role: str
    is_active: bool
    agency_id: str

    def to_json(self) -> dict[str, Any]:
        """The shape of one entry of GET /api/v1/agency/recruiters."""
        return {
            "id": self.id,
            "email": self.email,
            "firstName": self.first_name,
            "lastName": self.last_name,
            "role": self.role,
            "is_active": self.is_active,
        }


@dataclass(frozen=True)
class Activity:
    """One audit-trail entry, shaped like the guide's "Audit Trail" example."""

    action_type: str
    performed_by_id: str | None
    description: str
    timestamp: str
    metadata: dict[str, Any] = field(default_factory=dict)
    performed_by_type: str = "recruiter"

    def to_json(self) -> dict[str, Any]:
        return {
            "action_type": self.action_type,
            "performed_by_type": self.performed_by_type,
            "performed_by_id": self.performed_by_id,
            "description": self.description,
            "timestamp": self.timestamp,
            "metadata": self.metadata,
        }


@dataclass(frozen=True)
class RecordedRequest:
    """A request exactly as the sandbox received it (header names lowercase, in order, duplicates kept)."""

    method: str
    path: str
    raw_path: bytes
    query_string: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header ``name``, or None."""
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        lowered = name.lower()
        return [value for key, value in self.headers if key == lowered]


class BpocState:
    """Everything the sandbox BPOC knows, plus the switches tests flip (``down``, ``delay``, ``body_gate``)."""

    def __init__(
        self, api_key: str, agency_id: str = AGENCY_ID, *, clock: Callable[[], datetime] = _utcnow
    ) -> None:
        self.api_key = api_key
        self.agency_id = agency_id
        self.recruiters: dict[str, Recruiter] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.applications: dict[str, dict[str, Any]] = {}
        self.interviews: dict[str, dict[str, Any]] = {}
        self.onboarding_tasks: dict[str, dict[str, Any]] = {}
        self.invites: dict[str, dict[str, Any]] = {}
        self.activity: list[Activity] = []
        self.requests: list[RecordedRequest] = []
        self.calls: Counter[str] = Counter()
        self.down = False
        self.delay = 0.0
        #: /_sandbox/gated-body sends its head at once and its body once a test sets this.
        self.body_gate = threading.Event()
        self.lock = threading.Lock()
        self._clock = clock

    @classmethod
    def seeded(cls, api_key: str) -> BpocState:
        state = cls(api_key)
        state.add_recruiter("alice@agency.example", "Alice", "Admin", role="admin", id=ALICE_ID)
        state.add_recruiter("bob@agency.example", "Bob", "Recruiter", id=BOB_ID)
        state.add_recruiter("maria@agency.example", "Maria", "Manager", role="manager", id=MARIA_ID)
        state.add_recruiter("ivan@agency.example", "Ivan", "Inactive", active=False, id=IVAN_ID)
        state.add_recruiter(
            "mallory@other.example", "Mallory", "Other", agency_id=OTHER_AGENCY_ID, id=MALLORY_ID
        )
        state.jobs[DEMO_JOB_ID] = {
            "id": DEMO_JOB_ID,
            "title": "Senior Developer",
            "status": "open",
            "postedBy": ALICE_ID,
            "approvedBy": None,
        }
        state.applications[DEMO_APPLICATION_ID] = {
            "id": DEMO_APPLICATION_ID,
            "jobId": DEMO_JOB_ID,
            "candidate": "Casey Candidate",
            "status": "submitted",
        }
        return state

    def now(self) -> str:
        return self._clock().strftime("%Y-%m-%dT%H:%M:%SZ")

    # Recruiters

    def add_recruiter(
        self,
        email: str,
        first_name: str,
        last_name: str,
        role: str = "recruiter",
        active: bool = True,
        agency_id: str | None = None,
        id: str | None = None,
    ) -> Recruiter:
        recruiter = Recruiter(
            id=(id or str(uuid.uuid4())).lower(),
            email=email,
            first_name=first_name,
            last_name=last_name,
            role=role,
            is_active=active,
            agency_id=agency_id or self.agency_id,
        )
        with self.lock:
            self.recruiters[recruiter.id] = recruiter
        return recruiter

    def find_recruiter(self, email: str, *, active_only: bool = False) -> Recruiter | None:
        """Our agency's recruiter with this email (case-insensitive), preferring an active one."""
        with self.lock:
            matches = [
                r
                for r in self.recruiters.values()
                if r.email.lower() == email.lower() and r.agency_id == self.agency_id
            ]
        matches.sort(key=lambda r: not r.is_active)
        if matches and (matches[0].is_active or not active_only):
            return matches[0]
        return None

    def recruiter_by_id(self, recruiter_id: str) -> Recruiter | None:
        with self.lock:
            return self.recruiters.get(recruiter_id.lower())

    def recreate_recruiter(self, email: str) -> Recruiter:
        """Delete the recruiter and create it again: same email, a new UUID; the old UUID becomes unknown."""
        old = self._require(email)
        with self.lock:
            del self.recruiters[old.id]
        return self.add_recruiter(old.email, old.first_name, old.last_name, role=old.role)

    def deactivate(self, email: str) -> Recruiter:
        recruiter = self._require(email)
        with self.lock:
            recruiter.is_active = False
        return recruiter

    def our_recruiters(self) -> list[Recruiter]:
        with self.lock:
            return [r for r in self.recruiters.values() if r.agency_id == self.agency_id]

    def _require(self, email: str) -> Recruiter:
        recruiter = self.find_recruiter(email)
        if recruiter is None:
            raise KeyError(f"no recruiter of agency {self.agency_id} has email {email!r}")
        return recruiter

    # Records and the audit trail

    def upsert(self, table: Table, record_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Create the record if it is new (the sandbox accepts any UUID), merge ``fields``, return a copy."""
        with self.lock:
            records: dict[str, dict[str, Any]] = getattr(self, table)
            record = records.setdefault(record_id, {"id": record_id})
            record.update(fields)
            return dict(record)

    def get(self, table: Table, record_id: str) -> dict[str, Any] | None:
        with self.lock:
            records: dict[str, dict[str, Any]] = getattr(self, table)
            record = records.get(record_id)
            return None if record is None else dict(record)

    def all(self, table: Table) -> list[dict[str, Any]]:
        with self.lock:
            records: dict[str, dict[str, Any]] = getattr(self, table)
            return [dict(record) for record in records.values()]

    def log(
        self, action_type: str, performed_by_id: str | None, description: str, **metadata: Any
    ) -> Activity:
        entry = Activity(action_type, performed_by_id, description, self.now(), metadata)
        with self.lock:
            self.activity.append(entry)
        return entry

    def activity_log(self) -> list[Activity]:
        with self.lock:
            return list(self.activity)

    def activity_for(self, recruiter_id: str | None) -> list[Activity]:
        """Entries attributed to ``recruiter_id``; None gives the entries whose attribution was missing."""
        with self.lock:
            return [entry for entry in self.activity if entry.performed_by_id == recruiter_id]

    # Requests and counters

    def record(self, request: RecordedRequest) -> None:
        with self.lock:
            self.requests.append(request)

    def count(self, endpoint: str) -> None:
        with self.lock:
            self.calls[endpoint] += 1

    def requests_to(self, path_prefix: str) -> list[RecordedRequest]:
        with self.lock:
            return [r for r in self.requests if r.path.startswith(path_prefix)]

    def reset_requests(self) -> None:
        with self.lock:
            self.requests.clear()
            self.calls.clear()
