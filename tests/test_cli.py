"""The command line as an operator meets it: real processes, real exit codes, one-line errors."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from proxy.sandbox.seed import BOB_ID, BpocState

from .conftest import API_KEY, ROOT, base_env, free_port
from .running import wait_for


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        env=full,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_check_prints_what_it_loaded() -> None:
    """`check` validates settings and rules and lists every rule, without showing the key."""
    result = run("check", env=base_env("http://127.0.0.1:9"))
    assert result.returncode == 0, result.stderr
    assert "/api/v1/jobs/create" in result.stdout
    assert "postedBy" in result.stdout
    assert "/api/v1/team/invite" in result.stdout
    assert API_KEY not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "rules:\n  - match: POST /api/v1/jobs/create\n    set: {postedBy: recuiter}\n",
            "rules.yaml:3",
            id="unknown-value",
        ),
        pytest.param(
            "rules:\n  - match: POST /api/v1/jobs/create\n    sett: {postedBy: recruiter}\n",
            "sett",
            id="unknown-key",
        ),
        pytest.param(
            "rules:\n  - match: POST api/v1/jobs/{id\n    set: {x: recruiter}\n",
            "rules.yaml:2",
            id="bad-template",
        ),
        pytest.param(
            "rules:\n  - match: POST /a/{id}\n    set: {x: recruiter}\n  - match: POST /a/{other}\n    set: {y: recruiter}\n",
            "rules.yaml:4",
            id="duplicate-route",
        ),
        pytest.param("rules: [\n", "rules.yaml", id="not-yaml"),
    ],
)
def test_check_explains_a_bad_rules_file(tmp_path: Path, text: str, expected: str) -> None:
    """A bad rules file: exit 2 and one line with file, line and what is wrong; `serve` refuses to start."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(text)
    env = base_env("http://127.0.0.1:9", PROXY_RULES=str(rules))
    for command in ("check", "serve"):
        result = run(command, env=env)
        assert result.returncode == 2, result.stdout
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert expected in lines[0]


def test_check_reports_overlaps_and_report_only(tmp_path: Path) -> None:
    """Overlapping templates and report-only rules are called out."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n"
        "  - match: POST /api/v1/jobs/{id}/approve\n    enforce: {approvedBy: recruiter}\n"
        "  - match: POST /api/v1/jobs/create/approve\n    set: {x: recruiter}\n    report_only: true\n"
    )
    result = run("check", env=base_env("http://127.0.0.1:9", PROXY_RULES=str(rules)))
    assert result.returncode == 0, result.stderr
    assert "overlap" in result.stdout.lower()
    assert "report" in result.stdout.lower()


def test_explain_shows_the_rule_and_the_body_sent() -> None:
    """`explain` prints the matching rule and the rewritten body, sending nothing."""
    result = run(
        "explain",
        "POST",
        "/api/v1//jobs/create/",
        "--email",
        "someone@agency.example",
        "--recruiter-id",
        BOB_ID,
        "--body",
        '{"title": "Dev", "postedBy": "forged"}',
        env={"PROXY_RULES": str(ROOT / "rules.yaml")},
    )
    assert result.returncode == 0, result.stderr
    assert "POST /api/v1/jobs/create" in result.stdout
    assert "rules.yaml:" in result.stdout
    assert f'{{"title":"Dev","postedBy":"{BOB_ID}"}}' in result.stdout


def test_explain_shows_refusals_and_unmatched_routes() -> None:
    """`explain` exits 1 with the status and sentence a client would get, 0 when the request would be forwarded."""
    env = {"PROXY_RULES": str(ROOT / "rules.yaml")}
    result = run(
        "explain",
        "POST",
        "/api/v1/applications/1/release",
        "--email",
        "bob@agency.example",
        "--body",
        '{"releasedBy": "x"}',
        env=env,
    )
    assert result.returncode == 1, result.stderr
    assert "refused with 403 (forbidden): The field releasedBy must be your own" in result.stdout
    result = run("explain", "GET", "/api/v1/jobs", env=env)
    assert result.returncode == 0, result.stderr
    assert "forwarded unchanged" in result.stdout


def test_explain_asks_no_one_by_default(bpoc_url: str, bpoc_state: BpocState) -> None:
    """Offline, what depends on BPOC's directory is listed as unchecked, and BPOC hears nothing."""
    result = run(
        "explain",
        "POST",
        "/api/v1/interviews",
        "--email",
        "bob@agency.example",
        "--body",
        '{"interviewerId": "0f00640a-4b31-43cd-999d-cb945e2cd5a0"}',
        env=base_env(bpoc_url),
    )
    assert result.returncode == 0, result.stderr
    assert "interviewerId: must be an active recruiter of the agency; not checked offline" in result.stdout
    assert bpoc_state.requests == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(["POST"], "the following arguments are required: path", id="missing-path"),
        pytest.param(["POST", "/x", "--bogus"], "unrecognized arguments: --bogus", id="unknown-option"),
        pytest.param(
            ["POST", "/x", "--body", "@/missing.json"], "--body: cannot read '/missing.json'", id="body-file"
        ),
        pytest.param(["POST", "/x", "--rules", "/missing.yaml"], "/missing.yaml", id="rules-file"),
    ],
)
def test_explain_usage_errors_are_one_line_with_status_2(args: list[str], expected: str) -> None:
    result = run("explain", *args, env={"PROXY_RULES": str(ROOT / "rules.yaml")})
    assert result.returncode == 2, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in result.stderr, result.stderr


