"""The bounds of remote media fetches that are not about bytes: how many run at once
(in all, and per remote server), how many may wait, and one fetch per piece of media.

``FetchSlots``: a fetch first takes a place among at most ``max_pending`` (running or
waiting: past it the fetch is refused at once), then its server's slot (at most
``per_host`` at once), then a global one (at most ``max_concurrent``). The per-host
semaphores live in a dict that holds only servers with a fetch running or waiting, so it
never holds more than ``max_pending`` entries, whatever names clients ask for.

``SingleFlight``: concurrent requests for the same key share one running task; the task
runs to its end even if the request that started it goes away (the others still wait).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TooManyFetches(Exception):
    """``max_pending`` fetches are running or waiting already."""


class FetchSlots:
    def __init__(self, max_concurrent: int, per_host: int, max_pending: int) -> None:
        if min(max_concurrent, per_host, max_pending) < 1:
            raise ValueError("fetch limits must be positive")
        self.per_host = per_host
        self.max_pending = max_pending
        self._global = asyncio.Semaphore(max_concurrent)
        self._hosts: dict[str, tuple[asyncio.Semaphore, int]] = {}  # host -> (semaphore, users)
        self.pending = 0  # running or waiting
        self.running = 0

    def hosts_tracked(self) -> int:
        return len(self._hosts)

    @asynccontextmanager
    async def slot(self, host: str) -> AsyncIterator[None]:
        """Hold a place to fetch from ``host``; TooManyFetches when none may even wait."""
        if self.pending >= self.max_pending:
            raise TooManyFetches()
        self.pending += 1
        sem, users = self._hosts.get(host) or (asyncio.Semaphore(self.per_host), 0)
        self._hosts[host] = (sem, users + 1)
        try:
            async with sem, self._global:
                self.running += 1
                try:
                    yield
                finally:
                    self.running -= 1
        finally:
            self.pending -= 1
            sem, users = self._hosts[host]
            if users <= 1:
                del self._hosts[host]
            else:
                self._hosts[host] = (sem, users - 1)


class SingleFlight(Generic[K, V]):
    def __init__(self) -> None:
        self._running: dict[K, asyncio.Task[V]] = {}

    def __len__(self) -> int:
        return len(self._running)

    async def run(self, key: K, make: Callable[[], Awaitable[V]]) -> V:
        """The result of the task running for ``key``, started with ``make`` if none is.
        A caller that is cancelled stops waiting; the task goes on for the others."""
        task = self._running.get(key)
        if task is None:
            task = asyncio.ensure_future(make())
            self._running[key] = task
            task.add_done_callback(lambda t: self._forget(key, t))
        return await asyncio.shield(task)

    def _forget(self, key: K, task: asyncio.Task[V]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if not task.cancelled():
            task.exception()  # retrieved: a failure nobody awaited any more is not logged as lost
