"""Readers of the deployment files, for tests/test_deploy.py: README's Settings table, the Dockerfile, the
Kubernetes manifests, deploy/compose.yaml and deploy/bpoc-proxy.service, each turned into plain data.

Nothing here judges a file; the checks are in test_deploy.py. A container's settings are resolved as the proxy
would see them: the container's own environment, over the image's ENV, over the defaults in README's table.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from .conftest import ROOT

README = ROOT / "README.md"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
RULES = ROOT / "rules.yaml"
KUBERNETES = ROOT / "deploy" / "kubernetes"
COMPOSE = ROOT / "deploy" / "compose.yaml"
UNIT = ROOT / "deploy" / "bpoc-proxy.service"


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ---- README -------------------------------------------------------------------------------------------------


def readme_section(heading: str) -> str:
    """The text under `heading` (such as "## Settings") up to the next heading of the same level."""
    level = heading.split(" ", 1)[0]
    text = README.read_text()
    assert heading + "\n" in text, f"README.md has no {heading!r} section"
    body = text.split(heading + "\n", 1)[1]
    return re.split(rf"^{level} ", body, maxsplit=1, flags=re.M)[0]


@cache
def readme_settings() -> dict[str, str | None]:
    """Every setting in README's Settings table, with its default when the table gives one as a plain value."""
    settings: dict[str, str | None] = {}
    for line in readme_section("## Settings").splitlines():
        if not line.startswith("| `"):
            continue
        name_cell, default_cell = (cell.strip() for cell in line.strip("|").split("|")[:2])
        default = re.fullmatch(r"`([^`]*)`", default_cell)
        for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", name_cell):
            settings[name] = default.group(1) if default else None
    return settings


# ---- Dockerfile ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args_of(self, instruction: str) -> list[str]:
        return [args for name, args in self.instructions if name == instruction]


def _dockerfile_instructions(text: str) -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comment lines dropped."""
    logical = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        logical += line.rstrip()
        if logical.endswith("\\"):
            logical = logical[:-1] + " "
            continue
        instruction, _, args = logical.strip().partition(" ")
        yield instruction.upper(), " ".join(args.split())
        logical = ""


@cache
def dockerfile_stages() -> list[Stage]:
    """The Dockerfile's build stages in order, each base image with ARG defaults substituted."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction, rest in _dockerfile_instructions(DOCKERFILE.read_text()):
        if instruction == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif instruction == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), words[0])
            stage_name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, stage_name))
        elif stages:
            stages[-1].instructions.append((instruction, rest))
    return stages


def image_stage() -> Stage:
    return dockerfile_stages()[-1]


def image_env() -> dict[str, str]:
    """The ENV of the image the Dockerfile builds (its last stage)."""
    env: dict[str, str] = {}
    for args in image_stage().args_of("ENV"):
        for name, value in re.findall(r'([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S+)', args):
            env[name] = value.strip('"')
    return env


def image_user() -> tuple[int, int | None]:
    """The uid (and gid, when given) of the image's USER, which must be numeric."""
    users = image_stage().args_of("USER")
    assert users, "the Dockerfile's image has no USER: it would run as root"
    match = re.fullmatch(r"(\d+)(?::(\d+))?", users[-1])
    assert match, f"the Dockerfile's USER {users[-1]!r} is not numeric (uid or uid:gid)"
    return int(match[1]), int(match[2]) if match[2] else None


def copies(stage: Stage) -> list[tuple[str, str]]:
    """The stage's COPY instructions from the build context (not --from another stage): (source, destination)."""
    found: list[tuple[str, str]] = []
    for args in stage.args_of("COPY"):
        if "--from" not in args:
            *sources, destination = [word for word in args.split() if not word.startswith("--")]
            found.extend((source, destination) for source in sources)
    return found


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [line.strip().rstrip("/") for line in lines if line.strip() and not line.startswith("#")]


# ---- Settings as a process sees them ------------------------------------------------------------------------


