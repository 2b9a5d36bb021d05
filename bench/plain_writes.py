"""``python -m bench.plain_writes``: ``bpoc-proxy serve`` (one worker) with the head-holding transport switched off.

For the benchmark only: the same proxy, but each response's head and body leave in uvicorn's own two writes, so the
run shows what ``proxy/protocol.py``'s HeadHoldingTransport saves per request (README "Performance"). Nothing else
changes: the framing rules and the WebSocket refusal are the protocol's own.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from proxy import protocol
from proxy.cli import main


def _plain_connection_made(self: protocol.ProxyHttpProtocol, transport: asyncio.Transport) -> None:
    HttpToolsProtocol.connection_made(self, transport)


if __name__ == "__main__":
    protocol.ProxyHttpProtocol.connection_made = _plain_connection_made  # type: ignore[method-assign]
    raise SystemExit(main(["serve"]))
