"""The deployment files work as shipped: read offline, each checked against the API schemas, the settings in
README's table, the image the Dockerfile builds and the rules in rules.yaml. Nothing here runs Docker or a cluster.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import kubernetes_validate  # type: ignore[import-untyped]  # the package ships no type information
import pytest
import yaml

from proxy import healthcheck

from . import deploy_files as files
from .conftest import ROOT
from .deploy_files import ProxyContainer

# The oldest Kubernetes the manifests are for (native sidecars are on by default from 1.29), and a newer one.
KUBERNETES_VERSIONS = ("1.30", "1.33")
PROJECT_VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

MANIFESTS = files.all_manifests()
CONTAINERS = files.proxy_containers()
FOLDERS = files.kubernetes_folders()


def by_id(items: list[ProxyContainer] | list[files.Manifest]) -> list[object]:
    return [pytest.param(item, id=item.id) for item in items]


def folder_params() -> list[object]:
    return [pytest.param(folder, id=folder.name) for folder in FOLDERS]


def test_every_folder_has_a_proxy() -> None:
    """Both Kubernetes flavours are there, and each runs the proxy (or the checks below would check nothing)."""
    assert {folder.name for folder in FOLDERS} == {"sidecar", "standalone"}
    assert {c.folder.name for c in CONTAINERS} == {"sidecar", "standalone"}


# ---- Kubernetes: the objects --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("manifest", by_id(MANIFESTS))
def test_object_validates_against_the_api_schema(manifest: files.Manifest, version: str) -> None:
    """Each object is valid for the Kubernetes API, unknown fields included (strict), offline."""
    try:
        kubernetes_validate.validate(manifest.obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(part) for part in exc.path)
        pytest.fail(
            f"{manifest.id} is not a valid object for Kubernetes {version}: at {where}: {exc.message}"
        )


@pytest.mark.parametrize("folder", folder_params())
def test_kustomization_lists_every_manifest(folder: Path) -> None:
    """`kubectl apply -k FOLDER` applies every manifest in it, and names no file that is missing."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    listed = kustomization.get("resources", [])
    missing = [name for name in listed if not (folder / name).is_file()]
    assert not missing, f"{folder.name}/kustomization.yaml lists files that do not exist: {missing}"
    unlisted = sorted({path.name for path in files.manifest_files(folder)} - set(listed))
    assert not unlisted, (
        f"{folder.name}/kustomization.yaml does not list {unlisted}: kubectl apply -k skips them"
    )


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("folder", folder_params())
def test_kustomize_builds_the_folder(folder: Path) -> None:
    """kubectl's kustomize builds the folder into exactly the objects its files hold."""
    result = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {folder.name} failed: {result.stderr.strip()}"
    built = sorted((o["kind"], o["metadata"]["name"]) for o in yaml.safe_load_all(result.stdout) if o)
    assert built == sorted((m.obj["kind"], m.obj["metadata"]["name"]) for m in files.manifests(folder))


@pytest.mark.parametrize("container", by_id(CONTAINERS))
def test_image_is_a_placeholder_of_this_version(container: ProxyContainer) -> None:
    """The image is a clearly placeholder registry's bpoc-proxy, tagged with the package's version."""
    expected = f"registry.example/bpoc-proxy:{PROJECT_VERSION}"
    assert container.container["image"] == expected, f"{container.id}: the image should be {expected}"
    version = container.template["metadata"]["labels"].get("app.kubernetes.io/version", PROJECT_VERSION)
    assert version == PROJECT_VERSION, (
        f"{container.id}: app.kubernetes.io/version {version} is not {PROJECT_VERSION}"
    )


LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/part-of")


@pytest.mark.parametrize("manifest", by_id(MANIFESTS))
def test_object_carries_the_recommended_labels(manifest: files.Manifest) -> None:
    """Every object, and every pod template, is labelled with its app and what it is part of."""
    templates = [manifest.obj["spec"]["template"]] if "template" in manifest.obj.get("spec", {}) else []
    for metadata in [manifest.obj["metadata"], *(template["metadata"] for template in templates)]:
        missing = [label for label in LABELS if label not in metadata.get("labels", {})]
        assert not missing, f"{manifest.id} lacks the labels {missing}"


