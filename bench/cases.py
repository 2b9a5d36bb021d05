"""What the benchmark measures: the servers it starts, the requests each case sends, and the 1 KB job posting.

Every throughput case names the server whose CPU and memory it reads, and the direct-to-upstream case it is
compared with. The attributed POST is the issue's hot path: JWT session, a rule from rules.yaml writing
``postedBy``, the recruiter from the session or from the directory cache, and the proxy's request log.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from .load import Load

JOB_PATH = "/api/v1/jobs/create"
LIST_PATH = "/api/v1/jobs"
BIG_PATH = "/api/v1/files/big"
UPLOAD_PATH = "/api/v1/files/upload"

# Server keys: the processes the benchmark starts.
UPSTREAM, SINK, CEILING = "upstream", "sink", "ceiling"
ENGINE_AIOHTTP, ENGINE_HTTPX = "engine_aiohttp", "engine_httpx"
PROXY_1, PROXY_2, PROXY_UPLOAD = "proxy_x1", "proxy_x2", "proxy_upload"
PROXY_1_NO_METRICS = "proxy_x1_no_metrics"  # PROXY_METRICS=false: what the metrics cost (issue 10)
PROXY_1_PLAIN_WRITES = "proxy_x1_plain_writes"  # without the head-holding transport: what it saves (issue 9)

CEILING_CASE = "ceiling_post"
DIRECT_POST, DIRECT_GET = "upstream_post", "upstream_get"
ATTRIBUTED_CACHE, ATTRIBUTED_SESSION, PASS_THROUGH = (
    "proxy_x1_post_cache",
    "proxy_x1_post_session",
    "proxy_x1_get",
)
ATTRIBUTED_NO_METRICS = "proxy_x1_post_cache_no_metrics"
ATTRIBUTED_PLAIN_WRITES = "proxy_x1_post_cache_plain_writes"
DOWNLOAD_DIRECT, DOWNLOAD_PROXY = "download_direct", "download_proxy"
UPLOAD_DIRECT, UPLOAD_PROXY = "upload_direct", "upload_proxy"


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    server: str
    load: Load
    direct: str | None  # the direct-to-upstream case to compare with


@dataclass(frozen=True)
class StreamCase:
    key: str
    label: str
    server: str  # where the request is sent
    direction: str  # "download" or "upload"
    direct: str | None


@dataclass(frozen=True)
class Tokens:
    """Two portal sessions for the same user: one carrying the recruiter id, one that needs the directory."""

    with_recruiter: str
    without_recruiter: str


def job_body(size: int = 1024) -> bytes:
    """A job posting as a portal sends it, padded to ``size`` bytes, without ``postedBy`` (the proxy adds it)."""
    job = {
        "title": "Senior Backend Engineer (Python)",
        "company": "Agency Client Ltd",
        "location": {"city": "Manila", "country": "PH", "remote": True},
        "salary": {"min": 90000, "max": 120000, "currency": "PHP", "period": "month"},
        "employmentType": "full_time",
        "skills": ["python", "asyncio", "postgresql", "kubernetes", "http"],
        "benefits": ["HMO", "13th month", "remote allowance"],
        "description": "",
    }
    filler = size - len(json.dumps(job, separators=(",", ":")))
    job["description"] = ("Build and run the services that power our recruiting platform. " * 40)[
        : max(0, filler)
    ]
    return json.dumps(job, separators=(",", ":")).encode()


def throughput_cases(urls: Mapping[str, str], tokens: Tokens) -> list[Case]:
    body = job_body()
    json_type = ("Content-Type", "application/json")
    cached = (json_type, ("Authorization", f"Bearer {tokens.without_recruiter}"))
    session = (json_type, ("Authorization", f"Bearer {tokens.with_recruiter}"))
    get_auth = (("Authorization", f"Bearer {tokens.without_recruiter}"),)

    def post(key: str, label: str, server: str, headers: tuple[tuple[str, str], ...] = (json_type,)) -> Case:
        return Case(key, label, server, Load(urls[server] + JOB_PATH, "POST", body, headers), DIRECT_POST)

    def get(key: str, label: str, server: str) -> Case:
        return Case(key, label, server, Load(urls[server] + LIST_PATH, "GET", b"", get_auth), DIRECT_GET)

    return [
        post(CEILING_CASE, "ceiling: Starlette parse + dump, no upstream", CEILING),
        post(DIRECT_POST, "direct to upstream: POST 1 KB", UPSTREAM),
        get(DIRECT_GET, "direct to upstream: GET", UPSTREAM),
        post("engine_httpx", "engine: httpx (Starlette + httpx.AsyncClient)", ENGINE_HTTPX),
        post("engine_aiohttp", "engine: aiohttp (Starlette + aiohttp.ClientSession)", ENGINE_AIOHTTP),
        post(ATTRIBUTED_SESSION, "proxy x1: attributed POST, recruiter from session", PROXY_1, session),
        post(ATTRIBUTED_CACHE, "proxy x1: attributed POST, recruiter from cache", PROXY_1, cached),
        post(
            ATTRIBUTED_NO_METRICS,
            "proxy x1, metrics off: attributed POST, from cache",
            PROXY_1_NO_METRICS,
            cached,
        ),
        post(
            ATTRIBUTED_PLAIN_WRITES,
            "proxy x1, head and body in two writes: attributed POST",
            PROXY_1_PLAIN_WRITES,
            cached,
        ),
        get(PASS_THROUGH, "proxy x1: pass-through GET", PROXY_1),
        post("proxy_x2_post_cache", "proxy x2: attributed POST, recruiter from cache", PROXY_2, cached),
        get("proxy_x2_get", "proxy x2: pass-through GET", PROXY_2),
    ]


def stream_cases() -> list[StreamCase]:
    return [
        StreamCase(DOWNLOAD_DIRECT, "download: direct to upstream", UPSTREAM, "download", None),
        StreamCase(DOWNLOAD_PROXY, "download: through proxy x1", PROXY_1, "download", DOWNLOAD_DIRECT),
        StreamCase(UPLOAD_DIRECT, "upload: direct to sink", SINK, "upload", None),
        StreamCase(UPLOAD_PROXY, "upload: through proxy x1", PROXY_UPLOAD, "upload", UPLOAD_DIRECT),
    ]
