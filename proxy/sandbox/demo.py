"""``bpoc-proxy demo``: the BPOC sandbox, the proxy in front of it, and a curl command to try it with.

Nothing outside this machine is needed: the sandbox plays BPOC, a fresh random agency key and portal secret are
made for the run, and the session token printed for the demo user is signed with that secret.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import sys
from pathlib import Path

import httpx
import uvicorn

from ..app import create_app
from ..errors import ConfigError
from ..logs import logging_config
from ..protocol import SERVER_OPTIONS
from ..settings import Settings
from .bpoc import create_bpoc_app
from .seed import BOB_ID, BpocState
from .server import bind_socket, serve_in_thread
from .tokens import mint_hs

DEMO_USER = {
    "sub": "portal-user-42",
    "email": "bob@agency.example",
    "first_name": "Bob",
    "last_name": "Recruiter",
}
JOB = {"clientId": "c0ffee00-0000-4000-8000-000000000001", "title": "Senior Developer", "salary_min": 80000}


def run_demo(*, port: int = 8080, self_test: bool = False) -> int:
    rules = Path(os.environ.get("PROXY_RULES") or "rules.yaml")
    if not rules.is_file():
        raise ConfigError(f"the demo needs the rules file {str(rules)!r}: run it from the repository root")
    try:
        sock = bind_socket("127.0.0.1", port)
    except OSError as exc:
        raise ConfigError(
            f"port {port} is not free ({exc.strerror}); try bpoc-proxy demo --port 8081"
        ) from None

    state = BpocState.seeded(secrets.token_urlsafe(24))
    jwt_secret = secrets.token_urlsafe(32)
    token = mint_hs(jwt_secret, **DEMO_USER)  # type: ignore[arg-type]
    with serve_in_thread(create_bpoc_app(state)) as bpoc_url:
        settings = Settings.from_environ(
            {
                "BPOC_BASE_URL": bpoc_url,
                "BPOC_API_KEY": state.api_key,
                "PORTAL_JWT_SECRET": jwt_secret,
                "PROXY_RULES": str(rules),
                "PROXY_LOG_LEVEL": "warning",
            }
        )
        proxy_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(create_app(settings), log_config=logging_config("warning"), **SERVER_OPTIONS)
        if self_test:
            sock.close()
            with serve_in_thread(config.app, port=port, **SERVER_OPTIONS) as url:
                return _self_test(url, token)
        _print_banner(proxy_url, token)
        uvicorn.Server(config).run(sockets=[sock])
    return 0


def _curl(proxy_url: str, token: str) -> str:
    auth = shlex.quote(f"Authorization: Bearer {token}")
    create = (
        f"curl -s -X POST {proxy_url}/api/v1/jobs/create -H {auth} "
        f"-H 'Content-Type: application/json' -d {shlex.quote(json.dumps(JOB))}"
    )
    show = f"curl -s {proxy_url}/api/v1/activity -H {auth}"
    return f"{create}; echo; {show}; echo"


def _print_banner(proxy_url: str, token: str) -> None:
    print(
        f"""
bpoc-proxy demo: the proxy listens on {proxy_url}, in front of a BPOC sandbox.
The demo user is bob@agency.example, BPOC recruiter {BOB_ID}.
The client sends no X-API-Key and no postedBy: the proxy adds both.

Paste this to create a job through the proxy, then see BPOC's activity log attribute it to Bob:

{_curl(proxy_url, token)}

Press Ctrl-C to stop.
""",
        flush=True,
    )


def _self_test(proxy_url: str, token: str) -> int:
    """What the printed commands do, checked: the job is created and attributed to Bob."""
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=proxy_url, headers=headers, trust_env=False, timeout=10) as client:
        created = client.post("/api/v1/jobs/create", json=JOB)
        activity = client.get("/api/v1/activity")
    print(f"POST /api/v1/jobs/create -> {created.status_code} {created.text}")
    print(f"GET /api/v1/activity -> {activity.status_code} {activity.text}")
    entries = activity.json().get("activity", []) if activity.status_code == 200 else []
    ok = created.status_code in (200, 201) and any(e.get("performed_by_id") == BOB_ID for e in entries)
    print("demo self-test: " + ("OK, the job is attributed to Bob" if ok else "FAILED"), file=sys.stderr)
    return 0 if ok else 1
