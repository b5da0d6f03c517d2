"""A budget of bytes shared by concurrent tasks, granted first come, first served."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class BudgetExhausted(Exception):
    """The bytes asked for did not become free within the wait allowed."""


class ByteBudget:
    """At most ``total`` bytes reserved at once. A reservation waits (in order of arrival)
    until it fits, for a bounded time; one larger than ``total`` is clamped to ``total``,
    so it runs alone rather than never."""

    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError("total must be at least 1")
        self.total = total
        self.in_use = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @asynccontextmanager
    async def reserve(self, size: int, timeout: float) -> AsyncIterator[None]:
        """Hold ``size`` bytes for the body of the ``async with``; BudgetExhausted when
        they are not free within ``timeout`` seconds."""
        held = await self.acquire(size, timeout)
        try:
            yield
        finally:
            self.release(held)

    async def acquire(self, size: int, timeout: float) -> int:
        """Take ``size`` bytes (clamped to ``total``); return what was taken, to be given
        back with ``release``. BudgetExhausted when not free within ``timeout`` seconds."""
        size = max(0, min(size, self.total))
        if not await self._acquire(size, timeout):
            raise BudgetExhausted(f"{size} bytes not free within {timeout} s")
        return size

    def release(self, size: int) -> None:
        self.in_use -= size
        self._wake()

    async def _acquire(self, size: int, timeout: float) -> bool:
        if not self._waiters and self.in_use + size <= self.total:
            self.in_use += size
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (size, fut)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await fut
        except BaseException as e:  # the wait timed out, or the waiting task was cancelled
            if fut.done() and not fut.cancelled():
                self.release(size)  # granted just as the wait ended: give it back
            else:
                fut.cancel()
                if entry in self._waiters:
                    self._waiters.remove(entry)
                self._wake()  # those queued behind this one may fit now
            if isinstance(e, TimeoutError):
                return False
            raise
        return True

    def _wake(self) -> None:
        while self._waiters:
            size, fut = self._waiters[0]
            if fut.done():
                self._waiters.popleft()
                continue
            if self.in_use + size > self.total:
                return
            self._waiters.popleft()
            self.in_use += size
            fut.set_result(None)
