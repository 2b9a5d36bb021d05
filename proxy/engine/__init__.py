"""A lean HTTP/1.1 client for one origin: asyncio Protocols, httptools' response parser, a keep-alive pool.

Chosen by measurement over aiohttp's and httpx's per-request cost on the forwarding path (README,
"Performance"). It does only what the proxy needs: one request per connection at a time (no pipelining), bodies
passed through as bytes (Content-Encoding untouched, chunked framing removed by the parser), no redirects, no
cookies, and never a retry: a pooled connection that the server has closed is noticed when taken from the pool
and thrown away instead.

Errors are the engine's own (``errors.py``), never the proxy's: ``proxy/upstream.py``, the only module that
uses the engine, converts them once. The modules, each importing only those above it::

    errors.py      the EngineError tree
    deadlines.py   one timer for every time limit
    connection.py  one socket: the asyncio Protocol, the response parser's callbacks, writes and drains
    response.py    EngineResponse: status, headers, the body as it arrives, and release()/close()
    wire.py        writing a request: head and body in one write, or a streamed body in its own task
    tunnel.py      the forward proxy: its URL, and the CONNECT tunnel to an https origin
    pool.py        the idle keep-alive connections
    client.py      Engine: take a connection, send, wait for the headers
"""

from .client import Engine
from .deadlines import Clock, Deadlines
from .errors import (
    ConnectError,
    ConnectTimeout,
    EngineError,
    EngineTimeout,
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
    "Headers",
    "ProtocolError",
    "RawHeaders",
    "ReadTimeout",
    "RemoteClosed",
    "WriteTimeout",
]
