"""`python -m proxy.healthcheck`, the image's HEALTHCHECK, run as Docker runs it, against real listeners.

The proxy's main listener stands in for the admin listener where a test needs a healthy one: both answer
GET /healthz with 200, and the check goes wherever PROXY_ADMIN_HOST/PROXY_ADMIN_PORT say.
"""

from __future__ import annotations

import os
import subprocess
import sys
from urllib.parse import urlsplit

from proxy.sandbox.server import bind_socket


def run_check(**settings: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROXY_", "HTTP_PROXY", "http_proxy"))}
    env.update(settings)
    command = [sys.executable, "-m", "proxy.healthcheck"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)


def port_of(url: str) -> str:
    return str(urlsplit(url).port)


def closed_port() -> str:
    """A loopback port nothing listens on."""
    sock = bind_socket()
    port = sock.getsockname()[1]
    sock.close()
    return str(port)


def test_healthy_when_the_admin_port_answers(proxy_url: str) -> None:
    """Exit 0 when /healthz on the admin port answers 200, whatever the main port does."""
    result = run_check(
        PROXY_ADMIN_HOST="127.0.0.1", PROXY_ADMIN_PORT=port_of(proxy_url), PROXY_PORT=closed_port()
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_unhealthy_when_the_admin_port_is_silent(proxy_url: str) -> None:
    """With the admin listener on, a healthy main port does not make up for a silent admin port."""
    admin = closed_port()
    result = run_check(PROXY_ADMIN_PORT=admin, PROXY_HOST="127.0.0.1", PROXY_PORT=port_of(proxy_url))
    assert result.returncode == 1
    assert f"http://127.0.0.1:{admin}/healthz" in result.stderr


def test_admin_port_0_checks_the_main_port(proxy_url: str) -> None:
    """PROXY_ADMIN_PORT=0: the main port's /healthz, reached on loopback when PROXY_HOST is 0.0.0.0."""
    result = run_check(PROXY_ADMIN_PORT="0", PROXY_HOST="0.0.0.0", PROXY_PORT=port_of(proxy_url))
    assert result.returncode == 0, result.stderr


def test_unhealthy_when_healthz_is_not_200(bpoc_url: str) -> None:
    """A listener that answers /healthz with anything but 200 (here BPOC's sandbox, which has none) fails."""
    result = run_check(PROXY_ADMIN_HOST="0.0.0.0", PROXY_ADMIN_PORT=port_of(bpoc_url))
    assert result.returncode == 1
    assert f"http://127.0.0.1:{port_of(bpoc_url)}/healthz" in result.stderr


def test_outbound_proxy_settings_do_not_catch_the_check(proxy_url: str) -> None:
    """HTTP_PROXY, set for the connection to BPOC, is not used to reach the proxy's own port."""
    result = run_check(
        PROXY_ADMIN_HOST="127.0.0.1",
        PROXY_ADMIN_PORT=port_of(proxy_url),
        HTTP_PROXY=f"http://127.0.0.1:{closed_port()}",
        http_proxy=f"http://127.0.0.1:{closed_port()}",
    )
    assert result.returncode == 0, result.stderr
