"""The connections to the origin: at most a fixed number at once, the idle ones kept for reuse until they expire,
and a first-come, first-served queue of the requests waiting for one."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable

from .connection import Connection
from .deadlines import Clock, Deadlines
from .errors import PoolTimeout

#: Opens a new connection, given the time limit for it.
Opener = Callable[[float], Awaitable[Connection]]


class Pool:
    """Connections to one origin, bounded like Envoy's circuit breakers: at most ``limit`` open at once
    (connecting, in use or idle), and a request that finds none free waits in arrival order for at most
    ``queue_timeout`` seconds, then fails with PoolTimeout having sent nothing.

    Invariants: ``slots`` counts the connections open or being opened and never exceeds ``limit``; a slot or
    connection that comes free goes to the first waiter before anyone else, so while anyone waits every slot is
    taken and no connection is idle. Idle connections are used newest first (the least likely to be stale), and
    each is closed when it has been idle for ``expiry`` seconds, by a timer, whether or not the pool is used again.
    """

    def __init__(
        self,
        opener: Opener,
        deadlines: Deadlines,
        clock: Clock,
        *,
        limit: int,
        expiry: float,
        queue_timeout: float,
    ) -> None:
        self._opener = opener
        self._deadlines = deadlines
        self._clock = clock
        self._loop = asyncio.get_running_loop()
        self._limit = limit
        self._expiry = expiry
        self._queue_timeout = queue_timeout
        self._slots = 0
        self._idle: deque[tuple[float, Connection]] = deque()  # oldest on the left
        # A waiter gets a connection, or None for a slot to open one in.
        self._waiters: deque[asyncio.Future[Connection | None]] = deque()
        self._reaper: asyncio.TimerHandle | None = None
        #: Requests that waited the whole queue timeout in vain.
        self.queue_timeouts = 0

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def slots(self) -> int:
        """Connections open or being opened, counted against the limit."""
        return self._slots

    async def acquire(self, timeout: float) -> Connection:
        """A connection for one request: an idle one, a new one (opened within ``timeout``), or the first one
        freed while this request waits its turn. Raises PoolTimeout, or what opening a connection raises."""
        conn = self._take_idle()
        if conn is not None:
            return conn
        if self._slots < self._limit and not self._waiters:
            self._slots += 1
        else:
            conn = await self._wait_turn()
            if conn is not None:
                if conn.usable:
                    return conn
                conn.close()  # closed while handed over: open another in its slot
        try:
            return await self._opener(timeout)
        except BaseException:
            self._free_slot()
            raise

    def release(self, conn: Connection, reusable: bool) -> None:
        """A connection whose response is done with: to the first waiter or the idle list if ``reusable``,
        else closed, its slot to the first waiter."""
        if not (reusable and conn.usable):
            conn.close()
            self._free_slot()
        elif not (self._waiters and self._hand(conn)):
            self._idle.append((self._clock(), conn))
            if self._reaper is None:
                self._reaper = self._loop.call_later(self._expiry, self.reap)

    def forget(self, conn: Connection) -> None:
        """``conn`` is closed (the origin closed it): if it was idle, it leaves the pool and frees its slot."""
        for index, (_, idle) in enumerate(self._idle):
            if idle is conn:
                del self._idle[index]
                self._free_slot()
                return

    def reap(self) -> None:
        """Close the connections idle for ``expiry`` seconds or more; the timer calls this when the oldest
        idle connection expires, whether or not the pool is used meanwhile."""
        stale_before = self._clock() - self._expiry
        while self._idle and self._idle[0][0] <= stale_before:
            _, conn = self._idle.popleft()
            conn.close()
            self._free_slot()
        if self._reaper is not None:
            self._reaper.cancel()
        # Next when the now oldest expires; never sooner than a tenth of the expiry, so a clock that runs behind
        # the loop's (an injected one) cannot make the timer spin.
        delay = max(self._idle[0][0] - stale_before, self._expiry / 10) if self._idle else 0.0
        self._reaper = self._loop.call_later(delay, self.reap) if self._idle else None

    def clear(self) -> list[Connection]:
        """Close every idle connection; returns them, so the caller can wait until their sockets are closed."""
        idle = [conn for _, conn in self._idle]
        self._idle.clear()
        for conn in idle:
            conn.close()
            self._free_slot()
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        return idle

    def _take_idle(self) -> Connection | None:
        """The newest usable idle connection, or None; the expired or closed ones met on the way are closed."""
        fresh_after = self._clock() - self._expiry
        while self._idle:
            since, conn = self._idle.pop()
            if conn.usable and since > fresh_after:
                return conn
            conn.close()
            self._free_slot()
        return None

    async def _wait_turn(self) -> Connection | None:
        waiter: asyncio.Future[Connection | None] = self._loop.create_future()
        self._waiters.append(waiter)
        try:
            handed: Connection | None = await self._deadlines.wait(
                waiter, self._queue_timeout, PoolTimeout, "no connection to BPOC came free"
            )
        except PoolTimeout:
            self.queue_timeouts += 1
            self._leave_queue(waiter)
            raise
        except BaseException:  # cancelled: the client went away while it waited
            self._leave_queue(waiter)
            raise
        return handed

    def _leave_queue(self, waiter: asyncio.Future[Connection | None]) -> None:
        """A waiter gives up: out of the queue, and whatever it was handed just before is passed on."""
        if not waiter.done() or waiter.cancelled() or waiter.exception() is not None:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
            return
        handed = waiter.result()  # handed over, then cancelled before it could resume
        if handed is None:
            self._free_slot()
        else:
            self.release(handed, reusable=True)

    def _hand(self, conn: Connection | None) -> bool:
        """Give ``conn`` (or, for None, a slot) to the first live waiter; False when nobody waits."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return True
        return False

    def _free_slot(self) -> None:
        if not (self._waiters and self._hand(None)):
            self._slots -= 1
