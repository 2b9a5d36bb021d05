"""A sandbox BPOC: the /api/v1 endpoints of the recruiter-ID guide, and /_sandbox/ aids for proxy tests.

``create_bpoc_app(state)`` answers as the guide describes BPOC: ``X-API-Key`` on every /api/v1 call, a 403
for a recruiter of another agency, a 400 "Invalid recruiter ID" for an unknown or inactive one, and an
audit-trail entry for every action. A missing attribution field is accepted, as the guide allows, and logged
with ``performed_by_id: null`` so a test can see that the attribution was lost.

The /_sandbox/ routes need no key; they echo requests, stream, stall and misbehave on demand. Every request
to the app is appended to ``state.requests``; /_sandbox/upload records its request without the body.
"""

from __future__ import annotations

import hmac
import secrets
import uuid
from collections.abc import Callable
from typing import Any

import simplejson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .aids import _Aids, download_chunks
from .seed import (
    AGENCY_ID,
    DEMO_APPLICATION_ID,
    DEMO_JOB_ID,
    ROLES,
    Activity,
    BpocState,
    RecordedRequest,
    Recruiter,
    is_uuid,
)
from .web import Endpoint, _AnyMethod, _pause, _recorded, _Refusal, _refused, json_response

__all__ = [
    "AGENCY_ID",
    "DEMO_APPLICATION_ID",
    "DEMO_JOB_ID",
    "Activity",
    "BpocState",
    "RecordedRequest",
    "Recruiter",
    "create_bpoc_app",
    "download_chunks",
]

#: The request fields that carry a recruiter UUID, in the order they are validated.
ATTRIBUTION_FIELDS = (
    "postedBy",
    "approvedBy",
    "releasedBy",
    "rejectedBy",
    "scheduledBy",
    "interviewerId",
    "createdBy",
    "reviewedBy",
)

Handler = Callable[[Request, dict[str, Any]], tuple[int, Any]]


def create_bpoc_app(state: BpocState) -> Starlette:
    api = _Api(state)
    aids = _Aids(state)
    routes = [*api.routes(), *aids.routes(), Route("/{rest:path}", _AnyMethod(aids.not_found))]
    return Starlette(routes=routes, exception_handlers={_Refusal: _refused})


def _parse_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        value = simplejson.loads(body, use_decimal=True)
    except ValueError:
        raise _Refusal(400, "Invalid JSON body", "The request body is not valid JSON") from None
    if not isinstance(value, dict):
        raise _Refusal(400, "Invalid JSON body", "The request body must be a JSON object")
    return value


