"""BPOC's two recruiter endpoints: list the agency's directory, create a recruiter.

httpx's errors for these calls are converted here, once, into the proxy's errors (ServiceUnavailable or
Forbidden, one sentence each). The agency API key is passed in for each call and never logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import httpx

from .errors import Forbidden, ProxyError, ServiceUnavailable

log = logging.getLogger("proxy.recruiters")

DIRECTORY_PATH = "/api/v1/agency/recruiters"
CREATE_PATH = "/api/v1/recruiters/create"


@dataclass(frozen=True, slots=True)
class Recruiter:
    id: str
    email: str
    is_active: bool
    role: str | None
    first_name: str | None = None
    last_name: str | None = None


@dataclass(frozen=True, slots=True)
class Created:
    """BPOC's answer to a creation: its status, and the new recruiter's ID when it answered 2xx with one."""

    status: int
    recruiter_id: str | None


async def fetch_directory(
    http: httpx.AsyncClient, base_url: str, api_key: str, timeout: float
) -> list[Recruiter]:
    """Every recruiter of the agency, active or not; ServiceUnavailable (one sentence) if BPOC cannot say."""
    try:
        response = await http.get(
            base_url.rstrip("/") + DIRECTORY_PATH,
            headers={"X-API-Key": api_key, "Accept": "application/json"},
            timeout=timeout,
        )
    except httpx.HTTPError as exc:
        raise ServiceUnavailable(
            f"The BPOC recruiter directory cannot be reached ({type(exc).__name__})"
        ) from exc
    if response.status_code in (401, 403):
        raise ServiceUnavailable(
            f"BPOC refused the agency API key when listing recruiters (HTTP {response.status_code})"
        )
    if not response.is_success:
        raise ServiceUnavailable(f"The BPOC recruiter directory answered HTTP {response.status_code}")
    document = _json(response)
    entries = document.get("recruiters") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ServiceUnavailable("The BPOC recruiter directory gave an answer without a list of recruiters")
    return [recruiter for recruiter in map(_recruiter, entries) if recruiter is not None]


async def create_recruiter(
    http: httpx.AsyncClient, base_url: str, api_key: str, timeout: float, body: dict[str, str]
) -> Created:
    """POST the new recruiter; ServiceUnavailable if BPOC cannot be reached. Any answer is returned as it is."""
    try:
        response = await http.post(
            base_url.rstrip("/") + CREATE_PATH,
            json=body,
            headers={"X-API-Key": api_key, "Accept": "application/json"},
            timeout=timeout,
        )
    except httpx.HTTPError as exc:
        raise ServiceUnavailable("BPOC cannot be reached to create your recruiter account") from exc
    answer = _json(response)
    recruiter_id = _text(answer.get("recruiterId")) if isinstance(answer, dict) else None
    return Created(response.status_code, recruiter_id if response.is_success else None)


def not_created(email: str, status: int) -> ProxyError:
    """The error for a creation that gave no recruiter ID: BPOC failing is a 503, BPOC refusing a 403."""
    log.warning("BPOC did not create the recruiter", extra={"fields": {"email": email, "status": status}})
    if status >= 500 or 200 <= status < 300:
        return ServiceUnavailable("BPOC could not create your recruiter account; try again shortly")
    return Forbidden(
        f"Your portal account ({email}) has no BPOC recruiter ID and BPOC refused to create one "
        f"(HTTP {status}); ask an agency admin to invite you to BPOC"
    )


def _recruiter(entry: Any) -> Recruiter | None:
    if not isinstance(entry, dict):
        return None
    rid, email = _text(entry.get("id")), _text(entry.get("email"))
    if rid is None or email is None:
        log.debug("skipped a directory entry without an id or email")
        return None
    return Recruiter(
        id=rid,
        email=email,
        # Only an explicit false excludes: the guide filters on is_active = true, older answers may omit it.
        is_active=entry.get("is_active") is not False,
        role=_text(entry.get("role")),
        first_name=_text(entry.get("firstName")),
        last_name=_text(entry.get("lastName")),
    )


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return None


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
