"""The shipped rules against the sandbox, through the proxy: every guide endpoint attributed, no way around it."""

from __future__ import annotations

import gzip
import http.client
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import simplejson

from proxy.sandbox.seed import ALICE_ID, BOB_ID, IVAN_ID, MALLORY_ID, MARIA_ID, BpocState, RecordedRequest

from .conftest import auth, base_env

JOB_ID = "3f0b6c2e-8a9d-4f5e-9b1a-2c3d4e5f6a7b"
APP_ID = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"
TASK_ID = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
JSON_HEADERS = {"Content-Type": "application/json"}


def forwarded(state: BpocState) -> list[RecordedRequest]:
    """What reached BPOC, less the proxy's own directory calls."""
    return [r for r in state.requests if r.path != "/api/v1/agency/recruiters"]


def sent_body(state: BpocState, path: str) -> dict[str, Any]:
    """The JSON body the sandbox received on the last request to ``path``."""
    received = [r for r in state.requests if r.path == path]
    assert received, f"nothing reached BPOC at {path}"
    parsed: dict[str, Any] = simplejson.loads(received[-1].body or b"{}", use_decimal=True)
    return parsed


GUIDE_ENDPOINTS = [
    pytest.param("POST", "/api/v1/jobs/create", {"title": "Dev"}, "postedBy", "alice", id="jobs-create"),
    pytest.param("POST", f"/api/v1/jobs/{JOB_ID}/approve", None, "approvedBy", "maria", id="jobs-approve"),
    pytest.param(
        "POST",
        f"/api/v1/applications/{APP_ID}/release",
        {"notes": "Great"},
        "releasedBy",
        "bob",
        id="release",
    ),
    pytest.param(
        "POST",
        f"/api/v1/applications/{APP_ID}/reject",
        {"reason": "Skills"},
        "rejectedBy",
        "bob",
        id="reject",
    ),
    pytest.param(
        "POST",
        "/api/v1/interviews",
        {"applicationId": APP_ID, "interviewType": "client_round_1", "scheduledAt": "2026-02-01T10:00:00Z"},
        "scheduledBy",
        "bob",
        id="interviews",
    ),
    pytest.param(
        "POST",
        "/api/v1/onboarding",
        {"applicationId": APP_ID, "tasks": []},
        "createdBy",
        "bob",
        id="onboarding",
    ),
    pytest.param(
        "PUT",
        f"/api/v1/onboarding/{TASK_ID}",
        {"action": "approve"},
        "reviewedBy",
        "bob",
        id="onboarding-review",
    ),
]
IDS = {"alice": ALICE_ID, "bob": BOB_ID, "maria": MARIA_ID}


@pytest.mark.parametrize(("method", "path", "body", "field", "who"), GUIDE_ENDPOINTS)
def test_every_guide_endpoint_is_attributed_to_the_caller(
    proxy_url: str,
    client: httpx.Client,
    bpoc_state: BpocState,
    method: str,
    path: str,
    body: dict[str, object] | None,
    field: str,
    who: str,
) -> None:
    """The field reaches BPOC as the caller's recruiter ID and BPOC's activity log names the caller."""
    response = client.request(
        method,
        proxy_url + path,
        headers={**auth(f"{who}@agency.example"), **JSON_HEADERS},
        content=json.dumps(body) if body is not None else None,
    )
    assert response.status_code in (200, 201), response.text
    assert sent_body(bpoc_state, path)[field] == IDS[who]
    assert bpoc_state.activity[-1].performed_by_id == IDS[who]
    assert len(response.headers["x-attribution-id"]) == 32


def test_interviewer_defaults_to_the_caller(
    proxy_url: str, client: httpx.Client, bpoc_state: BpocState
) -> None:
    """interviewerId is the caller's ID when the client gives none."""
    client.post(proxy_url + "/api/v1/interviews", headers=auth(), json={"applicationId": APP_ID})
    assert sent_body(bpoc_state, "/api/v1/interviews")["interviewerId"] == BOB_ID


