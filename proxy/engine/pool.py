"""The keep-alive connections to the origin that are not in use."""

from __future__ import annotations

from .connection import Connection
from .deadlines import Clock


class Pool:
    """Idle connections, the most recently used first; one idle longer than ``expiry`` seconds is closed rather
    than reused, so a request never races the server's own idle timeout."""

    def __init__(self, clock: Clock, expiry: float) -> None:
        self._clock = clock
        self._expiry = expiry
        self._idle: list[tuple[float, Connection]] = []

    @property
    def idle(self) -> int:
        return len(self._idle)

    def take(self) -> Connection | None:
        """A usable idle connection, or None; the stale and closed ones met on the way are closed."""
        fresh_after = self._clock() - self._expiry
        while self._idle:
            since, conn = (
                self._idle.pop()
            )  # LIFO: the most recently used connection is the least likely stale
            if conn.usable and since >= fresh_after:
                return conn
            conn.close()
        return None

    def release(self, conn: Connection, reusable: bool) -> None:
        """A connection whose response is done with: kept for the next request if ``reusable``, else closed."""
        if reusable and conn.usable:
            self._idle.append((self._clock(), conn))
        else:
            conn.close()

    def forget(self, conn: Connection) -> None:
        """``conn`` is closed: if it was idle, it is no longer in the pool."""
        for index, (_, idle) in enumerate(self._idle):
            if idle is conn:
                del self._idle[index]
                return

    def clear(self) -> list[Connection]:
        """Close every idle connection; returns them, so the caller can wait until their sockets are closed."""
        idle, self._idle = self._idle, []
        for _, conn in idle:
            conn.close()
        return [conn for _, conn in idle]
