"""Typed reads of the environment, each error naming its variable in one line (``Settings.from_environ`` uses them).

``Env`` reads one mapping (``os.environ``, or a dict in tests); the functions below parse and check the settings
whose values need more than a type: origins, proxies, networks, secrets from files, rates and storage URLs.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import SplitResult, urlsplit, urlunsplit

from limits import RateLimitItem, parse_many

from .auth import VERIFIERS, Verifier
from .errors import ConfigError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class Env:
    """Typed reads of one environment mapping, each error naming its variable."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def optional(self, name: str) -> str | None:
        value = self._environ.get(name, "").strip()
        return value or None

    def text(self, name: str, default: str) -> str:
        return self.optional(name) or default

    def integer(self, name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
        raw = self.optional(name)
        if raw is None:
            return default
        try:
            value = int(raw.replace("_", ""))
        except ValueError:
            raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and at most {maximum}" if maximum is not None else ""
            raise ConfigError(f"{name} must be at least {minimum}{upper}, got {value}")
        return value

    def number(self, name: str, default: float, *, minimum: float) -> float:
        raw = self.optional(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None
        if not value >= minimum or value == float("inf"):
            raise ConfigError(f"{name} must be a finite number of at least {minimum:g}, got {raw!r}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = self._environ.get(name)
        if raw is None:
            return default
        lowered = raw.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigError(f"{name} must be true or false, got {raw!r}")

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.text(name, default).lower()
        if value not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return value

    def absolute_path(self, name: str) -> Path | None:
        value = self.optional(name)
        return Path(os.path.abspath(value)) if value is not None else None

    def url(self, name: str) -> str | None:
        value = self.optional(name)
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"{name} must be an http:// or https:// URL, got {value!r}")
        return value

    def secret(self, name: str) -> str | None:
        """A secret given directly in NAME or as the content of the file named by NAME_FILE."""
        direct, path = self.optional(name), self.optional(f"{name}_FILE")
        if direct is not None and path is not None:
            raise ConfigError(f"{name} and {name}_FILE are both set; set only one of them")
        if path is None:
            return direct
        return read_secret_file(Path(path), f"{name}_FILE")


def check_listeners(host: str, port: int, admin_host: str, admin_port: int) -> None:
    """The admin listener cannot share the main listener's port on an address that overlaps the main one's."""
    wildcards = {"0.0.0.0", "::"}
    if admin_port == port and (admin_host == host or host in wildcards or admin_host in wildcards):
        raise ConfigError(
            f"PROXY_ADMIN_PORT is {admin_port}, the port PROXY_PORT already listens on ({host}); "
            "give the admin listener a port of its own, or 0 to turn it off"
        )


def read_secret_file(path: Path, setting: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{setting} names {str(path)!r}, which cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{setting} names {str(path)!r}, which is not UTF-8 text") from None
    if not value:
        raise ConfigError(f"{setting} names {str(path)!r}, which is empty")
    return value


def api_key(env: Env, *, required: bool) -> tuple[str | None, Path | None]:
    direct, path = env.optional("BPOC_API_KEY"), env.optional("BPOC_API_KEY_FILE")
    if direct is not None and path is not None:
        raise ConfigError("BPOC_API_KEY and BPOC_API_KEY_FILE are both set; set only one of them")
    if direct is None and path is None and required:
        raise ConfigError("BPOC_API_KEY is missing and has no default; set BPOC_API_KEY or BPOC_API_KEY_FILE")
    if path is not None:
        read_secret_file(Path(path), "BPOC_API_KEY_FILE")  # fail at start-up, not on the first request
        return None, Path(path)
    if direct is not None and any(ch in direct for ch in "\r\n\0"):
        raise ConfigError("BPOC_API_KEY contains a line break or NUL, which cannot go in an HTTP header")
    return direct, None


def origin(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"BPOC_BASE_URL must be an http:// or https:// origin such as https://bpoc.io, got {value!r}"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(
            f"BPOC_BASE_URL must be an origin without a path (clients send the full /api/v1/... path), got {value!r}"
        )
    if parts.username or parts.password:
        raise ConfigError("BPOC_BASE_URL must not carry a user name or password")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError(f"BPOC_BASE_URL has an invalid port, got {value!r}") from None
    return f"{parts.scheme}://{parts.netloc}"


def proxy_for(base_url: str, env: Env) -> str | None:
    """HTTPS_PROXY / HTTP_PROXY for BPOC's scheme, unless NO_PROXY names its host (curl's conventions)."""
    parts = urlsplit(base_url)
    names = ("HTTPS_PROXY", "https_proxy") if parts.scheme == "https" else ("HTTP_PROXY", "http_proxy")
    proxy = next((value for value in map(env.optional, names) if value), None)
    if proxy is None:
        return None
    no_proxy = env.optional("NO_PROXY") or env.optional("no_proxy") or ""
    host = (parts.hostname or "").lower()
    for entry in filter(None, (item.strip().lower().lstrip(".") for item in no_proxy.split(","))):
        if entry == "*" or host == entry or host.endswith("." + entry):
            return None
    if urlsplit(proxy).scheme not in ("http", "https"):
        raise ConfigError(f"{names[0]} must be an http:// proxy URL")
    return proxy


def ssl_cert_file(env: Env) -> Path | None:
    value = env.optional("SSL_CERT_FILE")
    if value is None:
        return None
    if not Path(value).is_file():
        raise ConfigError(f"SSL_CERT_FILE names {value!r}, which is not a readable file")
    return Path(value)


def origins(value: str) -> tuple[str, ...]:
    origins = []
    for item in filter(None, (part.strip().rstrip("/") for part in value.split(","))):
        parts = urlsplit(item)
        if item == "*" or parts.scheme not in ("http", "https") or not parts.hostname or parts.path:
            raise ConfigError(
                "PROXY_CORS_ORIGINS must list origins such as https://portal.example.com "
                f"(no '*': sessions are credentials), got {item!r}"
            )
        origins.append(item)
    return tuple(origins)


def networks(value: str) -> tuple[IPNetwork, ...]:
    networks = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(
                f"PROXY_TRUSTED_PROXIES must be a comma-separated list of IP addresses or CIDR ranges, got {item!r}"
            ) from None
    return tuple(networks)


def verifier(env: Env, *, required: bool) -> tuple[Verifier, str | None]:
    """The one session verifier whose setting is given (auth.VERIFIERS), and its secret or URL."""
    given = []
    for verifier in VERIFIERS.values():
        value = env.secret(verifier.setting) if verifier.secret else env.url(verifier.setting)
        if value is not None:
            given.append((verifier, value))
    if len(given) == 1:
        return given[0]
    if not given and not required:
        return next(iter(VERIFIERS.values())), None
    names = ", ".join(verifier.setting for verifier, _ in given) if given else "none of them"
    raise ConfigError(
        f"set exactly one of {', '.join(VERIFIERS)} to choose how portal sessions are verified (set: {names})"
    )


def rate_limits(value: str | None) -> tuple[RateLimitItem, ...]:
    """PROXY_RATE_LIMIT in the limits library's notation: ``600/minute``, ``20/second;600/minute``."""
    if value is None:
        return ()
    try:
        items = parse_many(value)
    except ValueError:
        raise ConfigError(
            "PROXY_RATE_LIMIT must be one or more rates such as 600/minute or 20/second;600/minute, "
            f"got {value!r}"
        ) from None
    if any(item.amount < 1 for item in items):
        raise ConfigError(f"PROXY_RATE_LIMIT must allow at least 1 request in each window, got {value!r}")
    return tuple(items)


def rate_limit_storage(env: Env) -> str:
    """memory:// (per worker) or a Redis URL (shared); validated here so a typo stops start-up, not requests."""
    name = "PROXY_RATE_LIMIT_STORAGE"
    if env.optional(f"{name}_FILE") is not None:
        name = f"{name}_FILE"  # name the variable the operator set
    value = env.secret("PROXY_RATE_LIMIT_STORAGE") or "memory://"
    try:
        parts = urlsplit(value)
        valid = parts.scheme == "memory" and not (parts.netloc or parts.path or parts.query)
        valid = valid or (_is_redis_url(parts) and parts.port != 0)
    except ValueError:  # a bad port or IPv6 literal
        valid = False
    if not valid:
        raise ConfigError(
            f"{name} must be memory:// or redis://[:password@]host:port/db (or rediss://), "
            f"got {masked_url(value)!r}"
        )
    return value


def _is_redis_url(parts: SplitResult) -> bool:
    db = parts.path.removeprefix("/")
    return (
        parts.scheme in ("redis", "rediss")
        and bool(parts.hostname)
        and (db == "" or db.isdigit())
        and not (parts.query or parts.fragment)
    )


def masked_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for logs and ``check``: ``redis://:***@host:6379/0``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.split(":", 1)[0] + "://***"
    if "@" not in parts.netloc:
        return url
    userinfo, host = parts.netloc.rsplit("@", 1)
    # A lone user part (redis://secret@host) is masked too: some clients read it as the password.
    user = f"{userinfo.split(':', 1)[0]}:***" if ":" in userinfo else "***"
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))