def test_explain_with_an_unreachable_directory_exits_3() -> None:
    """--directory asks BPOC; when it cannot be read, one line and exit status 3."""
    result = run(
        "explain",
        "POST",
        "/api/v1/jobs/create",
        "--email",
        "bob@agency.example",
        "--directory",
        env=base_env("http://127.0.0.1:9"),
    )
    assert result.returncode == 3, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bpoc-proxy: --directory:"), result.stderr


def test_recruiters_lists_the_directory(bpoc_url: str, bpoc_state: BpocState) -> None:
    """`recruiters` prints email, id, active and role for each recruiter of the agency."""
    result = run("recruiters", env=base_env(bpoc_url))
    assert result.returncode == 0, result.stderr
    assert "bob@agency.example" in result.stdout and BOB_ID in result.stdout
    assert "mallory@other.example" not in result.stdout
    assert API_KEY not in result.stdout + result.stderr


def test_recruiters_fails_when_bpoc_is_unreachable() -> None:
    """`recruiters` exits non-zero with one line when BPOC cannot be reached: the operator's first check."""
    result = run("recruiters", env=base_env("http://127.0.0.1:9"))
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_demo_self_test_creates_an_attributed_job(tmp_path: Path) -> None:
    """`demo --self-test` runs the printed curl flow from any directory: the job is attributed to the demo recruiter,
    the request is shown as it is served, and counted on the admin listener's /metrics."""
    result = run("demo", "--self-test", "--port", str(free_port()), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert BOB_ID in result.stdout
    assert f"  POST /api/v1/jobs/create 201  wrote postedBy={BOB_ID} (recruiter {BOB_ID})" in result.stdout
    assert re.search(r"metrics: http://127\.0\.0\.1:\d+/metrics -> 200", result.stdout)
    assert "attributed to Bob" in result.stderr


def test_demo_shows_each_request_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    """The interactive demo: a banner with the curl command and the metrics URL, then one line per request as it
    is answered (the fields written and the recruiter on attributed routes); Ctrl-C drains and exits 0."""
    port, admin_port = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy", "demo", "--port", str(port), "--admin-port", str(admin_port)],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout or []), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("Press Ctrl-C" in line for line in lines), "the demo's banner")
        banner = "".join(lines)
        assert f"http://127.0.0.1:{admin_port}/metrics" in banner
        token = re.search(r"Authorization: Bearer ([\w.-]+)", banner)
        assert token is not None
        headers = {"Authorization": f"Bearer {token.group(1)}"}
        created = httpx.post(
            f"http://127.0.0.1:{port}/api/v1/jobs/create", headers=headers, json={"title": "x"}
        )
        assert created.status_code == 201
        shown = f"  POST /api/v1/jobs/create 201  wrote postedBy={BOB_ID} (recruiter {BOB_ID})\n"
        wait_for(lambda: shown in lines, "the request's line")
        assert httpx.get(f"http://127.0.0.1:{admin_port}/metrics").status_code == 200
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
    assert "Traceback" not in "".join(lines)


def test_module_and_console_script_agree() -> None:
    """`python -m proxy` is the `bpoc-proxy` command."""
    result = run("--help")
    assert result.returncode == 0
    for command in ("serve", "check", "explain", "recruiters", "demo"):
        assert command in result.stdout
