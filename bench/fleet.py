"""The benchmark's servers, started together and stopped together.

- upstream: nginx (or the Python upstream) on the load core: the fast stand-in for BPOC;
- sink: the Python upstream on the load core, where uploads go (it reads every byte before answering);
- ceiling, engine_httpx, engine_aiohttp: the comparison apps, on the server core;
- proxy_x1: ``python -m proxy serve`` with one worker on the server core, in front of the upstream;
- proxy_x1_no_metrics: proxy_x1 with PROXY_METRICS=false, for the metrics' cost;
- proxy_x1_plain_writes: proxy_x1 without the head-holding transport (bench/plain_writes.py), for what it saves;
- proxy_x2: the same with PROXY_WORKERS=2, on every core;
- proxy_upload: one worker on the server core, in front of the sink.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import cases
from .measure import ProcessTree
from .nginx import spawn_nginx, write_big_file
from .procs import HOST, Cores, Server, free_port, spawn, uvicorn_argv

API_KEY = "bench-agency-key-0000"


@dataclass(frozen=True)
class FleetPlan:
    workdir: Path
    cores: Cores
    nginx: str | None  # the nginx binary, or None for the Python upstream
    big_bytes: int
    jwt_secret: str
    rules: Path


@dataclass
class Fleet:
    servers: dict[str, Server]

    def url(self, key: str) -> str:
        return self.servers[key].url

    def port(self, key: str) -> int:
        return int(self.url(key).rsplit(":", 1)[1])

    def tree(self, key: str) -> ProcessTree:
        return ProcessTree(self.servers[key].pid)

    def logs(self, key: str) -> Path:
        return self.servers[key].log


def proxy_env(
    plan: FleetPlan, upstream: str, port: int, workers: int, metrics: bool = True
) -> dict[str, str]:
    return {
        "BPOC_BASE_URL": upstream,
        "BPOC_API_KEY": API_KEY,
        "PORTAL_JWT_SECRET": plan.jwt_secret,
        "PROXY_RULES": str(plan.rules),
        "PROXY_HOST": HOST,
        "PROXY_PORT": str(port),
        "PROXY_WORKERS": str(workers),
        "PROXY_ADMIN_HOST": HOST,
        "PROXY_ADMIN_PORT": str(free_port()),  # served, as in production, and never on the default port
        "PROXY_METRICS": "true" if metrics else "false",
        "RECRUITER_SYNC_INTERVAL": "0",
        "PROXY_LOG_LEVEL": "info",
    }


@contextmanager
def running(plan: FleetPlan) -> Iterator[Fleet]:
    """Start every server, wait until each answers, and stop them all when the block ends."""
    fleet = Fleet({})
    try:
        _start(plan, fleet)
        for server in fleet.servers.values():
            server.wait_ready()
        yield fleet
    finally:
        for server in reversed(fleet.servers.values()):
            server.stop()


def _start(plan: FleetPlan, fleet: Fleet) -> None:
    load_core, server_core = plan.cores.load, plan.cores.server
    logs = plan.workdir
    add = fleet.servers.__setitem__

    port = free_port()
    if plan.nginx is not None:
        docroot = plan.workdir / "docroot"
        write_big_file(docroot, plan.big_bytes)
        add(cases.UPSTREAM, spawn_nginx(plan.nginx, port, plan.workdir, docroot, load_core))
    else:
        add(cases.UPSTREAM, _python_upstream("python upstream", port, plan.big_bytes, logs, load_core))
    upstream = fleet.url(cases.UPSTREAM)
    add(cases.SINK, _python_upstream("python sink", free_port(), plan.big_bytes, logs, load_core))

    port = free_port()
    add(
        cases.CEILING,
        spawn("ceiling", uvicorn_argv("bench.ceiling:app", port), port=port, logs=logs, cores=server_core),
    )
    for key, factory in ((cases.ENGINE_HTTPX, "httpx_app"), (cases.ENGINE_AIOHTTP, "aiohttp_app")):
        port = free_port()
        argv = uvicorn_argv(f"bench.engines:{factory}", port, factory=True)
        env = {"BENCH_UPSTREAM": upstream}
        add(key, spawn(key, argv, port=port, logs=logs, env=env, cores=server_core))

    proxies = (
        (cases.PROXY_1, upstream, 1, server_core, True),
        (cases.PROXY_1_NO_METRICS, upstream, 1, server_core, False),
        (cases.PROXY_2, upstream, 2, plan.cores.every, True),
        (cases.PROXY_UPLOAD, fleet.url(cases.SINK), 1, server_core, True),
    )
    for key, target, workers, cores, metrics in proxies:
        port = free_port()
        env = proxy_env(plan, target, port, workers, metrics)
        add(key, spawn(key, ["python", "-m", "proxy", "serve"], port=port, logs=logs, env=env, cores=cores))
    port = free_port()
    env = proxy_env(plan, upstream, port, 1, True)
    argv = ["python", "-m", "bench.plain_writes"]
    add(
        cases.PROXY_1_PLAIN_WRITES,
        spawn("proxy_x1_plain_writes", argv, port=port, logs=logs, env=env, cores=server_core),
    )


def _python_upstream(
    name: str, port: int, big_bytes: int, logs: Path, cores: frozenset[int] | None
) -> Server:
    argv = ["python", "-m", "bench.upstream", "--port", str(port), "--big-bytes", str(big_bytes)]
    return spawn(name, argv, port=port, logs=logs, cores=cores)
