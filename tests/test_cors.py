"""CORS for browser frontends on another origin: preflights answered by the proxy, listed origins only."""

from __future__ import annotations

import httpx
import pytest

from proxy.sandbox.seed import BpocState

from .conftest import ProxyFactory, auth, base_env

PORTAL = "https://portal.agency.example"
PREFLIGHT = {
    "Origin": PORTAL,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type",
}


@pytest.fixture
def cors_proxy(start_proxy: ProxyFactory, bpoc_url: str) -> str:
    return start_proxy(base_env(bpoc_url, PROXY_CORS_ORIGINS=f"{PORTAL}, https://other.agency.example"))


def forwarded(state: BpocState) -> list[object]:
    return [r for r in state.requests if r.path != "/api/v1/agency/recruiters"]


def test_preflight_from_a_listed_origin_is_answered_without_a_session(
    cors_proxy: str, client: httpx.Client, bpoc_state: BpocState
) -> None:
    """A browser's preflight gets 204 with the CORS headers, needs no session, and never reaches BPOC."""
    bpoc_state.reset_requests()
    response = client.options(cors_proxy + "/api/v1/jobs/create", headers=PREFLIGHT)
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == PORTAL
    assert response.headers["access-control-allow-credentials"] == "true"
    assert "POST" in response.headers["access-control-allow-methods"]
    assert response.headers["access-control-allow-headers"] == "authorization, content-type"
    assert forwarded(bpoc_state) == []


def test_preflight_from_another_origin_is_refused(
    cors_proxy: str, client: httpx.Client, bpoc_state: BpocState
) -> None:
    """An origin not in PROXY_CORS_ORIGINS gets a 403 sentence and no CORS headers."""
    bpoc_state.reset_requests()
    response = client.options(
        cors_proxy + "/api/v1/jobs/create", headers={**PREFLIGHT, "Origin": "https://evil.example"}
    )
    assert response.status_code == 403
    assert "PROXY_CORS_ORIGINS" in response.json()["error"]
    assert "access-control-allow-origin" not in response.headers
    assert forwarded(bpoc_state) == []


def test_responses_to_a_listed_origin_carry_cors_headers(cors_proxy: str, client: httpx.Client) -> None:
    """Actual responses, errors included, let the listed origin read them and the proxy's own headers."""
    ok = client.post(
        cors_proxy + "/api/v1/jobs/create", headers={**auth(), "Origin": PORTAL}, json={"title": "x"}
    )
    assert ok.status_code == 201
    assert ok.headers["access-control-allow-origin"] == PORTAL
    assert "X-Attribution-Id" in ok.headers["access-control-expose-headers"]
    refused = client.post(cors_proxy + "/api/v1/jobs/create", headers={"Origin": PORTAL}, json={"title": "x"})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == PORTAL
    other = client.get(cors_proxy + "/_sandbox/echo/x", headers={**auth(), "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_without_cors_origins_options_is_forwarded_like_any_request(
    proxy_url: str, client: httpx.Client
) -> None:
    """CORS is off by default: an OPTIONS is an ordinary request, which needs a session."""
    response = client.options(proxy_url + "/api/v1/jobs/create", headers=PREFLIGHT)
    assert response.status_code == 401
    assert "access-control-allow-origin" not in response.headers
