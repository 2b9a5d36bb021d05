"""The README and CI agree with the code. The deployment files are checked in test_deploy.py."""

from __future__ import annotations

import re

from proxy.auth import VERIFIERS

from .conftest import ROOT

README = (ROOT / "README.md").read_text()
SETTINGS_SOURCE = "".join((ROOT / "proxy" / name).read_text() for name in ("settings.py", "environ.py"))


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