@dataclass(frozen=True)
class Listener:
    name: str
    host: str
    port: int

    @property
    def loopback_only(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False  # a host name: not ours to resolve


def effective_env(declared: Mapping[str, str], *, in_image: bool) -> dict[str, str]:
    """README's defaults, under the image's ENV (for a container), under what the file itself sets."""
    env = {name: default for name, default in readme_settings().items() if default is not None}
    if in_image:
        env.update(image_env())
    env.update(declared)
    return env


def listeners(env: Mapping[str, str]) -> dict[str, Listener]:
    """The proxy's listeners under these settings: "main", and "admin" unless PROXY_ADMIN_PORT is 0."""
    found = {"main": Listener("main", env["PROXY_HOST"], int(env["PROXY_PORT"]))}
    if int(env["PROXY_ADMIN_PORT"]) != 0:
        found["admin"] = Listener("admin", env["PROXY_ADMIN_HOST"], int(env["PROXY_ADMIN_PORT"]))
    return found


def seconds(env: Mapping[str, str], name: str) -> float:
    return float(env[name])


def drain_seconds(env: Mapping[str, str]) -> float:
    """How long the proxy may take to stop after SIGTERM: the delay, then the grace for requests in flight."""
    return seconds(env, "PROXY_SHUTDOWN_DELAY") + seconds(env, "PROXY_SHUTDOWN_GRACE")


def under(path: str, directory: str) -> str | None:
    """`path` relative to `directory` when it is inside it ("" for the directory itself), else None."""
    directory = directory.rstrip("/")
    if path == directory:
        return ""
    if path.startswith(directory + "/"):
        return path[len(directory) + 1 :]
    return None


# ---- Kubernetes ---------------------------------------------------------------------------------------------


def kubernetes_folders() -> list[Path]:
    return sorted(path for path in KUBERNETES.iterdir() if path.is_dir())


def manifest_files(folder: Path) -> list[Path]:
    """The folder's Kubernetes objects: every YAML file but kustomization.yaml."""
    files = [*folder.glob("*.yaml"), *folder.glob("*.yml")]
    return sorted(path for path in files if path.stem != "kustomization")


@dataclass(frozen=True)
class Manifest:
    path: Path
    obj: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(KUBERNETES)}:{self.obj.get('kind')}/{self.obj['metadata']['name']}"


@cache
def manifests(folder: Path) -> list[Manifest]:
    return [
        Manifest(path, obj)
        for path in manifest_files(folder)
        for obj in yaml.safe_load_all(path.read_text())
        if obj is not None
    ]


def all_manifests() -> list[Manifest]:
    return [manifest for folder in kubernetes_folders() for manifest in manifests(folder)]


def objects_of_kind(folder: Path, kind: str) -> list[dict[str, Any]]:
    return [manifest.obj for manifest in manifests(folder) if manifest.obj["kind"] == kind]


def is_proxy_image(image: str) -> bool:
    repository = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
    return repository.rsplit("/", 1)[-1] == "bpoc-proxy"


@dataclass(frozen=True)
class ProxyContainer:
    """A bpoc-proxy container in a Kubernetes workload, with the pod around it."""

    manifest: Manifest
    container: dict[str, Any]
    init: bool

    @property
    def id(self) -> str:
        return f"{self.manifest.id}:{self.container['name']}"

    @property
    def folder(self) -> Path:
        return self.manifest.path.parent

    @property
    def template(self) -> dict[str, Any]:
        return dict(self.manifest.obj["spec"]["template"])

    @property
    def pod(self) -> dict[str, Any]:
        return dict(self.template["spec"])

    @property
    def declared_env(self) -> dict[str, str]:
        return {item["name"]: item["value"] for item in self.container.get("env", []) if "value" in item}

    @property
    def env(self) -> dict[str, str]:
        return effective_env(self.declared_env, in_image=True)

    @property
    def security_context(self) -> dict[str, Any]:
        """The pod's securityContext with the container's over it, as the kubelet applies them."""
        pod_level = self.pod.get("securityContext", {})
        shared = ("runAsNonRoot", "runAsUser", "runAsGroup", "seccompProfile", "seLinuxOptions")
        merged = {key: pod_level[key] for key in shared if key in pod_level}
        merged.update(self.container.get("securityContext", {}))
        return merged

    def named_port(self, port: int | str) -> int | None:
        if isinstance(port, int):
            return port
        if port.isdigit():
            return int(port)
        numbers = [p["containerPort"] for p in self.container.get("ports", []) if p.get("name") == port]
        return numbers[0] if numbers else None

    def mount_of(self, path: str) -> tuple[dict[str, Any], dict[str, Any], str] | None:
        """The volume mount holding `path` (the deepest), its volume, and the path inside it."""
        found = []
        for mount in self.container.get("volumeMounts", []):
            inside = under(path, mount["mountPath"])
            if inside is not None:
                found.append((len(mount["mountPath"]), mount, inside))
        if not found:
            return None
        _, mount, inside = max(found, key=lambda item: item[0])
        volumes = {volume["name"]: volume for volume in self.pod.get("volumes", [])}
        return mount, volumes[mount["name"]], inside