@pytest.mark.parametrize(
    ("interviewer", "status"),
    [
        pytest.param(MARIA_ID, 201, id="active-colleague"),
        pytest.param(MARIA_ID.upper(), 201, id="colleague-upper-case"),
        pytest.param(IVAN_ID, 422, id="inactive"),
        pytest.param(MALLORY_ID, 422, id="other-agency"),
        pytest.param("not-a-uuid", 422, id="garbage"),
        pytest.param(42, 422, id="number"),
    ],
)
def test_reference_field_must_name_an_active_recruiter(
    proxy_url: str, client: httpx.Client, bpoc_state: BpocState, interviewer: object, status: int
) -> None:
    """A client-chosen interviewer must be an active recruiter of the agency, else 422 and nothing forwarded."""
    bpoc_state.reset_requests()
    response = client.post(
        proxy_url + "/api/v1/interviews",
        headers=auth(),
        json={"applicationId": APP_ID, "interviewerId": interviewer},
    )
    assert response.status_code == status, response.text
    if status == 422:
        assert "interviewerId" in response.json()["error"]
        assert bpoc_state.requests_to("/api/v1/interviews") == []
    else:
        assert sent_body(bpoc_state, "/api/v1/interviews")["scheduledBy"] == BOB_ID


def test_set_overwrites_a_forged_value(proxy_url: str, client: httpx.Client, bpoc_state: BpocState) -> None:
    """A client cannot post a job in someone else's name: `set` replaces the value."""
    response = client.post(
        proxy_url + "/api/v1/jobs/create", headers=auth(), json={"title": "x", "postedBy": ALICE_ID}
    )
    assert response.status_code == 201
    assert sent_body(bpoc_state, "/api/v1/jobs/create")["postedBy"] == BOB_ID


@pytest.mark.parametrize(
    ("value", "status"),
    [
        pytest.param(None, 200, id="absent"),
        pytest.param(BOB_ID, 200, id="own-id"),
        pytest.param(BOB_ID.upper(), 200, id="own-id-upper-case"),
        pytest.param(ALICE_ID, 403, id="someone-else"),
    ],
)
def test_enforce_refuses_someone_elses_id(
    proxy_url: str, client: httpx.Client, bpoc_state: BpocState, value: str | None, status: int
) -> None:
    """`enforce`: the caller's own ID or nothing passes; another ID is a 403 and never reaches BPOC."""
    bpoc_state.reset_requests()
    body = {"notes": "n"} if value is None else {"notes": "n", "releasedBy": value}
    response = client.post(proxy_url + f"/api/v1/applications/{APP_ID}/release", headers=auth(), json=body)
    assert response.status_code == status, response.text
    if status == 403:
        assert "releasedBy" in response.json()["error"]
        assert bpoc_state.requests_to("/api/v1/applications") == []
    else:
        assert sent_body(bpoc_state, f"/api/v1/applications/{APP_ID}/release")["releasedBy"].lower() == BOB_ID


@pytest.mark.parametrize(
    ("who", "path", "status"),
    [
        pytest.param("bob", f"/api/v1/jobs/{JOB_ID}/approve", 403, id="recruiter-cannot-approve"),
        pytest.param("maria", f"/api/v1/jobs/{JOB_ID}/approve", 200, id="manager-approves"),
        pytest.param("bob", "/api/v1/recruiters/create", 403, id="recruiter-cannot-create-recruiters"),
        pytest.param("alice", "/api/v1/recruiters/create", 201, id="admin-creates-recruiters"),
        pytest.param("maria", "/api/v1/team/invite", 403, id="manager-cannot-invite"),
        pytest.param("alice", "/api/v1/team/invite", 201, id="admin-invites"),
    ],
)
def test_roles_gate_routes(
    proxy_url: str, client: httpx.Client, bpoc_state: BpocState, who: str, path: str, status: int
) -> None:
    """Roles from the directory gate approve, recruiters/create and team/invite."""
    bpoc_state.reset_requests()
    body = {
        "email": "new@agency.example",
        "firstName": "N",
        "lastName": "E",
        "role": "recruiter",
        "name": "N E",
    }
    response = client.post(proxy_url + path, headers=auth(f"{who}@agency.example"), json=body)
    assert response.status_code == status, response.text
    if status == 403:
        assert "role" in response.json()["error"]
        assert bpoc_state.requests_to(path) == []


