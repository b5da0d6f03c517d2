"""homeserver.util: the fake clock, the LRU, keyed locks and batch_iter."""

from __future__ import annotations

import asyncio

import pytest

from homeserver.util.clock import SYSTEM_CLOCK, FakeClock
from homeserver.util.iters import batch_iter
from homeserver.util.locks import KeyedLock
from homeserver.util.lru import LruCache


async def test_fake_clock_wakes_sleepers_in_deadline_order() -> None:
    clock = FakeClock(start_ms=1_000_000)
    woke: list[str] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(name)

    tasks = [asyncio.create_task(sleeper("late", 60)), asyncio.create_task(sleeper("early", 5))]
    await asyncio.sleep(0)
    assert clock.sleepers == 2
    await clock.advance(4.9)
    assert woke == []
    assert clock.time_ms() == 1_004_900
    await clock.advance(0.1)
    assert woke == ["early"]
    await clock.advance(100)
    assert woke == ["early", "late"]
    assert clock.sleepers == 0
    await asyncio.gather(*tasks)


async def test_fake_clock_monotonic_moves_with_advance() -> None:
    clock = FakeClock()
    start = clock.monotonic()
    await clock.advance(2.5)
    assert clock.monotonic() - start == pytest.approx(2.5)


def test_system_clock_reads_the_machine() -> None:
    import time

    assert abs(SYSTEM_CLOCK.time_ms() - int(time.time() * 1000)) < 1000


def test_lru_forgets_the_least_recently_used() -> None:
    cache: LruCache[str, int] = LruCache(2)
    cache["a"] = 1
    cache["b"] = 2
    assert cache.get("a") == 1  # a is now the newest
    cache["c"] = 3
    assert "b" not in cache and "a" in cache and "c" in cache
    assert len(cache) == 2
    assert cache.get("zzz", 9) == 9
    assert not cache.add("a", 5) and cache.get("a") == 1
    assert cache.pop("a") == 1 and "a" not in cache
    with pytest.raises(ValueError):
        LruCache(0)


async def test_keyed_lock_serialises_one_key_and_forgets_it() -> None:
    locks: KeyedLock[str] = KeyedLock()
    order: list[str] = []

    async def hold(key: str, name: str, gate: asyncio.Event) -> None:
        async with locks(key):
            order.append(f"{name} in")
            await gate.wait()
            order.append(f"{name} out")

    gate = asyncio.Event()
    a = asyncio.create_task(hold("room", "a", gate))
    b = asyncio.create_task(hold("room", "b", gate))
    other_gate = asyncio.Event()
    other_gate.set()
    await asyncio.sleep(0)
    await hold("other", "c", other_gate)  # another key is not held up
    assert order == ["a in", "c in", "c out"]
    assert locks.locked("room")
    gate.set()
    await asyncio.gather(a, b)
    assert order[3:] == ["a out", "b in", "b out"]
    assert len(locks) == 0  # nobody holds or waits: nothing kept


def test_batch_iter() -> None:
    assert list(batch_iter(range(5), 2)) == [(0, 1), (2, 3), (4,)]
    assert list(batch_iter([], 3)) == []
    with pytest.raises(ValueError):
        list(batch_iter([1], 0))
