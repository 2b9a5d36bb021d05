"""The container health check: `python -m proxy.healthcheck` (the Dockerfile's HEALTHCHECK, compose's healthcheck).

GET /healthz on the admin listener, or on the main listener when PROXY_ADMIN_PORT=0 turns the admin one off.
Exit status 0 when it answers 200, 1 otherwise, as Docker's HEALTHCHECK expects. Standard library only and
nothing else of the package imported, so a check every few seconds costs a bare interpreter start.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from collections.abc import Mapping

# The defaults of README's Settings table (tests/test_deploy.py checks they agree).
DEFAULTS = {
    "PROXY_HOST": "0.0.0.0",
    "PROXY_PORT": "8080",
    "PROXY_ADMIN_HOST": "0.0.0.0",
    "PROXY_ADMIN_PORT": "8081",
}
# A listener bound to every address is reached on loopback from inside the container.
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}
TIMEOUT_SECONDS = 2.0


def _setting(environ: Mapping[str, str], name: str) -> str:
    return environ.get(name, DEFAULTS[name]).strip()


def healthz_url(environ: Mapping[str, str]) -> str:
    """The /healthz URL of the listener the container's settings say is there."""
    prefix = "PROXY_" if _setting(environ, "PROXY_ADMIN_PORT") == "0" else "PROXY_ADMIN_"
    host = _setting(environ, prefix + "HOST")
    host = _WILDCARDS.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{_setting(environ, prefix + 'PORT')}/healthz"


def check(url: str) -> str | None:
    """None when `url` answers 200; otherwise why not."""
    # No ProxyHandler: an HTTP_PROXY meant for the connection to BPOC must not catch the check of ourselves.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=TIMEOUT_SECONDS) as response:
            status = response.status
    except (OSError, ValueError) as exc:  # URLError and HTTPError are OSErrors; ValueError: a malformed URL
        return str(exc)
    return None if status == 200 else f"status {status}"


def main() -> int:
    url = healthz_url(os.environ)
    problem = check(url)
    if problem is not None:
        print(f"bpoc-proxy health check: {url}: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
