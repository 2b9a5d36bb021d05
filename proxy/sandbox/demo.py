"""``bpoc-proxy demo``: the BPOC sandbox, the proxy in front of it, and a curl command to try it with.

Nothing outside this machine is needed: the sandbox plays BPOC, a fresh random agency key and portal secret are
made for the run, and the session token printed for the demo user is signed with that secret. The proxy is served
as ``bpoc-proxy serve`` serves it (proxy/server.py), with its admin listener, and prints a short line for each
request as it is answered: method, path, status, and on attributed routes the fields written for which recruiter.
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
import secrets
import shlex
import sys
import threading
from typing import Any

import httpx

from ..errors import ConfigError
from ..listeners import Listener, bind
from ..logs import logging_config
from ..server import Worker
from ..settings import Settings, rules_location
from .bpoc import create_bpoc_app
from .seed import BOB_ID, BpocState
from .server import serve_in_thread
from .tokens import mint_hs

DEMO_USER = {
    "sub": "portal-user-42",
    "email": "bob@agency.example",
    "first_name": "Bob",
    "last_name": "Recruiter",
}
JOB = {"clientId": "c0ffee00-0000-4000-8000-000000000001", "title": "Senior Developer", "salary_min": 80000}


def run_demo(*, port: int = 8080, admin_port: int = 0, self_test: bool = False) -> int:
    """Serve the demo until Ctrl-C (exit status 0 after the drain), or run the self-test and exit."""
    rules = rules_location(os.environ.get("PROXY_RULES") or None)
    state = BpocState.seeded(secrets.token_urlsafe(24))
    jwt_secret = secrets.token_urlsafe(32)
    token = mint_hs(jwt_secret, **DEMO_USER)  # type: ignore[arg-type]
    environ = {
        "BPOC_API_KEY": state.api_key,
        "PORTAL_JWT_SECRET": jwt_secret,
        "PROXY_RULES": str(rules),
        "PROXY_LOG_LEVEL": "warning",
    }
    listeners = _bind(port, admin_port)
    _print_requests()
    try:
        with serve_in_thread(create_bpoc_app(state)) as bpoc_url:
            settings = Settings.from_environ({**environ, "BPOC_BASE_URL": bpoc_url})
            if self_test:
                return _run_self_test(settings, listeners, token)
            worker = Worker(
                settings, listeners, report=lambda failure: _print_banner(listeners, token, failure)
            )
            return worker.run()
    finally:
        for listener in listeners:
            listener.sock.close()


def _bind(port: int, admin_port: int) -> list[Listener]:
    main = bind("127.0.0.1", port, "the demo's address", "--port")
    try:
        admin = bind("127.0.0.1", admin_port, "the demo's address", "--admin-port")
    except ConfigError:
        main.close()
        raise
    return [Listener(main, admin=False), Listener(admin, admin=True)]


def _run_self_test(settings: Settings, listeners: list[Listener], token: str) -> int:
    """The proxy in a thread, the printed commands' requests from this one."""
    serving = threading.Event()
    failures: list[str] = []

    def started(failure: str | None) -> None:
        failures.extend([failure] if failure else [])
        serving.set()

    worker = Worker(settings, listeners, report=started)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    if not serving.wait(30) or failures:
        print(f"demo self-test: FAILED, the proxy did not start: {failures}", file=sys.stderr)
        return 1
    try:
        return _self_test(listeners[0].url, listeners[1].url, token)
    finally:
        worker.stop()
        thread.join(timeout=30)


class _RequestPrinter(logging.Handler):
    """The proxy's request log as one short line each on stdout: method, path, status; on attributed routes the
    fields written and the recruiter they name."""

    def emit(self, record: logging.LogRecord) -> None:
        fields: dict[str, Any] = getattr(record, "fields", None) or {}
        line = f"  {record.getMessage()}"
        writes = fields.get("writes")
        if writes:
            written = ", ".join(f"{name}={value}" for name, value in writes.items())
            line += f"  wrote {written} (recruiter {fields.get('recruiterId')})"
        print(line, flush=True)


def _print_requests() -> None:
    config = logging_config("warning")
    config["handlers"]["requests"] = {"()": _RequestPrinter}
    for name in ("proxy.access", "proxy.audit"):
        config["loggers"][name] = {"handlers": ["requests"], "level": "INFO", "propagate": False}
    logging.config.dictConfig(config)


def _curl(proxy_url: str, token: str) -> str:
    auth = shlex.quote(f"Authorization: Bearer {token}")
    create = (
        f"curl -s -X POST {proxy_url}/api/v1/jobs/create -H {auth} "
        f"-H 'Content-Type: application/json' -d {shlex.quote(json.dumps(JOB))}"
    )
    show = f"curl -s {proxy_url}/api/v1/activity -H {auth}"
    return f"{create}; echo; {show}; echo"


def _print_banner(listeners: list[Listener], token: str, failure: str | None) -> None:
    if failure is not None:
        print(f"bpoc-proxy demo: the proxy could not start: {failure}", file=sys.stderr, flush=True)
        return
    proxy_url, admin_url = listeners[0].url, listeners[1].url
    print(
        f"""
bpoc-proxy demo: the proxy listens on {proxy_url}, in front of a BPOC sandbox.
The demo user is bob@agency.example, BPOC recruiter {BOB_ID}.
The client sends no X-API-Key and no postedBy: the proxy adds both.

Paste this to create a job through the proxy, then see BPOC's activity log attribute it to Bob:

{_curl(proxy_url, token)}

Prometheus metrics: {admin_url}/metrics (the admin listener; also /healthz and /readyz)
Each request the proxy answers is shown below. Press Ctrl-C to stop.
""",
        flush=True,
    )


def _self_test(proxy_url: str, admin_url: str, token: str) -> int:
    """What the printed commands do, checked: the job is created and attributed to Bob, and counted."""
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=proxy_url, headers=headers, trust_env=False, timeout=10) as client:
        created = client.post("/api/v1/jobs/create", json=JOB)
        activity = client.get("/api/v1/activity")
        metrics = client.get(f"{admin_url}/metrics")
    print(f"POST /api/v1/jobs/create -> {created.status_code} {created.text}")
    print(f"GET /api/v1/activity -> {activity.status_code} {activity.text}")
    print(f"metrics: {admin_url}/metrics -> {metrics.status_code}")
    entries = activity.json().get("activity", []) if activity.status_code == 200 else []
    attributed = created.status_code in (200, 201) and any(
        e.get("performed_by_id") == BOB_ID for e in entries
    )
    counted = 'route="POST /api/v1/jobs/create"' in metrics.text
    ok = attributed and counted
    print("demo self-test: " + ("OK, the job is attributed to Bob" if ok else "FAILED"), file=sys.stderr)
    return 0 if ok else 1
