"""One timer for every time limit of the engine's waits."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from .errors import EngineTimeout

Clock = Callable[[], float]


class Deadlines:
    """Time limits for many waits, kept by one timer instead of one each: arming and cancelling a libuv timer for
    every request costs more than the request's whole HTTP/1.1 framing. A wait that runs out fails at most
    ``tick`` seconds after its limit.

    ``clock`` tells the time the limits are measured in (the loop's by default); tests pass one they move
    themselves, so a timeout happens when the test says, not when a sleep happens to lose a race.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, *, tick: float = 0.1, clock: Clock | None = None
    ) -> None:
        self._loop = loop
        self._tick = tick
        self._clock = clock or loop.time
        self._waits: dict[asyncio.Future[Any], tuple[float, type[EngineTimeout], str, float]] = {}
        self._timer: asyncio.TimerHandle | None = None

    async def wait(
        self, future: asyncio.Future[Any], timeout: float, error: type[EngineTimeout], what: str
    ) -> Any:
        """``await future``; after ``timeout`` seconds fail it with ``error("{what} within {timeout} s")``."""
        if future.done():
            return future.result()
        self._waits[future] = (self._clock() + timeout, error, what, timeout)
        if self._timer is None:
            self._timer = self._loop.call_later(self._tick, self.check)
        try:
            return await future
        finally:
            self._waits.pop(future, None)

    @property
    def pending(self) -> int:
        """The waits under a time limit now."""
        return len(self._waits)

    def check(self) -> None:
        """Fail the waits whose limit has passed; the timer calls this every ``tick`` while any wait is on."""
        now = self._clock()
        for future, (limit, error, what, timeout) in list(self._waits.items()):
            if limit <= now:
                del self._waits[future]
                if not future.done():
                    future.set_exception(error(f"{what} within {timeout:g} s", timeout))
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(self._tick, self.check) if self._waits else None

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
