"""The forwarding engine's exceptions, raised by the engine alone and converted into the proxy's own errors at
one edge (``proxy/upstream.py``), as httpx converts its transport's errors in ``_transports/default.py``::

    EngineError                 base: the exchange with the origin failed
    ├── ConnectError            no connection: refused, unreachable, a TLS failure, the forward proxy said no
    ├── RemoteClosed            the origin closed the connection before the response was complete
    ├── ProtocolError           the origin's bytes are not an HTTP/1.1 response the engine can pass on
    └── EngineTimeout           a wait ran out (each class says which)
        ├── ConnectTimeout      opening the connection (TCP, TLS, the CONNECT tunnel)
        ├── WriteTimeout        the origin stopped reading the request body
        ├── ReadTimeout         no response headers, or no more body bytes, within the timeout
        └── PoolTimeout         every connection the pool may open stayed busy for the queue timeout

The messages are sentences about BPOC, the one origin the engine serves, without the proxy's setting names:
the edge adds those.
"""

from __future__ import annotations


class EngineError(Exception):
    """The exchange with the origin failed; ``str(error)`` says how."""


class ConnectError(EngineError):
    """A connection to the origin could not be opened."""


class RemoteClosed(EngineError):
    """The origin closed the connection before the response was complete."""


class ProtocolError(EngineError):
    """The origin's answer is not an HTTP/1.1 response the engine can pass on."""


class EngineTimeout(EngineError):
    """A wait ran out; ``timeout`` is the limit in seconds."""

    def __init__(self, message: str, timeout: float) -> None:
        super().__init__(message)
        self.timeout = timeout


class ConnectTimeout(EngineTimeout):
    """Opening the connection took longer than the timeout."""


class WriteTimeout(EngineTimeout):
    """The origin did not read the request body within the timeout."""


class ReadTimeout(EngineTimeout):
    """The response headers, or the next body bytes, did not come within the timeout."""


class PoolTimeout(EngineTimeout):
    """No connection came free within the queue timeout; nothing was sent."""
