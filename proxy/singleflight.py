"""Single flight: concurrent calls for the same key share one run of the work (portal and directory calls)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """Concurrent calls for the same key share one run of the work, and all get its result or its error.

    The work runs in its own task, so a caller that goes away (cancelled) does not cancel it for the others.
    """

    def __init__(self) -> None:
        self._running: dict[K, asyncio.Future[V]] = {}

    def __contains__(self, key: K) -> bool:
        return key in self._running

    async def run(self, key: K, work: Callable[[], Awaitable[V]]) -> V:
        future = self._running.get(key)
        if future is None:
            future = asyncio.ensure_future(self._work(key, work))
            self._running[key] = future
        # shield: one waiter being cancelled must not cancel the shared work.
        return await asyncio.shield(future)

    async def _work(self, key: K, work: Callable[[], Awaitable[V]]) -> V:
        try:
            return await work()
        finally:
            del self._running[key]
