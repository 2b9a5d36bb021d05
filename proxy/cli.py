"""The command line: ``bpoc-proxy serve | check | explain | recruiters | demo``.

Every failure an operator can cause (a bad setting, a bad rules file, BPOC unreachable) ends with one line on
stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .errors import ConfigError, ProxyError

EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.run(args)
    except ConfigError as exc:
        print(f"bpoc-proxy: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bpoc-proxy", description="Attribution-injecting reverse proxy for BPOC."
    )
    parser.add_argument("--version", action="version", version=f"bpoc-proxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the proxy (settings from the environment)")
    serve.set_defaults(run=_serve)

    check = commands.add_parser(
        "check", help="validate the settings and the rules file, and print what was loaded"
    )
    check.set_defaults(run=_check)

    explain = commands.add_parser(
        "explain", help="show what the proxy would do with a request, sending nothing"
    )
    explain.add_argument("method", help="HTTP method, such as POST")
    explain.add_argument("path", help="request path, such as /api/v1/jobs/create")
    explain.add_argument("--email", help="the caller's email (portal session)")
    explain.add_argument("--user-id", default="portal-user", help="the caller's portal user id")
    explain.add_argument("--recruiter-id", help="the caller's BPOC recruiter UUID (default: a placeholder)")
    explain.add_argument("--body", default="", help="the request body as JSON, or @FILE")
    explain.add_argument(
        "--rules", help="rules file (default: PROXY_RULES, else ./rules.yaml, else the packaged rules)"
    )
    explain.set_defaults(run=_explain)

    recruiters = commands.add_parser(
        "recruiters", help="print the BPOC recruiter directory as the proxy sees it"
    )
    recruiters.set_defaults(run=_recruiters)

    demo = commands.add_parser("demo", help="run the proxy in front of a built-in BPOC sandbox")
    demo.add_argument("--port", type=int, default=8080, help="port for the proxy (default 8080)")
    demo.add_argument(
        "--admin-port", type=int, default=0, help="port for the admin listener (default: a free one, printed)"
    )
    demo.add_argument(
        "--self-test", action="store_true", help="run the printed commands' requests, then exit"
    )
    demo.set_defaults(run=_demo)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from .rules_file import load_rules
    from .server import serve
    from .settings import Settings

    settings = Settings.from_environ()
    rules = load_rules(settings.rules_path)  # fail here, in one line, rather than in every worker
    return serve(settings, rules)


def _check(args: argparse.Namespace) -> int:
    from .rules_file import load_rules
    from .settings import Settings

    settings = Settings.from_environ()
    rules = load_rules(settings.rules_path)
    key = f"from file {settings.api_key_file}" if settings.api_key_file else "set (BPOC_API_KEY)"
    print(f"settings: OK  (BPOC {settings.bpoc_base_url}, listen {settings.host}:{settings.port})")
    print(f"  agency key: {key}")
    print(
        f"  sessions: {settings.auth_mode}, header {settings.session_header}, cookie {settings.session_cookie}"
    )
    print(f"rules: OK  ({settings.rules_path}: {len(rules.rules)} rules, {len(rules.routes)} routes)")
    if settings.admin_port:
        print(
            f"  admin listener: {settings.admin_host}:{settings.admin_port}, metrics {'on' if settings.metrics else 'off'}"
        )
    for line in rules.describe():
        print(f"  {line}")
    overlaps = rules.overlaps()
    if overlaps:
        print("overlaps (the most specific template wins):")
        for line in overlaps:
            print(f"  {line}")
    return 0


def _explain(args: argparse.Namespace) -> int:
    import os

    from .paths import normalise_path
    from .rewrite import Caller, decode_body, plan, render
    from .rules_file import load_rules
    from .settings import rules_location

    given = args.rules or os.environ.get("PROXY_RULES") or None
    rules = load_rules(rules_location(given, setting="--rules" if args.rules else "PROXY_RULES"))
    method = args.method.upper()
    try:
        path = normalise_path(args.path.split("?", 1)[0].encode("utf-8"))
    except ProxyError as exc:
        print(f"{method} {args.path}: refused with {exc.status_code}: {exc.message}")
        return 0
    match = rules.match(method, path)
    print(f"{method} {path}")
    if match is None:
        verdict = "refused with 403 (unlisted: deny)" if rules.unlisted == "deny" else "forwarded unchanged"
        print(f"  no rule or route matches: {verdict}")
        return 0
    roles = ", ".join(sorted(match.roles)) or "any"
    if match.rule is None:
        print(
            f"  route (line {match.route.line if match.route else '?'}): forwarded unchanged; roles: {roles}"
        )
        return 0
    rule = match.rule
    print(f"  rule: {rules.path}:{rule.line}  {rule.method} {rule.template}")
    print(f"  roles: {roles}; report-only: {'yes' if rule.report_only else 'no'}")
    recruiter = args.recruiter_id or f"<recruiter id of {args.email or 'the caller'}>"
    raw = Path(args.body[1:]).read_bytes() if args.body.startswith("@") else args.body.encode("utf-8")
    try:
        body = decode_body(raw, "application/json", None, 10 * 1024 * 1024)
        decided = plan(rule, body.data, Caller(recruiter, args.user_id, args.email), frozenset())
    except ProxyError as exc:
        print(f"  refused with {exc.status_code}: {exc.message}")
        return 0
    for write in decided.writes:
        print(f"  writes {write.field} = {write.value}")
    if decided.refusal is not None:
        action = "would log, then forward as sent" if rule.report_only else "refused"
        print(f"  {action}: {decided.refusal.status_code}: {decided.refusal.message}")
        return 0
    sent = raw if rule.report_only else render(body, decided)
    print("  body sent to BPOC:")
    print("  " + (sent.decode("utf-8") or "(empty)"))
    return 0


def _recruiters(args: argparse.Namespace) -> int:
    import httpx

    from .recruiters import fetch_directory
    from .settings import Settings
    from .upstream import ApiKey

    settings = Settings.from_environ()

    async def fetch() -> list[tuple[str, str, bool, str]]:
        async with httpx.AsyncClient(trust_env=False) as http:
            directory = await fetch_directory(
                http, settings.bpoc_base_url, ApiKey(settings).get(), settings.upstream_timeout
            )
        return [(r.email, r.id, r.is_active, r.role or "") for r in directory]

    try:
        rows = asyncio.run(fetch())
    except ProxyError as exc:
        print(f"bpoc-proxy: {exc.message}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print(f"{'EMAIL':40} {'RECRUITER ID':36}  {'ACTIVE':6}  ROLE")
    for email, recruiter_id, active, role in sorted(rows):
        print(f"{email:40} {recruiter_id:36}  {'yes' if active else 'no':6}  {role}")
    print(f"{len(rows)} recruiters", file=sys.stderr)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .sandbox.demo import run_demo

    return run_demo(port=args.port, admin_port=args.admin_port, self_test=args.self_test)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