def test_session_role_wins_over_directory_role(proxy_url: str, client: httpx.Client) -> None:
    """A role carried by the session decides, even where the directory says otherwise."""
    response = client.post(proxy_url + f"/api/v1/jobs/{JOB_ID}/approve", headers=auth(role="manager"))
    assert response.status_code == 200, response.text
    response = client.post(
        proxy_url + f"/api/v1/jobs/{JOB_ID}/approve", headers=auth("maria@agency.example", role="recruiter")
    )
    assert response.status_code == 403


def raw_post(proxy_url: str, path: str, body: dict[str, object]) -> tuple[int, str]:
    """POST with the request target exactly as written: http.client, unlike httpx, does not normalise it."""
    host, port = proxy_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("POST", path, json.dumps(body), {**auth(), **JSON_HEADERS})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


BYPASS_PATHS = [
    pytest.param("/api/v1/jobs/create/", id="trailing-slash"),
    pytest.param("/api/v1//jobs/create", id="double-slash"),
    pytest.param("//api/v1/jobs/create", id="leading-double-slash"),
    pytest.param("/api/v1/jobs/%63reate", id="percent-encoded-letter"),
    pytest.param("/api/v1/%6Aobs/create", id="percent-encoded-segment"),
    pytest.param("/api/v1/x/../jobs/create", id="dot-dot"),
    pytest.param("/api/v1/./jobs/create", id="dot"),
    pytest.param("/api/v1/x/%2e%2e/jobs/create", id="encoded-dot-dot"),
    pytest.param("/API/V1/JOBS/CREATE", id="upper-case"),
    pytest.param("/api/v1/Jobs/Create/", id="mixed-case-and-slash"),
]


@pytest.mark.parametrize("path", BYPASS_PATHS)
def test_path_tricks_still_get_the_rule(proxy_url: str, bpoc_state: BpocState, path: str) -> None:
    """Path variants of jobs/create are normalised, matched and attributed; the normalised path is forwarded."""
    bpoc_state.reset_requests()
    status, text = raw_post(proxy_url, path, {"title": "x", "postedBy": ALICE_ID})
    received = forwarded(bpoc_state)
    assert len(received) == 1, text
    assert received[0].path.lower() == "/api/v1/jobs/create"
    assert simplejson.loads(received[0].body)["postedBy"] == BOB_ID


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/api/v1/jobs%2Fcreate", id="encoded-slash"),
        pytest.param("/api/v1/jobs/create;x=1", id="path-parameter"),
        pytest.param("/api/v1/jobs/%zzcreate", id="bad-escape"),
        pytest.param("/api/../../jobs/create", id="above-root"),
        pytest.param("/api/v1/jobs\\create", id="backslash"),
    ],
)
def test_unnormalisable_paths_are_refused(proxy_url: str, bpoc_state: BpocState, path: str) -> None:
    """What cannot be normalised safely is a 400 with a sentence, and nothing reaches BPOC."""
    bpoc_state.reset_requests()
    status, text = raw_post(proxy_url, path, {"title": "x"})
    assert status == 400
    assert json.loads(text)["requestId"]
    assert forwarded(bpoc_state) == []