# ---- Kubernetes: settings, probes, ports --------------------------------------------------------------------


@pytest.mark.parametrize("container", by_id(CONTAINERS))
def test_env_names_are_settings(container: ProxyContainer) -> None:
    """Every variable the container sets is a setting in README's table (a typo would be silently ignored)."""
    names = [item["name"] for item in container.container.get("env", [])]
    unknown = [name for name in names if name not in files.readme_settings()]
    assert not unknown, f"{container.id} sets {unknown}, which are not settings in README's Settings table"
    assert "envFrom" not in container.container, f"{container.id}: envFrom hides which settings are set"


PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
PROBE_PATHS = {
    "startupProbe": {"/readyz", "/healthz"},
    "readinessProbe": {"/readyz"},
    "livenessProbe": {"/healthz"},
}


def probe_listener(container: ProxyContainer, probe: str) -> files.Listener:
    """The listener a probe reaches, failing when it reaches none or one bound to loopback only."""
    spec = container.container.get(probe)
    assert spec is not None, f"{container.id} has no {probe}"
    action = spec.get("httpGet") or spec.get("tcpSocket")
    assert action is not None, f"{container.id}: {probe} is neither httpGet nor tcpSocket"
    port = container.named_port(action["port"])
    assert port is not None, (
        f"{container.id}: {probe} names port {action['port']!r}, which the container lacks"
    )
    listening = {listener.port: listener for listener in files.listeners(container.env).values()}
    assert port in listening, f"{container.id}: {probe} targets port {port}, where the proxy does not listen"
    listener = listening[port]
    assert not listener.loopback_only, (
        f"{container.id}: {probe} targets port {port}, but the proxy binds it to {listener.host} only; "
        "the kubelet probes the pod IP"
    )
    return listener


@pytest.mark.parametrize("probe", PROBES)
@pytest.mark.parametrize("container", by_id(CONTAINERS))
def test_probe_reaches_the_admin_listener(container: ProxyContainer, probe: str) -> None:
    """Startup, readiness and liveness probes reach the admin listener, on an address the kubelet can reach."""
    listener = probe_listener(container, probe)
    assert listener.name == "admin", f"{container.id}: {probe} should target the admin port, not the main one"
    path = container.container[probe]["httpGet"]["path"]
    assert path in PROBE_PATHS[probe], (
        f"{container.id}: {probe} asks {path}, expected one of {PROBE_PATHS[probe]}"
    )


@pytest.mark.parametrize("container", by_id(CONTAINERS))
def test_prometheus_scrapes_the_admin_listener(container: ProxyContainer) -> None:
    """The pod's prometheus.io annotations name the admin listener's /metrics, reachable from outside the pod."""
    annotations = container.template["metadata"].get("annotations", {})
    assert annotations.get("prometheus.io/scrape") == "true", (
        f"{container.id}: prometheus.io/scrape is not 'true'"
    )
    assert annotations.get("prometheus.io/path") == "/metrics", (
        f"{container.id}: prometheus.io/path is not /metrics"
    )
    admin = files.listeners(container.env).get("admin")
    assert admin is not None and not admin.loopback_only, (
        f"{container.id}: no admin listener outside loopback"
    )
    assert annotations.get("prometheus.io/port") == str(admin.port), (
        f"{container.id}: prometheus.io/port is {annotations.get('prometheus.io/port')}, the admin port is {admin.port}"
    )


@pytest.mark.parametrize("container", by_id(CONTAINERS))
def test_declared_ports_are_listened_on(container: ProxyContainer) -> None:
    """Every containerPort the proxy declares is a port it listens on, outside loopback."""
    listening = {listener.port: listener for listener in files.listeners(container.env).values()}
    for port in container.container.get("ports", []):
        listener = listening.get(port["containerPort"])
        assert listener is not None, (
            f"{container.id} declares port {port['containerPort']}, where nothing listens"
        )
        assert not listener.loopback_only, (
            f"{container.id} declares port {listener.port}, bound to loopback only"
        )


# ---- Kubernetes: the files the proxy reads and writes -------------------------------------------------------


