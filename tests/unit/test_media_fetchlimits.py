"""Remote media fetch bounds that need no network: slots per host and in all, the bound
on waiting fetches (and on the per-host table), one fetch per key, file names."""

from __future__ import annotations

import asyncio

import pytest

from homeserver.media.download import Thumbnail, filename_of
from homeserver.media.fetchlimits import FetchSlots, SingleFlight, TooManyFetches


async def test_per_host_and_global_slots() -> None:
    slots = FetchSlots(max_concurrent=3, per_host=2, max_pending=10)
    release = asyncio.Event()
    running: list[str] = []

    async def fetch(host: str) -> None:
        async with slots.slot(host):
            running.append(host)
            await release.wait()

    tasks = [asyncio.ensure_future(fetch(h)) for h in ["a", "a", "a", "b", "b", "c"]]
    await asyncio.sleep(0.01)
    assert sorted(running) == ["a", "a", "b"]  # a: 2 of its 3; b: the last global slot
    assert slots.running == 3 and slots.pending == 6
    assert slots.hosts_tracked() == 3
    release.set()
    await asyncio.gather(*tasks)
    assert sorted(running) == ["a", "a", "a", "b", "b", "c"]
    assert slots.pending == slots.running == slots.hosts_tracked() == 0


async def test_pending_bound_refuses_and_keeps_the_table_small() -> None:
    slots = FetchSlots(max_concurrent=1, per_host=1, max_pending=5)
    release = asyncio.Event()

    async def fetch(host: str) -> None:
        async with slots.slot(host):
            await release.wait()

    tasks = [asyncio.ensure_future(fetch(f"h{i}")) for i in range(5)]
    await asyncio.sleep(0.01)
    with pytest.raises(TooManyFetches):
        async with slots.slot("another"):
            pass
    assert slots.hosts_tracked() == 5
    release.set()
    await asyncio.gather(*tasks)
    assert slots.hosts_tracked() == 0


async def test_cancelled_waiter_gives_its_place_back() -> None:
    slots = FetchSlots(max_concurrent=1, per_host=1, max_pending=2)
    release = asyncio.Event()

    async def fetch() -> None:
        async with slots.slot("a"):
            await release.wait()

    first = asyncio.ensure_future(fetch())
    await asyncio.sleep(0)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            async with slots.slot("a"):
                pass
    assert slots.pending == 1
    release.set()
    await first
    assert slots.pending == 0 and slots.hosts_tracked() == 0


async def test_single_flight_shares_one_run_and_survives_a_cancelled_caller() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    calls = 0
    gate = asyncio.Event()

    async def work() -> int:
        nonlocal calls
        calls += 1
        await gate.wait()
        return 42

    first = asyncio.ensure_future(flight.run("k", work))
    others = [asyncio.ensure_future(flight.run("k", work)) for _ in range(5)]
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*others) == [42] * 5
    assert calls == 1 and len(flight) == 0
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_single_flight_failure_reaches_every_waiter_then_is_forgotten() -> None:
    flight: SingleFlight[str, int] = SingleFlight()

    async def fail() -> int:
        await asyncio.sleep(0)
        raise ValueError("nope")

    results = await asyncio.gather(flight.run("k", fail), flight.run("k", fail), return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results)
    assert len(flight) == 0


@pytest.mark.parametrize("value, name", [
    (None, None), ("inline", None), ('attachment; filename="a b.png"', "a b.png"),
    ("inline; filename=cat.gif", "cat.gif"),
    ("attachment; filename=x.bin; filename*=UTF-8''%E2%9C%93%20ok.txt", "\u2713 ok.txt"),
    ('attachment; filename="../../etc/passwd"', "....etcpasswd"),
    ("attachment; filename=\"a\x00\nb\"", "ab"), ('attachment; filename=""', None),
    ("attachment; filename=" + "n" * 1000, "n" * 255),
])
def test_filename_of(value: str | None, name: str | None) -> None:
    assert filename_of(value) == name


def test_thumbnail_query() -> None:
    assert Thumbnail(96, 96, "crop").query() == {"width": "96", "height": "96", "method": "crop"}
    assert Thumbnail(1, 2, "scale", True).query()["animated"] == "true"