@pytest.mark.parametrize("header", ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"])
def test_method_override_headers_are_refused(
    proxy_url: str, client: httpx.Client, bpoc_state: BpocState, header: str
) -> None:
    """A method override could turn a harmless GET into an unattributed POST at BPOC: 400."""
    bpoc_state.reset_requests()
    response = client.get(proxy_url + "/api/v1/jobs/create", headers={**auth(), header: "POST"})
    assert response.status_code == 400
    assert forwarded(bpoc_state) == []


@pytest.mark.parametrize("query", ["postedBy=" + ALICE_ID, "POSTEDBY=x", "postedby=x&a=1"])
def test_attribution_field_in_query_is_refused(
    proxy_url: str, client: httpx.Client, bpoc_state: BpocState, query: str
) -> None:
    """A query parameter named like the rule's field cannot smuggle a second value: 400."""
    bpoc_state.reset_requests()
    response = client.post(f"{proxy_url}/api/v1/jobs/create?{query}", headers=auth(), json={"title": "x"})
    assert response.status_code == 400
    assert "postedby" in response.json()["error"].lower()
    assert forwarded(bpoc_state) == []


def test_empty_body_becomes_an_object_with_the_field(
    proxy_url: str, client: httpx.Client, bpoc_state: BpocState
) -> None:
    """An approve with no body at all is sent as {"approvedBy": ...} with a correct Content-Length."""
    response = client.post(proxy_url + f"/api/v1/jobs/{JOB_ID}/approve", headers=auth("maria@agency.example"))
    assert response.status_code == 200, response.text
    received = bpoc_state.requests[-1]
    assert simplejson.loads(received.body) == {"approvedBy": MARIA_ID}
    assert received.header("content-length") == str(len(received.body))
    assert received.header("content-type") == "application/json"


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "application/vnd.api+json", "APPLICATION/JSON"],
)
def test_json_content_types_are_rewritten(
    proxy_url: str, client: httpx.Client, bpoc_state: BpocState, content_type: str
) -> None:
    """JSON with parameters, and +json types, are JSON; the client's Content-Type is kept."""
    response = client.post(
        proxy_url + "/api/v1/jobs/create",
        headers={**auth(), "Content-Type": content_type},
        content=b'{"title": "x"}',
    )
    assert response.status_code == 201, response.text
    assert sent_body(bpoc_state, "/api/v1/jobs/create")["postedBy"] == BOB_ID


@pytest.mark.parametrize(
    ("content_type", "body", "status"),
    [
        pytest.param("text/plain", b'{"title": "x"}', 415, id="text-plain"),
        pytest.param("application/x-www-form-urlencoded", b"title=x", 415, id="form"),
        pytest.param("application/json", b'["not", "an", "object"]', 400, id="array"),
        pytest.param("application/json", b'{"title": "x",\n "broken": }', 400, id="syntax-error"),
        pytest.param("application/json", b'{"postedBy": "a", "postedBy": "b"}', 400, id="duplicate-keys"),
        pytest.param("application/json", b'{"m": {"k": 1, "k": 2}}', 400, id="nested-duplicate-keys"),
        pytest.param("application/json", b'{"n": NaN}', 400, id="nan"),
        pytest.param("application/json", b'{"t": "\xff"}', 400, id="not-utf8"),
    ],
)
def test_bodies_that_cannot_be_rewritten_are_refused(
    proxy_url: str, client: httpx.Client, bpoc_state: BpocState, content_type: str, body: bytes, status: int
) -> None:
    """Fail closed: a body the proxy cannot rewrite is refused, never forwarded without the field."""
    bpoc_state.reset_requests()
    response = client.post(
        proxy_url + "/api/v1/jobs/create", headers={**auth(), "Content-Type": content_type}, content=body
    )
    assert response.status_code == status, response.text
    assert response.json()["error"]
    assert forwarded(bpoc_state) == []


def test_syntax_error_names_the_position(proxy_url: str, client: httpx.Client) -> None:
    """The parse error says where the body is broken."""
    response = client.post(
        proxy_url + "/api/v1/jobs/create",
        headers={**auth(), **JSON_HEADERS},
        content=b'{"title": "x",\n "broken": }',
    )
    assert "line 2" in response.json()["error"]


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [pytest.param("gzip", gzip.compress, id="gzip"), pytest.param("deflate", zlib.compress, id="deflate")],
)
def test_compressed_bodies_are_decoded_and_sent_plain(
    proxy_url: str, client: httpx.Client, bpoc_state: BpocState, encoding: str, compress
) -> None:
    """A gzip or deflate body is decoded, rewritten and sent on without Content-Encoding."""
    response = client.post(
        proxy_url + "/api/v1/jobs/create",
        headers={**auth(), **JSON_HEADERS, "Content-Encoding": encoding},
        content=compress(b'{"title": "compressed"}'),
    )
    assert response.status_code == 201, response.text
    received = bpoc_state.requests[-1]
    assert received.header("content-encoding") is None
    assert simplejson.loads(received.body) == {"title": "compressed", "postedBy": BOB_ID}