@pytest.mark.parametrize("container", by_id(CONTAINERS))
def test_agency_key_is_the_mounted_secret(container: ProxyContainer) -> None:
    """BPOC_API_KEY_FILE is the file of a key of a Secret mounted as a directory; the key is never inline."""
    env = container.declared_env
    assert "BPOC_API_KEY" not in env, f"{container.id} sets BPOC_API_KEY inline: use BPOC_API_KEY_FILE"
    path = env.get("BPOC_API_KEY_FILE")
    assert path, f"{container.id} does not set BPOC_API_KEY_FILE"
    found = container.mount_of(path)
    assert found is not None, f"{container.id}: BPOC_API_KEY_FILE={path} is on no volume mount"
    mount, volume, inside = found
    assert "secret" in volume, (
        f"{container.id}: BPOC_API_KEY_FILE={path} is on volume {mount['name']}, not a Secret"
    )
    assert "subPath" not in mount, (
        f"{container.id}: the Secret is mounted with subPath, so rotations never arrive"
    )
    assert files.volume_file_key(volume, inside), (
        f"{container.id}: BPOC_API_KEY_FILE={path} is not a file of the Secret mounted at {mount['mountPath']}"
    )


@pytest.mark.parametrize("container", by_id(CONTAINERS))
def test_readme_creates_the_secret_the_pod_mounts(container: ProxyContainer) -> None:
    """README's `kubectl create secret` command makes the Secret and key that BPOC_API_KEY_FILE reads."""
    found = container.mount_of(container.declared_env["BPOC_API_KEY_FILE"])
    assert found is not None
    _, volume, inside = found
    secret, key = volume["secret"]["secretName"], files.volume_file_key(volume, inside)
    command = f"kubectl create secret generic {secret} --from-file={key}="
    assert command in files.readme_section("## Deploying"), f"README's Deploying section lacks `{command}...`"


@pytest.mark.parametrize("container", by_id(CONTAINERS))
def test_rules_are_the_mounted_configmap(container: ProxyContainer) -> None:
    """PROXY_RULES is a key of a ConfigMap of the same folder, mounted as a directory, with reload on."""
    env = container.declared_env
    path = env.get("PROXY_RULES")
    assert path, f"{container.id} does not set PROXY_RULES"
    assert env.get("PROXY_RULES_RELOAD") == "true", f"{container.id}: PROXY_RULES_RELOAD is not 'true'"
    found = container.mount_of(path)
    assert found is not None, f"{container.id}: PROXY_RULES={path} is on no volume mount"
    mount, volume, inside = found
    assert "configMap" in volume, f"{container.id}: PROXY_RULES={path} is on {mount['name']}, not a ConfigMap"
    assert "subPath" not in mount, (
        f"{container.id}: the rules are mounted with subPath: edits never reach the pod"
    )
    key = files.volume_file_key(volume, inside)
    configmaps = {c["metadata"]["name"]: c for c in files.objects_of_kind(container.folder, "ConfigMap")}
    configmap = configmaps.get(volume["configMap"]["name"])
    assert configmap is not None, (
        f"{container.id}: ConfigMap {volume['configMap']['name']} is not in the folder"
    )
    assert key in configmap.get("data", {}), f"{container.id}: PROXY_RULES={path} is no key of the ConfigMap"


CONFIGMAP_RULES = [
    pytest.param(manifest, key, id=f"{manifest.id}:{key}")
    for manifest in MANIFESTS
    if manifest.obj["kind"] == "ConfigMap"
    for key in manifest.obj.get("data", {})
    if key.endswith((".yaml", ".yml"))
]


@pytest.mark.parametrize(("manifest", "key"), CONFIGMAP_RULES)
def test_configmap_rules_are_rules_yaml(manifest: files.Manifest, key: str) -> None:
    """The rules a ConfigMap carries are the repository's rules.yaml, to the byte (rules.yaml is the source)."""
    assert manifest.obj["data"][key] == files.RULES.read_text(), (
        f"{manifest.id} differs from rules.yaml: paste rules.yaml into it, indented four spaces"
    )


WRITABLE_VOLUMES = ("emptyDir", "ephemeral")


