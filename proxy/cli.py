"""The command line: ``bpoc-proxy serve | check | explain | recruiters | demo``.

Every failure an operator can cause (a bad argument, a bad setting, a bad rules file, BPOC unreachable) ends
with one line on stderr and a documented exit status, never a traceback::

    0  done (explain: the request would be forwarded)
    1  explain: the request would be refused; recruiters: BPOC cannot be reached
    2  a usage error, a bad setting or rules file (start-up errors of serve included)
    3  explain --directory: BPOC's directory cannot be read
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from . import __version__
from .errors import ConfigError, ProxyError, ServiceUnavailable

if TYPE_CHECKING:
    from .explain import ExplainRequest, Verdict
    from .rules import RuleSet
    from .settings import Settings

EXIT_REFUSED = 1
EXIT_UNAVAILABLE = 1
EXIT_CONFIG = 2
EXIT_NO_DIRECTORY = 3


class UsageError(Exception):
    """A command-line argument cannot be used; the message is one line."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (usage on request only) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_CONFIG, f"{self.prog}: {message} (see {self.prog} --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.run(args)
    except (ConfigError, UsageError) as exc:
        print(f"bpoc-proxy: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    return code


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bpoc-proxy", description="Attribution-injecting reverse proxy for BPOC.")
    parser.add_argument("--version", action="version", version=f"bpoc-proxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the proxy (settings from the environment)")
    serve.set_defaults(run=_serve)

    check = commands.add_parser(
        "check", help="validate the settings and the rules file, and print what was loaded"
    )
    check.set_defaults(run=_check)

    _add_explain(commands)

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


def _add_explain(commands: argparse._SubParsersAction[_Parser]) -> None:
    explain = commands.add_parser(
        "explain", help="show what the proxy would do with a request, sending nothing"
    )
    explain.add_argument("method", help="HTTP method, such as POST")
    explain.add_argument("path", help="request path and optional query, such as /api/v1/jobs/create")
    explain.add_argument("--email", help="the caller's email (portal session)")
    explain.add_argument("--user-id", default="portal-user", help="the caller's portal user id")
    explain.add_argument(
        "--recruiter-id", help="the BPOC recruiter UUID the session carries (default: looked up by email)"
    )
    explain.add_argument("--role", help="the role the session carries (default: the directory's, unchecked)")
    explain.add_argument("--body", default="", help="the request body as JSON, @FILE, or @- for stdin")
    explain.add_argument(
        "--content-type", help="the body's Content-Type (default: application/json when there is a body)"
    )
    explain.add_argument(
        "--rules", help="rules file (default: PROXY_RULES, else ./rules.yaml, else the packaged rules)"
    )
    explain.add_argument(
        "--directory", action="store_true", help="read BPOC's recruiter directory with the configured key"
    )
    explain.add_argument("--json", action="store_true", help="print the verdict as one JSON object")
    explain.set_defaults(run=_explain)


def _serve(args: argparse.Namespace) -> int:
    from .rules_file import load_rules
    from .server import serve
    from .settings import Settings

    settings = Settings.from_environ()
    rules = load_rules(settings.rules_path)  # fail here, in one line, rather than in every worker
    return serve(settings, rules)


def _check(args: argparse.Namespace) -> int:
    from .ratelimit import summary
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
    print(f"  rate limit: {summary(settings)}")
    admin = (
        f"{settings.admin_host}:{settings.admin_port}" if settings.admin_port else "off (PROXY_ADMIN_PORT=0)"
    )
    print(f"  admin listener: {admin}, metrics {'on' if settings.metrics else 'off'}")
    print(
        f"  upstream pool: {settings.upstream_max_connections} connections per worker, {settings.workers} worker(s)"
    )
    print(f"rules: OK  ({settings.rules_path}: {len(rules.rules)} rules, {len(rules.routes)} routes)")
    for line in rules.describe():
        print(f"  {line}")
    overlaps = rules.overlaps()
    if overlaps:
        print("overlaps (the most specific template wins):")
        for line in overlaps:
            print(f"  {line}")
    return 0


def _explain(args: argparse.Namespace) -> int:
    import json

    from .auth import Principal
    from .explain import ExplainRequest
    from .rules_file import load_rules
    from .settings import Settings, rules_location

    settings = Settings.from_environ(offline=not args.directory)
    rules_path = rules_location(args.rules, setting="--rules") if args.rules else settings.rules_path
    rules = load_rules(rules_path)
    body = _read_body_argument(args.body)
    principal = Principal(args.user_id, args.email, args.recruiter_id, args.role)
    content_type = (
        args.content_type if args.content_type is not None else ("application/json" if body else None)
    )
    request = ExplainRequest(args.method, args.path, body, content_type, principal)
    try:
        verdict: Verdict = asyncio.run(_explain_with(settings, rules, request, directory=args.directory))
    except ServiceUnavailable as exc:
        print(f"bpoc-proxy: --directory: {exc.message}", file=sys.stderr)
        return EXIT_NO_DIRECTORY
    print(json.dumps(verdict.as_json(), ensure_ascii=False) if args.json else verdict.as_text())
    return 0 if verdict.outcome == "forwarded" else EXIT_REFUSED


async def _explain_with(
    settings: Settings, rules: RuleSet, request: ExplainRequest, *, directory: bool
) -> Verdict:
    """The verdict, offline, or with BPOC's directory read through the configured key (``--directory``)."""
    import httpx

    from .explain import OfflineDirectory, explain
    from .recruiters import RecruiterDirectory
    from .upstream import ApiKey

    if not directory:
        return await explain(rules, request, OfflineDirectory(), settings.max_body_bytes)
    async with httpx.AsyncClient(trust_env=False, timeout=settings.upstream_timeout) as http:
        live = RecruiterDirectory(settings, http, ApiKey(settings).get)
        await live.refresh()  # ServiceUnavailable: BPOC cannot be read, exit 3
        return await explain(rules, request, live, settings.max_body_bytes)


def _read_body_argument(value: str) -> bytes:
    """--body: JSON text, @FILE, or @- for standard input; an unreadable file is a one-line usage error."""
    if not value.startswith("@"):
        return value.encode("utf-8")
    name = value[1:]
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(name).read_bytes()
    except OSError as exc:
        raise UsageError(f"--body: cannot read {str(Path(name).absolute())!r}: {exc.strerror}") from None


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
