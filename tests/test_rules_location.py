"""Where the rules come from (settings.rules_location): PROXY_RULES, else ./rules.yaml, else the packaged copy of
the top-level rules.yaml, which stays the source."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from proxy.errors import ConfigError
from proxy.rules_file import load_rules
from proxy.settings import Settings, packaged_rules, rules_location

from .conftest import ROOT, base_env


def test_the_packaged_rules_are_the_top_level_rules() -> None:
    """proxy/data/rules.yaml is a copy of rules.yaml: edit the top-level file, then copy it."""
    assert packaged_rules().read_bytes() == (ROOT / "rules.yaml").read_bytes()
    assert load_rules(packaged_rules()).rules


def test_the_packaged_rules_go_into_the_wheel() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "data/rules.yaml" in project["tool"]["setuptools"]["package-data"]["proxy"]


def test_unset_uses_the_working_directorys_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "rules.yaml").write_text("rules: []\n")
    monkeypatch.chdir(tmp_path)
    assert rules_location(None) == tmp_path / "rules.yaml"


def test_unset_without_a_local_file_uses_the_packaged_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert rules_location(None) == packaged_rules()
    assert packaged_rules().is_absolute()


def test_a_relative_path_is_made_absolute_and_symlinks_are_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kubernetes swaps a ConfigMap by re-pointing a symlink: the path must stay the link, for reloads."""
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "rules.yaml").write_text("rules: []\n")
    (tmp_path / "rules.yaml").symlink_to(tmp_path / "v1" / "rules.yaml")
    monkeypatch.chdir(tmp_path)
    assert rules_location("rules.yaml") == tmp_path / "rules.yaml"
    assert Settings.from_environ(base_env("http://127.0.0.1:9", PROXY_RULES="rules.yaml")).rules_path == (
        tmp_path / "rules.yaml"
    )


@pytest.mark.parametrize(
    ("name", "reason"),
    [("missing.yaml", "No such file or directory"), ("a-directory", "Is a directory")],
    ids=["missing", "directory"],
)
def test_an_unreadable_file_names_the_setting_and_the_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, reason: str
) -> None:
    (tmp_path / "a-directory").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as raised:
        rules_location(name)
    assert str(raised.value) == f"PROXY_RULES names '{tmp_path / name}', which cannot be read: {reason}"
    with pytest.raises(ConfigError, match="--rules names"):
        rules_location(name, setting="--rules")


def test_an_unreadable_file_is_a_settings_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=f"PROXY_RULES names '{missing}'"):
        Settings.from_environ(base_env("http://127.0.0.1:9", PROXY_RULES=missing))
    assert os.path.isabs(missing)