@pytest.mark.parametrize("container", by_id(CONTAINERS))
def test_metrics_dir_is_writable(container: ProxyContainer) -> None:
    """PROXY_METRICS_DIR is on a writable volume when the root filesystem is read-only."""
    if not container.security_context.get("readOnlyRootFilesystem"):
        return  # the image's own directory is writable (it belongs to the image's user)
    path = container.env.get("PROXY_METRICS_DIR") or "/tmp"  # unset: a temporary directory under /tmp
    found = container.mount_of(path)
    assert found is not None, f"{container.id}: PROXY_METRICS_DIR={path} is on the read-only root filesystem"
    mount, volume, _ = found
    assert not mount.get("readOnly"), f"{container.id}: PROXY_METRICS_DIR={path} is mounted read-only"
    assert any(kind in volume for kind in WRITABLE_VOLUMES), (
        f"{container.id}: PROXY_METRICS_DIR={path} is on volume {mount['name']}, which is not an emptyDir"
    )


# ---- Kubernetes: the pod ------------------------------------------------------------------------------------


@pytest.mark.parametrize("container", by_id(CONTAINERS))
def test_runs_as_the_images_user(container: ProxyContainer) -> None:
    """runAsUser (and runAsGroup) are the Dockerfile's USER, and runAsNonRoot is on."""
    context = container.security_context
    uid, gid = files.image_user()
    assert context.get("runAsNonRoot") is True, f"{container.id}: runAsNonRoot is not true"
    assert context.get("runAsUser") == uid, (
        f"{container.id}: runAsUser {context.get('runAsUser')} is not {uid}"
    )
    if gid is not None:
        assert context.get("runAsGroup") == gid, (
            f"{container.id}: runAsGroup {context.get('runAsGroup')} != {gid}"
        )


@pytest.mark.parametrize("container", by_id(CONTAINERS))
def test_security_context_is_locked_down(container: ProxyContainer) -> None:
    """Read-only root filesystem, no privilege escalation, every capability dropped, seccomp RuntimeDefault."""
    context = container.security_context
    assert context.get("readOnlyRootFilesystem") is True, (
        f"{container.id}: readOnlyRootFilesystem is not true"
    )
    assert context.get("allowPrivilegeEscalation") is False, (
        f"{container.id}: allowPrivilegeEscalation is not false"
    )
    assert "ALL" in context.get("capabilities", {}).get("drop", []), (
        f"{container.id}: capabilities.drop lacks ALL"
    )
    seccomp = context.get("seccompProfile", {}).get("type")
    assert seccomp == "RuntimeDefault", f"{container.id}: seccompProfile is {seccomp}, not RuntimeDefault"


@pytest.mark.parametrize("container", by_id(CONTAINERS))
def test_resources_are_set(container: ProxyContainer) -> None:
    """CPU and memory requests, and a memory limit."""
    resources = container.container.get("resources", {})
    requests, limits = resources.get("requests", {}), resources.get("limits", {})
    assert {"cpu", "memory"} <= set(requests), f"{container.id}: resources.requests lacks cpu or memory"
    assert "memory" in limits, f"{container.id}: resources.limits has no memory"


@pytest.mark.parametrize("container", by_id(CONTAINERS))
def test_grace_period_covers_the_drain(container: ProxyContainer) -> None:
    """terminationGracePeriodSeconds is above PROXY_SHUTDOWN_DELAY + PROXY_SHUTDOWN_GRACE."""
    grace = container.pod.get("terminationGracePeriodSeconds", 30)
    drain = files.drain_seconds(container.env)
    assert grace > drain, (
        f"{container.id}: terminationGracePeriodSeconds {grace} is not above the drain, {drain} s"
    )


def sidecar_container() -> ProxyContainer:
    return next(c for c in CONTAINERS if c.folder.name == "sidecar")


def test_sidecar_is_native() -> None:
    """In sidecar/, the proxy is an init container with restartPolicy Always: it starts first and stops last."""
    sidecar = sidecar_container()
    assert sidecar.init, f"{sidecar.id} is in containers, not initContainers: it is not a native sidecar"
    assert sidecar.container.get("restartPolicy") == "Always", f"{sidecar.id}: restartPolicy is not Always"
    assert sidecar.pod.get("containers"), f"{sidecar.id}: the pod has no portal container"


