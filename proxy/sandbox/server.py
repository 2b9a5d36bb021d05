"""Run an ASGI app on uvicorn in a background thread, on a real loopback socket.

Used by ``bpoc-proxy demo`` and the tests. Binding the socket ourselves gives a free port with no race.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


class ThreadedServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:
        # Signals belong to the main thread (the test runner or the demo command).
        pass


def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


@contextmanager
def serve_in_thread(app: Any, *, host: str = "127.0.0.1", port: int = 0, **config: Any) -> Iterator[str]:
    """Serve ``app`` until the block ends; yields its base URL, such as ``http://127.0.0.1:41234``."""
    sock = bind_socket(host, port)
    config.setdefault("log_level", "warning")
    server = ThreadedServer(uvicorn.Config(app, lifespan="on", **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
