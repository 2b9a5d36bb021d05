"""Settings: read once from the environment at start-up, validated, frozen.

``Settings.from_environ`` is where the environment is read: tests pass a plain dict, the command line passes
nothing (``os.environ``). Every error names the setting, in one line, so an operator can fix a Deployment without
reading a traceback.
"""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from limits import RateLimitItem

from . import environ as parse
from .environ import Env, IPNetwork
from .errors import ConfigError


@dataclass(frozen=True)
class Settings:
    # BPOC and the agency key
    bpoc_base_url: str = "https://bpoc.io"
    api_key: str | None = field(default=None, repr=False)
    api_key_file: Path | None = None
    # The standard variables for the connection to BPOC, resolved once for BPOC's host.
    upstream_proxy: str | None = field(default=None, repr=False)
    ssl_cert_file: Path | None = None

    # The proxy itself
    rules_path: Path = Path("rules.yaml")
    rules_reload: bool = False
    rules_reload_interval: float = 2.0
    host: str = "0.0.0.0"
    port: int = 8080
    workers: int = 1
    upstream_timeout: float = 30.0
    max_body_bytes: int = 1024 * 1024
    trusted_proxies: tuple[IPNetwork, ...] = ()
    cors_origins: tuple[str, ...] = ()
    log_level: str = "info"
    access_log: bool = True
    upstream_max_connections: int = 100
    upstream_queue_timeout: float = 5.0
    admin_host: str = "0.0.0.0"
    admin_port: int = 8081  # 0: no admin listener
    metrics: bool = True
    metrics_dir: Path | None = None  # None: a private temporary directory
    shutdown_delay: float = 0.0
    shutdown_grace: float = 25.0

    # The portal session
    session_header: str = "Authorization"
    session_cookie: str | None = None
    auth_mode: str = "jwt_secret"  # the mode of the session verifier chosen (auth.VERIFIERS)
    jwt_secret: str | None = field(default=None, repr=False)
    jwks_url: str | None = None
    session_url: str | None = None
    session_cache_ttl: float = 60.0
    session_failure_ttl: float = 5.0
    portal_timeout: float = 5.0
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_leeway: float = 30.0
    claim_user_id: str = "sub"
    claim_email: str = "email"
    claim_recruiter_id: str = "bpoc_recruiter_id"
    claim_role: str = "role"
    claim_first_name: str = "given_name"
    claim_last_name: str = "family_name"

    # The recruiter directory
    recruiter_cache_ttl: float = 900.0
    recruiter_negative_ttl: float = 60.0
    recruiter_sync_interval: float = 300.0
    recruiter_stale_ttl: float = 3600.0
    recruiter_auto_provision: bool = False

    # Per-user rate limits (proxy/ratelimit.py)
    rate_limit: tuple[RateLimitItem, ...] = ()  # empty: off
    rate_limit_storage: str = field(default="memory://", repr=False)  # may carry a Redis password

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None, *, offline: bool = False) -> Settings:
        """The settings from ``environ`` (default ``os.environ``). ``offline``: for commands that call neither
        BPOC nor the portal (``explain``), the agency key and the session verifier may be missing."""
        env = Env(os.environ if environ is None else environ)
        return cls(
            **_bpoc(env, required=not offline),
            **_listeners(env),
            **_forwarding(env),
            **_sessions(env, required=not offline),
            **_directory(env),
        )


# Each group's settings, named as the fields of Settings (a misspelt key fails at once, in every test).
Group = dict[str, Any]


def _bpoc(env: Env, *, required: bool) -> Group:
    api_key, api_key_file = parse.api_key(env, required=required)
    base_url = parse.origin(env.text("BPOC_BASE_URL", "https://bpoc.io"))
    return {
        "bpoc_base_url": base_url,
        "api_key": api_key,
        "api_key_file": api_key_file,
        "upstream_proxy": parse.proxy_for(base_url, env),
        "ssl_cert_file": parse.ssl_cert_file(env),
    }


def _listeners(env: Env) -> Group:
    host = env.text("PROXY_HOST", "0.0.0.0")
    port = env.integer("PROXY_PORT", 8080, minimum=1, maximum=65535)
    admin_host = env.text("PROXY_ADMIN_HOST", "0.0.0.0")
    admin_port = env.integer("PROXY_ADMIN_PORT", 8081, minimum=0, maximum=65535)
    parse.check_listeners(host, port, admin_host, admin_port)
    return {
        "host": host,
        "port": port,
        "admin_host": admin_host,
        "admin_port": admin_port,
        "workers": env.integer("PROXY_WORKERS", 1, minimum=1, maximum=256),
        "metrics": env.flag("PROXY_METRICS", True),
        "metrics_dir": env.absolute_path("PROXY_METRICS_DIR"),
        "shutdown_delay": env.number("PROXY_SHUTDOWN_DELAY", 0.0, minimum=0),
        "shutdown_grace": env.number("PROXY_SHUTDOWN_GRACE", 25.0, minimum=0),
        "log_level": env.choice("PROXY_LOG_LEVEL", "info", ("critical", "error", "warning", "info", "debug")),
        "access_log": env.flag("PROXY_ACCESS_LOG", True),
    }


