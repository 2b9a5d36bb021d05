"""The app in process: the ASGI app driven directly (httpx's ASGITransport), with the sandbox BPOC on a real socket.

The fast tier for pipeline changes: no proxy server is started, yet every request goes through the whole pipeline
and the forwarding engine to a BPOC that records what it received. What only a server can show (framing,
streaming over a socket, signals) stays in the end-to-end tests.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from proxy.app import ProxyApp, create_app
from proxy.sandbox.seed import ALICE_ID, BOB_ID, BpocState
from proxy.settings import Settings

from .conftest import API_KEY, auth, base_env


@pytest.fixture
async def app(bpoc_url: str) -> AsyncIterator[ProxyApp]:
    proxy = create_app(Settings.from_environ(base_env(bpoc_url)))
    await proxy.startup()
    yield proxy
    await proxy.shutdown()


@pytest.fixture
async def client(app: ProxyApp) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://proxy.test") as client:
        yield client


def received(state: BpocState, path: str) -> list[dict[str, object]]:
    return [json.loads(r.body) for r in state.requests if r.path == path]


async def test_a_rule_route_is_attributed(client: httpx.AsyncClient, bpoc_state: BpocState) -> None:
    """The caller's recruiter ID overwrites a forged postedBy; the agency key is added; the audit id comes back."""
    response = await client.post(
        "/api/v1/jobs/create", json={"title": "Dev", "postedBy": ALICE_ID}, headers=auth("bob@agency.example")
    )
    assert response.status_code == 201, response.text
    assert received(bpoc_state, "/api/v1/jobs/create") == [{"title": "Dev", "postedBy": BOB_ID}]
    sent = [r for r in bpoc_state.requests if r.path == "/api/v1/jobs/create"][0]
    assert sent.header("x-api-key") == API_KEY and sent.header("authorization") is None
    assert len(response.headers["x-attribution-id"]) == 32
    assert API_KEY not in response.text


async def test_refusals_are_json_with_the_request_id(
    client: httpx.AsyncClient, bpoc_state: BpocState
) -> None:
    """No session: 401 with the JSON shape; a bad body: 400; nothing reaches BPOC."""
    bpoc_state.reset_requests()
    unauthenticated = await client.post("/api/v1/jobs/create", json={}, headers={"X-Request-Id": "req-1"})
    assert unauthenticated.status_code == 401
    assert unauthenticated.json() == {
        "error": unauthenticated.json()["error"],
        "code": "unauthenticated",
        "status": 401,
        "requestId": "req-1",
    }
    bad = await client.post(
        "/api/v1/jobs/create", content=b"[1]", headers={**auth(), "Content-Type": "application/json"}
    )
    assert bad.status_code == 400 and bad.json()["requestId"] == bad.headers["x-request-id"]
    assert [r for r in bpoc_state.requests if r.path == "/api/v1/jobs/create"] == []


async def test_pass_through_keeps_method_path_and_query(client: httpx.AsyncClient) -> None:
    """An unlisted route is forwarded as sent, with X-Forwarded-For naming the client."""
    response = await client.request("PATCH", "/_sandbox/echo/a/b?x=1&y=%20", content=b"raw", headers=auth())
    echo = response.json()
    assert (echo["method"], echo["path"], echo["query_string"]) == (
        "PATCH",
        "/_sandbox/echo/a/b",
        "x=1&y=%20",
    )
    assert ["x-forwarded-for", "203.0.113.7"] in echo["headers"]
    assert echo["body_size"] == 3


async def test_a_stale_recruiter_id_is_replayed_once(
    client: httpx.AsyncClient, bpoc_state: BpocState
) -> None:
    """BPOC refuses a re-created recruiter's old ID: the proxy re-syncs and replays with the new one."""
    headers = auth("bob@agency.example")
    assert (
        await client.post("/api/v1/jobs/create", json={"title": "one"}, headers=headers)
    ).status_code == 201
    new_id = bpoc_state.recreate_recruiter("bob@agency.example").id
    response = await client.post("/api/v1/jobs/create", json={"title": "two"}, headers=headers)
    assert response.status_code == 201, response.text
    assert [body["postedBy"] for body in received(bpoc_state, "/api/v1/jobs/create")] == [
        BOB_ID,
        BOB_ID,
        new_id,
    ]