def workloads(folder: Path) -> list[Manifest]:
    kinds = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"}
    return [manifest for manifest in manifests(folder) if manifest.obj["kind"] in kinds]


def proxy_containers() -> list[ProxyContainer]:
    found = []
    for folder in kubernetes_folders():
        for manifest in workloads(folder):
            spec = manifest.obj["spec"]["template"]["spec"]
            for init, key in ((False, "containers"), (True, "initContainers")):
                for container in spec.get(key, []):
                    if is_proxy_image(container["image"]):
                        found.append(ProxyContainer(manifest, container, init))
    return found


def volume_file_key(volume: dict[str, Any], inside: str) -> str | None:
    """The key of a configMap or secret volume that appears as the file `inside` the mount."""
    source = volume.get("configMap") or volume.get("secret") or {}
    items = source.get("items")
    if items is None:
        return inside if inside and "/" not in inside else None
    return next((item["key"] for item in items if item["path"] == inside), None)


# ---- compose.yaml -------------------------------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def compose_proxy_service() -> dict[str, Any]:
    services = compose()["services"]
    found = [service for service in services.values() if is_proxy_image(service.get("image", ""))]
    assert len(found) == 1, "deploy/compose.yaml must have one service running the bpoc-proxy image"
    return dict(found[0])


def compose_env(service: Mapping[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {name: str(value) for name, value in environment.items()}


def compose_duration(text: str) -> float:
    """A compose duration such as 35s, 1m30s or 1500ms, in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(text))
    assert parts and "".join(n + u for n, u in parts) == str(text), f"not a compose duration: {text!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


# ---- systemd ------------------------------------------------------------------------------------------------


@cache
def unit() -> dict[str, list[tuple[str, str]]]:
    """The unit file's sections, each a list of (key, value) in order (systemd allows repeated keys)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    logical = ""
    for line in UNIT.read_text().splitlines():
        if not logical and (not line.strip() or line.lstrip().startswith(("#", ";"))):
            continue
        logical += line
        if logical.endswith("\\"):
            logical = logical[:-1] + " "
            continue
        if logical.startswith("["):
            current = sections.setdefault(logical.strip("[] "), [])
        else:
            key, _, value = logical.partition("=")
            current.append((key.strip(), value.strip()))
        logical = ""
    return sections


def unit_values(section: str, key: str) -> list[str]:
    return [value for name, value in unit().get(section, []) if name == key]


def unit_value(section: str, key: str) -> str | None:
    values = unit_values(section, key)
    return values[-1] if values else None


def unit_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for value in unit_values("Service", "Environment"):
        for assignment in shlex.split(value):
            name, _, setting = assignment.partition("=")
            env[name] = setting
    return env


def systemd_seconds(text: str) -> float:
    """A systemd time span such as 40, 40s, 1min 30s or 2m, in seconds."""
    units = {"min": 60.0, "m": 60.0, "s": 1.0, "sec": 1.0, "ms": 0.001, "h": 3600.0, "": 1.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(min|ms|sec|s|m|h|)", text)
    assert parts, f"not a systemd time span: {text!r}"
    return sum(float(number) * units[unit] for number, unit in parts)