def _forwarding(env: Env) -> Group:
    return {
        "rules_path": rules_location(env.optional("PROXY_RULES")),
        "rules_reload": env.flag("PROXY_RULES_RELOAD", False),
        "rules_reload_interval": env.number("PROXY_RULES_RELOAD_INTERVAL", 2.0, minimum=0.1),
        "upstream_timeout": env.number("PROXY_UPSTREAM_TIMEOUT", 30.0, minimum=0.001),
        "upstream_max_connections": env.integer(
            "PROXY_UPSTREAM_MAX_CONNECTIONS", 100, minimum=1, maximum=100_000
        ),
        "upstream_queue_timeout": env.number("PROXY_UPSTREAM_QUEUE_TIMEOUT", 5.0, minimum=0),
        "max_body_bytes": env.integer("PROXY_MAX_BODY_BYTES", 1024 * 1024, minimum=1),
        "trusted_proxies": parse.networks(env.text("PROXY_TRUSTED_PROXIES", "")),
        "cors_origins": parse.origins(env.text("PROXY_CORS_ORIGINS", "")),
        "rate_limit": parse.rate_limits(env.optional("PROXY_RATE_LIMIT")),
        "rate_limit_storage": parse.rate_limit_storage(env),
    }


def _sessions(env: Env, *, required: bool) -> Group:
    verifier, value = parse.verifier(env, required=required)
    return {
        "auth_mode": verifier.mode,
        verifier.field: value,
        "session_header": env.text("PORTAL_SESSION_HEADER", "Authorization"),
        "session_cookie": env.optional("PORTAL_SESSION_COOKIE"),
        "session_cache_ttl": env.number("PORTAL_SESSION_CACHE_TTL", 60.0, minimum=0),
        "session_failure_ttl": env.number("PORTAL_SESSION_FAILURE_TTL", 5.0, minimum=0),
        "portal_timeout": env.number("PORTAL_TIMEOUT", 5.0, minimum=0.001),
        "jwt_issuer": env.optional("PORTAL_JWT_ISSUER"),
        "jwt_audience": env.optional("PORTAL_JWT_AUDIENCE"),
        "jwt_leeway": env.number("PORTAL_JWT_LEEWAY", 30.0, minimum=0),
        "claim_user_id": env.text("PORTAL_CLAIM_USER_ID", "sub"),
        "claim_email": env.text("PORTAL_CLAIM_EMAIL", "email"),
        "claim_recruiter_id": env.text("PORTAL_CLAIM_RECRUITER_ID", "bpoc_recruiter_id"),
        "claim_role": env.text("PORTAL_CLAIM_ROLE", "role"),
        "claim_first_name": env.text("PORTAL_CLAIM_FIRST_NAME", "given_name"),
        "claim_last_name": env.text("PORTAL_CLAIM_LAST_NAME", "family_name"),
    }


def _directory(env: Env) -> Group:
    return {
        "recruiter_cache_ttl": env.number("RECRUITER_CACHE_TTL", 900.0, minimum=0),
        "recruiter_negative_ttl": env.number("RECRUITER_NEGATIVE_TTL", 60.0, minimum=0),
        "recruiter_sync_interval": env.number("RECRUITER_SYNC_INTERVAL", 300.0, minimum=0),
        "recruiter_stale_ttl": env.number("RECRUITER_STALE_TTL", 3600.0, minimum=0),
        "recruiter_auto_provision": env.flag("RECRUITER_AUTO_PROVISION", False),
    }


def rules_location(value: str | None, *, setting: str = "PROXY_RULES") -> Path:
    """The rules file to load, as an absolute path: ``value`` (the PROXY_RULES setting) when given, else
    ``./rules.yaml`` when the working directory has one, else the rules shipped inside the package.

    The path is made absolute without resolving symlinks: Kubernetes updates a mounted ConfigMap by re-pointing a
    symlink, and a reload must follow the link, not the directory it pointed to at start-up. A given file that
    cannot be read is a ConfigError naming ``setting`` and the absolute path.
    """
    if value is None:
        local = Path(os.path.abspath("rules.yaml"))
        return local if local.is_file() else packaged_rules()
    path = Path(os.path.abspath(value))
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"{setting} names {str(path)!r}, which cannot be read: {exc.strerror}") from None
    return path


def packaged_rules() -> Path:
    """The copy of the repository's rules.yaml installed with the package (``proxy/data/rules.yaml``)."""
    resource = importlib.resources.files("proxy") / "data" / "rules.yaml"
    if not isinstance(resource, Path):  # installed inside a zip archive: there is no file to name or poll
        raise ConfigError("the rules shipped with the package are inside an archive; set PROXY_RULES")
    return resource