def test_unknown_content_encoding_is_refused(
    proxy_url: str, client: httpx.Client, bpoc_state: BpocState
) -> None:
    """A body the proxy cannot decode is a 415, never forwarded without the field."""
    bpoc_state.reset_requests()
    response = client.post(
        proxy_url + "/api/v1/jobs/create",
        headers={**auth(), **JSON_HEADERS, "Content-Encoding": "br"},
        content=b"\x0b\x02\x80{}\x03",
    )
    assert response.status_code == 415
    assert forwarded(bpoc_state) == []


def test_chunked_body_is_read_whole(proxy_url: str, client: httpx.Client, bpoc_state: BpocState) -> None:
    """A chunked upload on a rule route is read whole, rewritten and sent with a Content-Length."""

    def chunks() -> Iterator[bytes]:
        yield b'{"title": '
        yield b'"chunked"}'

    response = client.post(
        proxy_url + "/api/v1/jobs/create", headers={**auth(), **JSON_HEADERS}, content=chunks()
    )
    assert response.status_code == 201, response.text
    received = bpoc_state.requests[-1]
    assert received.header("transfer-encoding") is None
    assert received.header("content-length") == str(len(received.body))


BODY_WITH_EVERYTHING = (
    '{"title": "Développeur 🚀 日本", "salary_min": 123456789012345678901234567890, '
    '"ratio": 0.1, "fee": 1.10, "tiny": 1e-400, "neg": -0, "z": {"b": 1, "a": 2}}'
)


def test_a_new_field_is_added_and_every_byte_sent_is_kept(
    proxy_url: str, client: httpx.Client, bpoc_state: BpocState
) -> None:
    """The usual case, a field the client left out: the client's text goes on as sent, plus the field."""
    for body in (BODY_WITH_EVERYTHING, '\ufeff{"title": "x"}\n\t ', "{ }", '{"a": "\\u00e9"}'):
        response = client.post(
            proxy_url + "/api/v1/jobs/create", headers={**auth(), **JSON_HEADERS}, content=body.encode()
        )
        assert response.status_code == 201, response.text
        text = body.removeprefix("\ufeff").rstrip()
        separator = "" if text == "{ }" else ","
        expected = f'{text[:-1]}{separator}"postedBy":"{BOB_ID}"}}' + body[len(body.rstrip()) :]
        assert bpoc_state.requests[-1].body.decode("utf-8") == expected


def test_a_replaced_field_keeps_order_unicode_and_exact_numbers(
    proxy_url: str, client: httpx.Client, bpoc_state: BpocState
) -> None:
    """Overwriting a forged value re-encodes the body: key order, unicode and every number's exact value
    survive it."""
    body = BODY_WITH_EVERYTHING[:-1] + f', "postedBy": "{ALICE_ID}"}}'
    response = client.post(
        proxy_url + "/api/v1/jobs/create", headers={**auth(), **JSON_HEADERS}, content=body.encode()
    )
    assert response.status_code == 201, response.text
    raw = bpoc_state.requests[-1].body.decode("utf-8")
    assert raw.startswith('{"title":"Développeur 🚀 日本"')
    assert "123456789012345678901234567890" in raw
    assert '"ratio":0.1' in raw and '"fee":1.10' in raw and "1E-400" in raw.upper() and '"neg":-0' in raw
    parsed = simplejson.loads(raw, use_decimal=True, object_pairs_hook=list)
    assert [key for key, _ in parsed] == [
        "title",
        "salary_min",
        "ratio",
        "fee",
        "tiny",
        "neg",
        "z",
        "postedBy",
    ]
    assert dict(parsed)["postedBy"] == BOB_ID


