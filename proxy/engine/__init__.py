"""A lean HTTP/1.1 client for one origin: asyncio Protocols, httptools' response parser, a bounded keep-alive pool.

Chosen by measurement over aiohttp's and httpx's per-request cost on the forwarding path (README,
"Performance"). It does only what the proxy needs: one request per connection at a time (no pipelining), bodies
passed through as bytes (Content-Encoding untouched, chunked framing removed by the parser), no redirects, no
cookies, and never a retry: a pooled connection that the server closes leaves the pool as soon as the close
arrives, and one idle too long is closed by a timer, so no request is sent on a connection about to go.

Errors are the engine's own (``errors.py``), never the proxy's: ``proxy/upstream.py``, the only module that
uses the engine, converts them once. The modules, each importing only those above it::

    errors.py      the EngineError tree
    deadlines.py   one timer for every time limit
    connection.py  one socket: the asyncio Protocol, the response parser's callbacks, writes and drains
    response.py    EngineResponse: status, headers, the body as it arrives, and release()/close()
    wire.py        writing a request: head and body in one write, or a streamed body in its own task
    tunnel.py      the forward proxy: its URL, and the CONNECT tunnel to an https origin
    pool.py        the bounded pool: idle connections, their expiry, the queue of waiting requests
    client.py      Engine: take a connection, send, wait for the headers
"""

from .client import Engine
from .deadlines import Clock, Deadlines
from .errors import (
    ConnectError,
    ConnectTimeout,
    EngineError,
    EngineTimeout,
    PoolTimeout,
    ProtocolError,
    ReadTimeout,
    RemoteClosed,
    WriteTimeout,
)
from .response import EngineResponse, RawHeaders
from .wire import Body, Headers

__all__ = [
    "Body",
    "Clock",
    "ConnectError",
    "ConnectTimeout",
    "Deadlines",
    "Engine",
    "EngineError",
    "EngineResponse",
    "EngineTimeout",
    "PoolTimeout",
    "Headers",
    "ProtocolError",
    "RawHeaders",
    "ReadTimeout",
    "RemoteClosed",
    "WriteTimeout",
]