def test_sidecar_main_port_is_loopback_only() -> None:
    """In sidecar/, the main port is bound to 127.0.0.1:8080: only the pod's own containers reach it."""
    main = files.listeners(sidecar_container().env)["main"]
    assert (main.host, main.port) == ("127.0.0.1", 8080), (
        f"the sidecar's main listener is {main.host}:{main.port}"
    )


# ---- Kubernetes: standalone ---------------------------------------------------------------------------------

STANDALONE = files.KUBERNETES / "standalone"


def standalone_container() -> ProxyContainer:
    return next(c for c in CONTAINERS if c.folder.name == "standalone")


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def test_standalone_runs_two_replicas_with_a_shutdown_delay() -> None:
    """Two replicas, and PROXY_SHUTDOWN_DELAY=5 so endpoints drop a pod before it stops accepting."""
    proxy = standalone_container()
    assert proxy.manifest.obj["spec"].get("replicas") == 2, "the standalone Deployment should run 2 replicas"
    assert proxy.declared_env.get("PROXY_SHUTDOWN_DELAY") == "5", "standalone: PROXY_SHUTDOWN_DELAY is not 5"


def test_standalone_service_reaches_the_main_port() -> None:
    """The Service selects the proxy's pods and targets its main listener, bound outside loopback."""
    proxy = standalone_container()
    labels = proxy.template["metadata"]["labels"]
    (service,) = files.objects_of_kind(STANDALONE, "Service")
    assert selects(service["spec"].get("selector", {}), labels), (
        "the Service does not select the proxy's pods"
    )
    main = files.listeners(proxy.env)["main"]
    for port in service["spec"]["ports"]:
        target = proxy.named_port(port.get("targetPort", port["port"]))
        assert target == main.port, (
            f"the Service's port {port['port']} targets {target}, the main port is {main.port}"
        )
    assert not main.loopback_only, f"the standalone proxy listens on {main.host} only"


