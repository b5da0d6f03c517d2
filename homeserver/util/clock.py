"""The clock every component reads time from, injected at construction.

``SystemClock`` is the real one. ``FakeClock`` is for tests: its time moves only when the
test calls ``advance``, and ``sleep`` returns once the fake time has reached its deadline,
so a test that wants to see that nothing happens for a minute advances the clock instead
of sleeping.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol


class Clock(Protocol):
    """Wall time in milliseconds, monotonic seconds, and sleeping on the same time."""

    def time_ms(self) -> int:
        """Milliseconds since the Unix epoch (``origin_server_ts``, stored timestamps)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary start, never going back (deadlines, intervals)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return after ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """The machine's clocks and ``asyncio.sleep``."""

    def time_ms(self) -> int:
        return int(time.time() * 1000)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = SystemClock()


def now_ms() -> int:
    """The system clock's wall time in milliseconds (for code that takes no clock)."""
    return SYSTEM_CLOCK.time_ms()


class FakeClock:
    """A clock for tests: time stands still until ``advance`` moves it.

    Sleepers whose deadline is reached by an ``advance`` are woken in deadline order, and
    ``advance`` lets the event loop run until they have reacted (a few turns of the loop),
    so a test can assert right after it.
    """

    def __init__(self, start_ms: int = 1_700_000_000_000, start_monotonic: float = 1_000.0) -> None:
        self._wall0 = start_ms
        self._mono0 = start_monotonic
        self._elapsed = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def time_ms(self) -> int:
        return self._wall0 + int(self._elapsed * 1000)

    def monotonic(self) -> float:
        return self._mono0 + self._elapsed

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._elapsed + seconds, next(self._seq), future))
        await future

    @property
    def sleepers(self) -> int:
        """How many sleeps are waiting (cancelled ones excluded)."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    async def advance(self, seconds: float, turns: int = 10) -> None:
        """Move time on by ``seconds``, waking every sleep due by then, in order."""
        target = self._elapsed + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, future = heapq.heappop(self._sleepers)
            self._elapsed = max(self._elapsed, deadline)
            if not future.done():
                future.set_result(None)
                for _ in range(turns):
                    await asyncio.sleep(0)
        self._elapsed = target
        for _ in range(turns):
            await asyncio.sleep(0)
