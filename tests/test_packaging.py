"""The README, the Dockerfile, the Kubernetes example and CI agree with the code (no Docker engine here)."""

from __future__ import annotations

import re

import yaml

from proxy.auth import VERIFIERS
from proxy.settings import Settings

from .conftest import ROOT

README = (ROOT / "README.md").read_text()
DOCKERFILE = (ROOT / "Dockerfile").read_text()
SETTINGS_SOURCE = (ROOT / "proxy" / "settings.py").read_text()


def settings_read_by_code() -> set[str]:
    names = set(re.findall(r'"([A-Z][A-Z0-9_]{3,})"', SETTINGS_SOURCE)) | set(VERIFIERS)
    return {name for name in names if "_" in name}


def settings_in_readme_table() -> set[str]:
    table = README.split("## Settings", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in table.splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split("|")[1]))
    return names


def test_every_setting_is_in_the_readme_table() -> None:
    """Each environment variable the code reads has a row in the README's settings table, and vice versa."""
    in_code, in_readme = settings_read_by_code(), settings_in_readme_table()
    assert in_code - in_readme == set()
    unknown = {
        name for name in in_readme if name not in in_code and name.removesuffix("_FILE") not in in_code
    }
    assert unknown == set()


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for block in re.findall(r"^ENV (.+?)(?<!\\)$", DOCKERFILE, flags=re.M | re.S):
        for name, value in re.findall(r"([A-Z_]+)=(\S+)", block):
            env[name] = value
    return env


def test_dockerfile_matches_the_settings() -> None:
    """The image's ENV names real settings with their real defaults, exposes the port, and runs `serve`."""
    env = dockerfile_env()
    known = settings_read_by_code()
    proxy_env = {k: v for k, v in env.items() if k.startswith(("PROXY_", "BPOC_", "PORTAL_", "RECRUITER_"))}
    assert set(proxy_env) <= known
    defaults = Settings()
    assert proxy_env["PROXY_HOST"] == defaults.host
    assert proxy_env["PROXY_PORT"] == str(defaults.port)
    assert re.search(rf"^EXPOSE {defaults.port}$", DOCKERFILE, flags=re.M)
    assert "COPY rules.yaml ./rules.yaml" in DOCKERFILE and proxy_env["PROXY_RULES"] == "/app/rules.yaml"
    assert 'ENTRYPOINT ["bpoc-proxy"]' in DOCKERFILE and 'CMD ["serve"]' in DOCKERFILE
    assert "/healthz" in DOCKERFILE
    assert re.search(r"^USER \d+$", DOCKERFILE, flags=re.M), "the image must not run as root"


def test_kubernetes_example_uses_real_settings_and_endpoints() -> None:
    """deploy/sidecar.yaml sets only settings the proxy reads and probes its real endpoints."""
    documents = list(yaml.safe_load_all((ROOT / "deploy" / "sidecar.yaml").read_text()))
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    proxy = next(c for c in containers if c["name"] == "bpoc-proxy")
    names = {item["name"] for item in proxy["env"]}
    assert names <= settings_read_by_code()
    assert proxy["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert proxy["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run runs the README's install-and-test command, from a clean clone."""
    ci = (ROOT / ".ci" / "run").read_text()
    block = README.split("**Run the tests**", 1)[1]
    command = re.search(r"```sh\n(.+?)\n```", block, flags=re.S)
    assert command is not None
    assert command.group(1).replace("pip install -e", "pip install -q -e") in ci


def test_readme_demo_command_installs_and_runs_the_demo() -> None:
    """The README's first command installs the project and runs `bpoc-proxy demo`."""
    block = README.split("**Run the demo**", 1)[1]
    command = re.search(r"```sh\n(.+?)\n```", block, flags=re.S)
    assert command is not None
    assert "pip install ." in command.group(1) and command.group(1).endswith("bpoc-proxy demo")