def test_no_session_means_401_and_nothing_reaches_bpoc(
    proxy_url: str, client: httpx.Client, bpoc_state: BpocState
) -> None:
    """Without a portal session nothing is forwarded, whatever the route."""
    bpoc_state.reset_requests()
    for path in ("/api/v1/jobs/create", "/_sandbox/echo/x"):
        response = client.post(proxy_url + path, json={"title": "x"})
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["requestId"] == response.headers["x-request-id"]
    assert forwarded(bpoc_state) == []


def test_user_without_recruiter_id_is_refused(
    proxy_url: str, client: httpx.Client, bpoc_state: BpocState
) -> None:
    """A portal user BPOC does not know gets 403 saying what to do, and nothing is forwarded."""
    bpoc_state.reset_requests()
    response = client.post(
        proxy_url + "/api/v1/jobs/create", headers=auth("stranger@agency.example"), json={"title": "x"}
    )
    assert response.status_code == 403
    assert "recruiter" in response.json()["error"].lower()
    assert bpoc_state.requests_to("/api/v1/jobs") == []


def write_rules(tmp_path: Path, text: str) -> str:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return str(path)


def test_report_only_forwards_the_body_as_sent_and_logs_the_writes(
    start_proxy, bpoc_url: str, client: httpx.Client, bpoc_state: BpocState, tmp_path: Path, caplog
) -> None:
    """report_only: the proxy logs what it would write (never the body) and forwards the client's bytes."""
    rules = write_rules(
        tmp_path,
        "rules:\n  - match: POST /api/v1/jobs/create\n    set: {postedBy: recruiter}\n    report_only: true\n",
    )
    url = start_proxy(base_env(bpoc_url, PROXY_RULES=rules))
    body = b'{"title": "secret-title", "postedBy": "' + ALICE_ID.encode() + b'"}'
    with caplog.at_level("INFO", logger="proxy.audit"):
        response = client.post(url + "/api/v1/jobs/create", headers={**auth(), **JSON_HEADERS}, content=body)
    assert response.status_code == 201, response.text
    assert bpoc_state.requests[-1].body == body
    records = [r for r in caplog.records if r.name == "proxy.audit"]
    assert records and records[-1].fields["writes"] == {"postedBy": BOB_ID}
    assert records[-1].fields["attributionId"] == response.headers["x-attribution-id"]
    assert "secret-title" not in caplog.text


def test_unlisted_deny_refuses_routes_no_entry_names(
    start_proxy, bpoc_url: str, client: httpx.Client, bpoc_state: BpocState, tmp_path: Path
) -> None:
    """unlisted: deny turns the rules into an allow-list."""
    rules = write_rules(
        tmp_path,
        "unlisted: deny\nrules:\n  - match: POST /api/v1/jobs/create\n    set: {postedBy: recruiter}\n"
        "routes:\n  - match: GET /api/v1/jobs\n",
    )
    url = start_proxy(base_env(bpoc_url, PROXY_RULES=rules))
    bpoc_state.reset_requests()
    assert client.get(url + "/api/v1/activity", headers=auth()).status_code == 403
    assert forwarded(bpoc_state) == []
    assert client.get(url + "/api/v1/jobs", headers=auth()).status_code == 200


def test_nested_fields_and_session_facts(
    start_proxy, bpoc_url: str, client: httpx.Client, bpoc_state: BpocState, tmp_path: Path
) -> None:
    """Dotted fields create nested objects and can carry the portal user id and email."""
    rules = write_rules(
        tmp_path,
        "rules:\n  - match: POST /api/v1/jobs/create\n"
        "    set: {postedBy: recruiter, metadata.portal.userId: user_id, metadata.portal.email: email}\n",
    )
    url = start_proxy(base_env(bpoc_url, PROXY_RULES=rules))
    response = client.post(
        url + "/api/v1/jobs/create",
        headers=auth(sub="portal-7"),
        json={"title": "x", "metadata": {"keep": 1}},
    )
    assert response.status_code == 201, response.text
    assert sent_body(bpoc_state, "/api/v1/jobs/create")["metadata"] == {
        "keep": 1,
        "portal": {"userId": "portal-7", "email": "bob@agency.example"},
    }
