"""nginx as the fast upstream: a fixed JSON for any path, the recruiter directory, and a 200 MB static file.

Uploads never go to nginx: ``return 200`` may answer before the body is read, which would flatter the upload
case; they go to the Python sink (bench/upstream.py), which reads every byte before it answers.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .procs import HOST, Server, spawn
from .upstream import DIRECTORY_JSON, SMALL_JSON

INSTALL_HINT = "apt-get install nginx-light"
BIG_FILE = "big"  # served as /api/v1/files/big, like the Python upstream


def find_nginx() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).is_file()), None
    )


def write_big_file(directory: Path, size: int) -> Path:
    """A file of ``size`` bytes of real data (not sparse), in ``directory``/api/v1/files/."""
    target = directory / "api" / "v1" / "files" / BIG_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    block = bytes(range(256)) * 4096  # 1 MiB
    with target.open("wb") as out:
        remaining = size
        while remaining > 0:
            written = out.write(block[: min(remaining, len(block))])
            remaining -= written
    # nginx may drop to "nobody" when started as root: let it through the (private) temporary directories.
    for path in (directory, directory / "api", directory / "api" / "v1", target.parent):
        path.chmod(0o755)
    target.chmod(0o644)
    return target


def config(port: int, workdir: Path, docroot: Path) -> str:
    def quoted(body: bytes) -> str:
        return "'" + body.decode().replace("\\", "\\\\").replace("'", "\\'") + "'"

    temp = workdir / "nginx-temp"
    temp.mkdir(exist_ok=True)
    paths = " ".join(
        f"{kind}_temp_path {temp}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""
daemon off;
master_process off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    {paths}
    sendfile on;
    tcp_nopush on;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    server {{
        listen {HOST}:{port} backlog=1024;
        client_max_body_size 0;
        default_type application/json;
        location = /api/v1/agency/recruiters {{ return 200 {quoted(DIRECTORY_JSON)}; }}
        location = /api/v1/files/{BIG_FILE} {{ root {docroot}; default_type application/octet-stream; }}
        location = /healthz {{ return 200 '{{"status":"ok"}}'; }}
        location / {{ return 200 {quoted(SMALL_JSON)}; }}
    }}
}}
"""


def spawn_nginx(binary: str, port: int, workdir: Path, docroot: Path, cores: frozenset[int] | None) -> Server:
    conf = workdir / "nginx.conf"
    conf.write_text(config(port, workdir, docroot))
    return spawn(
        "nginx upstream", [binary, "-c", str(conf), "-p", str(workdir)], port=port, logs=workdir, cores=cores
    )