class _Api:
    """The /api/v1 endpoints. Handlers are synchronous: the state is in memory."""

    def __init__(self, state: BpocState) -> None:
        self.state = state

    def routes(self) -> list[Route]:
        post, put, get = ["POST"], ["PUT"], ["GET"]
        table: list[tuple[str, str, list[str], Handler]] = [
            ("/api/v1/jobs/create", "jobs/create", post, self.create_job),
            ("/api/v1/jobs/{id}/approve", "jobs/approve", post, self.approve_job),
            ("/api/v1/jobs/{id}", "jobs/get", get, self.get_job),
            ("/api/v1/jobs", "jobs/list", get, self.list_jobs),
            ("/api/v1/applications/{id}/release", "applications/release", post, self.release),
            ("/api/v1/applications/{id}/reject", "applications/reject", post, self.reject),
            ("/api/v1/interviews", "interviews", post, self.schedule_interview),
            ("/api/v1/onboarding", "onboarding/create", post, self.create_onboarding),
            ("/api/v1/onboarding/{id}", "onboarding/review", put, self.review_onboarding),
            ("/api/v1/recruiters/create", "recruiters/create", post, self.create_recruiter),
            ("/api/v1/agency/recruiters", "agency/recruiters", get, self.list_recruiters),
            ("/api/v1/team/invite", "team/invite", post, self.invite),
            ("/api/v1/activity", "activity", get, self.list_activity),
        ]
        routes = [
            Route(path, self.endpoint(name, handler), methods=methods)
            for path, name, methods, handler in table
        ]
        return [*routes, Route("/api/v1/{rest:path}", _AnyMethod(self.endpoint("unknown", self.unknown)))]

    def endpoint(self, name: str, handler: Handler) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            body = await request.body()
            self.state.record(_recorded(request, body))
            self.state.count(name)
            await self._gate(request)
            status, content = handler(
                request, {} if request.method in ("GET", "HEAD") else _parse_object(body)
            )
            return json_response(content, status)

        return endpoint

    async def _gate(self, request: Request) -> None:
        if self.state.delay > 0:
            await _pause(request, self.state.delay)
        if self.state.down:
            raise _Refusal(503, "Service temporarily unavailable")
        # Node joins repeated headers with ", ", so a client's key forwarded next to ours fails, as on BPOC.
        given = ", ".join(request.headers.getlist("x-api-key"))
        if not hmac.compare_digest(given.encode(), self.state.api_key.encode()):
            raise _Refusal(401, "Invalid API key")

    def _performer(self, body: dict[str, Any], field: str) -> str | None:
        """Validate every attribution field present, then return ``field``'s recruiter UUID (or None)."""
        for name in ATTRIBUTION_FIELDS:
            if body.get(name) is not None:
                body[name] = self._check_recruiter(body[name])
        value: str | None = body.get(field)
        return value

    def _check_recruiter(self, value: object) -> str:
        invalid = _Refusal(400, "Invalid recruiter ID", f"Invalid recruiter ID: {value}")
        if not isinstance(value, str) or not is_uuid(value):
            raise invalid
        recruiter = self.state.recruiter_by_id(value)
        if recruiter is None:
            raise invalid
        if recruiter.agency_id != self.state.agency_id:
            raise _Refusal(403, "Recruiter does not belong to your agency")
        if not recruiter.is_active:
            raise invalid
        return recruiter.id

    @staticmethod
    def _path_id(request: Request, what: str) -> str:
        value: str = request.path_params["id"]
        if not is_uuid(value):
            raise _Refusal(404, f"{what} not found", f"{what} not found: {value}")
        return value.lower()

    # Jobs

    def create_job(self, request: Request, body: dict[str, Any]) -> tuple[int, Any]:
        by = self._performer(body, "postedBy")
        job_id = str(uuid.uuid4())
        fields = {
            **body,
            "postedBy": by,
            "approvedBy": None,
            "status": "pending_approval",
            "createdAt": self.state.now(),
        }
        job = self.state.upsert("jobs", job_id, fields)
        self.state.log(
            "job_created", by, f"Posted job {body.get('title')}", job_id=job_id, title=body.get("title")
        )
        return 201, job

    def approve_job(self, request: Request, body: dict[str, Any]) -> tuple[int, Any]:
        by = self._performer(body, "approvedBy")
        job_id = self._path_id(request, "Job")
        job = self.state.upsert("jobs", job_id, {"approvedBy": by, "status": "approved"})
        self.state.log("job_approved", by, "Approved job", job_id=job_id)
        return 200, job

    def get_job(self, request: Request, body: dict[str, Any]) -> tuple[int, Any]:
        job = self.state.get("jobs", self._path_id(request, "Job"))
        if job is None:
            raise _Refusal(404, "Job not found", f"Job not found: {request.path_params['id']}")
        return 200, job

    def list_jobs(self, request: Request, body: dict[str, Any]) -> tuple[int, Any]:
        return 200, {"jobs": self.state.all("jobs")}

    # Applications

    def release(self, request: Request, body: dict[str, Any]) -> tuple[int, Any]:
        by = self._performer(body, "releasedBy")
        app_id = self._path_id(request, "Application")
        fields = {"status": "released", "releasedBy": by, "notes": body.get("notes")}
        application = self.state.upsert("applications", app_id, fields)
        self.state.log(
            "application_released",
            by,
            "Released candidate to client",
            application_id=app_id,
            notes=body.get("notes"),
        )
        return 200, application

    def reject(self, request: Request, body: dict[str, Any]) -> tuple[int, Any]:
        by = self._performer(body, "rejectedBy")
        app_id = self._path_id(request, "Application")
        fields = {"status": "rejected", "rejectedBy": by, "reason": body.get("reason")}
        application = self.state.upsert("applications", app_id, fields)
        self.state.log(
            "application_rejected",
            by,
            "Rejected application",
            application_id=app_id,
            reason=body.get("reason"),
        )
        return 200, application

    # Interviews and onboarding

    def schedule_interview(self, request: Request, body: dict[str, Any]) -> tuple[int, Any]:
        by = self._performer(body, "scheduledBy")
        interview_id = str(uuid.uuid4())
        keys = ("applicationId", "interviewType", "scheduledAt", "interviewerId", "scheduledBy")
        interview = self.state.upsert("interviews", interview_id, {key: body.get(key) for key in keys})
        self.state.log(
            "interview_scheduled",
            by,
            "Scheduled interview",
            interview_id=interview_id,
            application_id=body.get("applicationId"),
            interviewer_id=body.get("interviewerId"),
            interview_type=body.get("interviewType"),
            scheduled_at=body.get("scheduledAt"),
        )
        return 201, interview

    def create_onboarding(self, request: Request, body: dict[str, Any]) -> tuple[int, Any]:
        by = self._performer(body, "createdBy")
        items = body.get("tasks", [])
        if not isinstance(items, list):
            raise _Refusal(400, "Invalid request", "tasks must be a list")
        application_id = body.get("applicationId")
        tasks = [self._new_task(application_id, item, by) for item in items]
        task_ids = [task["id"] for task in tasks]
        self.state.log(
            "onboarding_created",
            by,
            f"Created {len(tasks)} onboarding tasks",
            application_id=application_id,
            task_ids=task_ids,
        )
        return 201, {"tasks": tasks}

    def _new_task(self, application_id: Any, item: Any, by: str | None) -> dict[str, Any]:
        fields = {"applicationId": application_id, "task": item, "status": "pending", "createdBy": by}
        return self.state.upsert("onboarding_tasks", str(uuid.uuid4()), fields)

    def review_onboarding(self, request: Request, body: dict[str, Any]) -> tuple[int, Any]:
        by = self._performer(body, "reviewedBy")
        task_id = self._path_id(request, "Onboarding task")
        action = body.get("action", "approve")
        if not isinstance(action, str):
            raise _Refusal(400, "Invalid request", "action must be a string")
        status = {"approve": "approved", "reject": "rejected"}.get(action, action)
        task = self.state.upsert("onboarding_tasks", task_id, {"status": status, "reviewedBy": by})
        self.state.log(
            "onboarding_task_reviewed", by, f"Onboarding task {status}", task_id=task_id, action=action
        )
        return 200, task

    # The recruiter directory

    def create_recruiter(self, request: Request, body: dict[str, Any]) -> tuple[int, Any]:
        email, first, last = (_text(body, key) for key in ("email", "firstName", "lastName"))
        role = body.get("role", "recruiter")
        if "@" not in email or role not in ROLES:
            raise _Refusal(
                400, "Invalid request", f"email must be an address and role one of {', '.join(ROLES)}"
            )
        if self.state.find_recruiter(email, active_only=True) is not None:
            raise _Refusal(409, "Recruiter already exists", f"A recruiter with email {email} already exists")
        recruiter = self.state.add_recruiter(email, first, last, role=role)
        return 201, {"recruiterId": recruiter.id, **recruiter.to_json()}

    def list_recruiters(self, request: Request, body: dict[str, Any]) -> tuple[int, Any]:
        return 200, {"recruiters": [r.to_json() for r in self.state.our_recruiters()]}

    def invite(self, request: Request, body: dict[str, Any]) -> tuple[int, Any]:
        email, role = _text(body, "email"), body.get("role", "recruiter")
        if role not in ROLES:
            raise _Refusal(400, "Invalid request", f"role must be one of {', '.join(ROLES)}")
        token = secrets.token_urlsafe(16)
        self.state.upsert("invites", token, {"email": email, "name": body.get("name"), "role": role})
        return 201, {"inviteToken": token, "email": email, "role": role}

    def list_activity(self, request: Request, body: dict[str, Any]) -> tuple[int, Any]:
        entries = [entry.to_json() for entry in self.state.activity_log()]
        for key in ("action_type", "performed_by_id"):
            if key in request.query_params:
                entries = [entry for entry in entries if entry[key] == request.query_params[key]]
        return 200, {"activity": entries}

    def unknown(self, request: Request, body: dict[str, Any]) -> tuple[int, Any]:
        raise _Refusal(404, "Not found", f"No endpoint {request.method} {request.url.path}")


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value.strip():
        raise _Refusal(400, "Invalid request", f"{key} is required")
    return value.strip()