def test_standalone_pdb_covers_the_pods() -> None:
    """The PodDisruptionBudget selects the proxy's pods and keeps at least one."""
    labels = standalone_container().template["metadata"]["labels"]
    (pdb,) = files.objects_of_kind(STANDALONE, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"].get("matchLabels", {}), labels), "the PDB does not select the pods"
    assert pdb["spec"].get("minAvailable", 0) >= 1 or "maxUnavailable" in pdb["spec"], (
        "the PDB protects no pod"
    )


def test_standalone_ingress_routes_to_the_service() -> None:
    """Every Ingress backend is the proxy's Service, on one of its ports."""
    (service,) = files.objects_of_kind(STANDALONE, "Service")
    ports = {p["port"] for p in service["spec"]["ports"]} | {p.get("name") for p in service["spec"]["ports"]}
    for ingress in files.objects_of_kind(STANDALONE, "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend["name"] == service["metadata"]["name"], (
                    f"the Ingress routes to {backend['name']}"
                )
                port = backend["port"].get("name", backend["port"].get("number"))
                assert port in ports, f"the Ingress routes to port {port}, which the Service lacks"


# ---- Dockerfile ---------------------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage() -> None:
    """A build stage makes the wheels; the image installs them from it, with no source tree and no compiler."""
    stages = files.dockerfile_stages()
    assert len(stages) >= 2, "the Dockerfile has one stage: build the wheel in its own"
    image, builders = stages[-1], {stage.name for stage in stages[:-1]}
    assert len({stage.base for stage in stages}) == 1, (
        "the stages' base images differ: the wheels may not fit"
    )
    runs = " ".join(image.args_of("RUN"))
    assert any(f"from={name}" in runs for name in builders if name), (
        "the image does not install the build's wheels"
    )
    sources = [source for source, _ in files.copies(image)]
    source_tree = [s for s in sources if s in {".", "pyproject.toml"} or s.split("/")[0] == "proxy"]
    assert not source_tree, f"the image copies source files: {source_tree}"
    assert not re.search(r"\b(gcc|build-essential|apt-get install)\b", runs), "the image installs build tools"


def test_dockerfile_runs_serve_as_a_numeric_non_root_user() -> None:
    """USER is numeric and not root; the entrypoint is bpoc-proxy and the command serve."""
    uid, gid = files.image_user()
    assert uid != 0 and gid != 0, "the image runs as root"
    image = files.image_stage()
    assert image.args_of("ENTRYPOINT") == ['["bpoc-proxy"]'], 'ENTRYPOINT should be ["bpoc-proxy"]'
    assert image.args_of("CMD") == ['["serve"]'], 'CMD should be ["serve"]'


def test_dockerfile_exposes_both_ports() -> None:
    """EXPOSE names the main port and the admin port the image listens on."""
    env = files.effective_env({}, in_image=True)
    exposed = {
        int(port.split("/")[0]) for args in files.image_stage().args_of("EXPOSE") for port in args.split()
    }
    expected = {listener.port for listener in files.listeners(env).values()}
    assert exposed == expected, f"EXPOSE {sorted(exposed)}, but the image listens on {sorted(expected)}"


def test_dockerfile_env_names_are_settings() -> None:
    """Every ENV of the image is a setting in README's table, or Python's and pip's own."""
    names = [name for name in files.image_env() if not name.startswith(("PYTHON", "PIP_"))]
    unknown = [name for name in names if name not in files.readme_settings()]
    assert not unknown, f"the Dockerfile sets {unknown}, which are not settings in README's table"


def test_dockerfile_healthcheck_targets_the_admin_port() -> None:
    """HEALTHCHECK runs proxy.healthcheck, which asks the admin port's /healthz (the main one's with it off)."""
    (check,) = files.image_stage().args_of("HEALTHCHECK")
    assert re.search(r'CMD \["python", "-m", "proxy\.healthcheck"\]$', check), f"HEALTHCHECK runs {check}"
    env = files.effective_env({}, in_image=True)
    admin = files.listeners(env)["admin"]
    assert healthcheck.healthz_url(env) == f"http://127.0.0.1:{admin.port}/healthz"
    main = files.listeners(env)["main"]
    off = {**env, "PROXY_ADMIN_PORT": "0"}
    assert healthcheck.healthz_url(off) == f"http://127.0.0.1:{main.port}/healthz"


def test_healthcheck_defaults_are_the_readme_defaults() -> None:
    """proxy.healthcheck assumes the defaults README's table gives."""
    settings = files.readme_settings()
    assert healthcheck.DEFAULTS == {name: settings[name] for name in healthcheck.DEFAULTS}


def lands_at(source: str, destination: str) -> str:
    """Where COPY puts `source`: into `destination` when that is a directory (ends with /), else at it."""
    return destination + Path(source).name if destination.endswith("/") else destination


def test_dockerfile_rules_are_in_the_image() -> None:
    """PROXY_RULES is a file the image copies there from the repository's rules.yaml."""
    path = files.image_env().get("PROXY_RULES")
    assert path, "the Dockerfile does not set PROXY_RULES"
    sources = [
        source
        for source, destination in files.copies(files.image_stage())
        if lands_at(source, destination) == path
    ]
    assert sources == ["rules.yaml"], f"PROXY_RULES={path}, but the image copies {sources or 'nothing'} there"


def test_dockerfile_metrics_dir_belongs_to_the_user() -> None:
    """PROXY_METRICS_DIR is a directory the image makes for its user (writable without a volume)."""
    path = files.image_env().get("PROXY_METRICS_DIR")
    assert path, "the Dockerfile does not set PROXY_METRICS_DIR"
    uid, gid = files.image_user()
    runs = " ".join(files.image_stage().args_of("RUN"))
    assert re.search(rf"install -d -o {uid} -g {gid} (-m \d+ )?{re.escape(path)}\b", runs), (
        f"the image does not make {path} for uid {uid}"
    )


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps `path` out of the build context (docker's rules, without negations)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(
        fnmatch.fnmatch(prefix, pattern) or fnmatch.fnmatch(prefix, pattern.removeprefix("**/"))
        for pattern in patterns
        for prefix in prefixes
    )


def test_dockerignore_keeps_the_context_small() -> None:
    """Tests, the benchmark, git, virtualenvs and caches stay out of the build context; what COPY needs stays in."""
    patterns = files.dockerignore_patterns()
    for path in (
        "tests",
        "bench",
        ".git",
        ".venv",
        "proxy/__pycache__",
        ".mypy_cache",
        ".pytest_cache",
        "deploy",
    ):
        assert ignored(path, patterns), f".dockerignore lets {path} into the build context"
    for source in {source for stage in files.dockerfile_stages() for source, _ in files.copies(stage)}:
        assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which is not in the repository"
        assert not ignored(source, patterns), (
            f".dockerignore keeps {source} out, but the Dockerfile copies it"
        )


# ---- compose.yaml -------------------------------------------------------------------------------------------


def compose_env() -> dict[str, str]:
    return files.effective_env(files.compose_env(files.compose_proxy_service()), in_image=True)


def test_compose_env_names_are_settings() -> None:
    """Every variable compose gives the proxy is a setting in README's table."""
    names = files.compose_env(files.compose_proxy_service())
    unknown = [name for name in names if name not in files.readme_settings()]
    assert not unknown, f"deploy/compose.yaml sets {unknown}, which are not settings in README's table"


def test_compose_key_comes_from_a_file_secret() -> None:
    """BPOC_API_KEY_FILE is a compose secret's file (/run/secrets/NAME), and the key is never inline."""
    service = files.compose_proxy_service()
    env = files.compose_env(service)
    assert "BPOC_API_KEY" not in env, "deploy/compose.yaml sets BPOC_API_KEY inline"
    names = [s if isinstance(s, str) else s["source"] for s in service.get("secrets", [])]
    targets = {f"/run/secrets/{name}": name for name in names}
    for secret in service.get("secrets", []):
        if isinstance(secret, dict) and "target" in secret:
            targets[
                secret["target"] if secret["target"].startswith("/") else f"/run/secrets/{secret['target']}"
            ] = secret["source"]
    path = env.get("BPOC_API_KEY_FILE")
    assert path in targets, f"deploy/compose.yaml: BPOC_API_KEY_FILE={path} is none of the service's secrets"
    assert "file" in files.compose()["secrets"][targets[path]], (
        f"the compose secret {targets[path]} is not a file"
    )


def test_compose_rules_are_bind_mounted() -> None:
    """PROXY_RULES is the target of a read-only bind mount of the repository's rules.yaml."""
    service = files.compose_proxy_service()
    path = compose_env()["PROXY_RULES"]
    mounts = [v for v in service.get("volumes", []) if isinstance(v, dict) and v.get("target") == path]
    assert mounts, f"deploy/compose.yaml: nothing is mounted at PROXY_RULES={path}"
    (mount,) = mounts
    assert mount["type"] == "bind" and mount.get("read_only") is True, (
        "the rules mount is not a read-only bind"
    )
    assert (files.COMPOSE.parent / mount["source"]).resolve() == files.RULES, (
        "the rules mount is not rules.yaml"
    )


def test_compose_ports_are_the_listeners() -> None:
    """The published container ports are the proxy's main and admin ports."""
    published = set()
    for port in files.compose_proxy_service().get("ports", []):
        container_port = port["target"] if isinstance(port, dict) else str(port).split(":")[-1].split("/")[0]
        published.add(int(container_port))
    listening = {listener.port for listener in files.listeners(compose_env()).values()}
    assert published == listening, (
        f"compose publishes {sorted(published)}, the proxy listens on {sorted(listening)}"
    )


def test_compose_healthcheck_targets_the_admin_port() -> None:
    """The healthcheck runs proxy.healthcheck, which asks the admin port under the service's settings."""
    test = files.compose_proxy_service().get("healthcheck", {}).get("test")
    assert test == ["CMD", "python", "-m", "proxy.healthcheck"], f"compose's healthcheck runs {test}"
    admin = files.listeners(compose_env())["admin"]
    assert healthcheck.healthz_url(compose_env()) == f"http://127.0.0.1:{admin.port}/healthz"


def test_compose_runs_like_the_kubernetes_pods() -> None:
    """The image's user, a read-only root with the metrics dir on tmpfs, and a stop grace above the drain."""
    service = files.compose_proxy_service()
    uid, gid = files.image_user()
    assert service.get("user") == f"{uid}:{gid}", (
        f"compose's user is {service.get('user')}, the image's {uid}:{gid}"
    )
    assert service.get("read_only") is True, "compose: the root filesystem is not read-only"
    metrics = compose_env()["PROXY_METRICS_DIR"]
    tmpfs = [entry.split(":")[0] for entry in service.get("tmpfs", [])]
    assert any(files.under(metrics, mount) is not None for mount in tmpfs), (
        f"compose: {metrics} is not on a tmpfs"
    )
    stop = files.compose_duration(service.get("stop_grace_period", "10s"))
    assert stop > files.drain_seconds(compose_env()), (
        f"compose: stop_grace_period {stop} s is not above the drain"
    )


# ---- systemd ------------------------------------------------------------------------------------------------


def unit_env() -> dict[str, str]:
    return files.effective_env(files.unit_env(), in_image=False)


def test_unit_env_names_are_settings() -> None:
    """Every Environment= name in the unit is a setting in README's table."""
    unknown = [name for name in files.unit_env() if name not in files.readme_settings()]
    assert not unknown, f"deploy/bpoc-proxy.service sets {unknown}, which are not settings in README's table"


def test_unit_key_comes_from_a_credential() -> None:
    """BPOC_API_KEY_FILE is %d/NAME for a LoadCredential=NAME:PATH, and the key is never inline."""
    env = files.unit_env()
    assert "BPOC_API_KEY" not in env, "the unit sets BPOC_API_KEY inline"
    match = re.fullmatch(r"%d/([^/]+)", env.get("BPOC_API_KEY_FILE", ""))
    assert match, f"the unit's BPOC_API_KEY_FILE={env.get('BPOC_API_KEY_FILE')} is not %d/NAME"
    credentials = [value.split(":", 1)[0] for value in files.unit_values("Service", "LoadCredential")]
    assert match[1] in credentials, f"the unit loads no credential {match[1]} (LoadCredential={credentials})"


def test_unit_runs_serve_and_stops_by_sigterm_after_the_drain() -> None:
    """ExecStart is `bpoc-proxy serve`; SIGTERM stops it, and systemd waits longer than the drain."""
    exec_start = files.unit_value("Service", "ExecStart") or ""
    assert re.search(r"/bpoc-proxy serve$", exec_start), f"the unit runs {exec_start!r}, not bpoc-proxy serve"
    assert files.unit_value("Service", "KillSignal") == "SIGTERM", "the unit's KillSignal is not SIGTERM"
    assert files.unit_value("Service", "Restart") == "on-failure", "the unit's Restart is not on-failure"
    timeout = files.systemd_seconds(files.unit_value("Service", "TimeoutStopSec") or "90s")
    drain = files.drain_seconds(unit_env())
    assert timeout > drain, f"the unit's TimeoutStopSec {timeout} s is not above the drain, {drain} s"


HARDENING = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes"}


def test_unit_is_hardened() -> None:
    """A user of its own, no new privileges, a read-only system, no capabilities."""
    user = files.unit_value("Service", "User")
    assert files.unit_value("Service", "DynamicUser") == "yes" or user not in (None, "root", "0"), (
        "runs as root"
    )
    for key, value in HARDENING.items():
        assert files.unit_value("Service", key) == value, f"the unit does not set {key}={value}"
    assert files.unit_value("Service", "CapabilityBoundingSet") == "", "the unit keeps capabilities"


def test_unit_ports_and_metrics_dir_work_unprivileged() -> None:
    """Without capabilities the ports are above 1023, and PROXY_METRICS_DIR is the unit's runtime directory."""
    for listener in files.listeners(unit_env()).values():
        assert listener.port > 1023, f"the unit's {listener.name} port {listener.port} needs a capability"
    metrics = files.unit_env().get("PROXY_METRICS_DIR", "")
    runtime = files.unit_values("Service", "RuntimeDirectory")
    assert any(files.under(metrics, f"%t/{name}") is not None for name in runtime), (
        f"the unit's PROXY_METRICS_DIR={metrics} is not under its RuntimeDirectory (ProtectSystem=strict)"
    )


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd itself accepts the unit (with ExecStart pointed at this environment's bpoc-proxy)."""
    executable = Path(sys.executable).parent / "bpoc-proxy"
    text = re.sub(r"^ExecStart=\S+", f"ExecStart={executable}", files.UNIT.read_text(), flags=re.M)
    (tmp_path / "bpoc-proxy.service").write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / "bpoc-proxy.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
