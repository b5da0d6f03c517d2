"""The garbage collection policy: full collections wait for a quiet moment, and for no
longer than the maximum interval; young collections stay automatic."""

from __future__ import annotations

import asyncio
import gc

from homeserver.gcpolicy import DUE_AFTER_YOUNG, TICK_SECONDS, YOUNG_THRESHOLD, CollectorPolicy
from homeserver.util.clock import FakeClock


def _policy(quiet: list[bool], clock: FakeClock, collected: list[int]) -> CollectorPolicy:
    def collect(generation: int) -> int:
        collected.append(generation)
        return 0

    return CollectorPolicy(lambda: quiet[0], collect=collect, clock=clock, max_interval=60.0)


def _young_collections(policy: CollectorPolicy, n: int) -> None:
    for _ in range(n):
        policy._on_gc("stop", {"generation": 1, "collected": 0, "uncollectable": 0})


async def test_full_collection_waits_for_quiet_then_runs() -> None:
    quiet, clock, collected = [False], FakeClock(), []
    policy = _policy(quiet, clock, collected)
    assert not policy.tick()  # nothing due yet
    _young_collections(policy, DUE_AFTER_YOUNG)
    assert policy.due()
    await clock.advance(30)
    assert not policy.tick()  # due, but the server is busy
    assert collected == []
    quiet[0] = True
    assert policy.tick()
    assert collected == [2]
    assert not policy.due()
    assert not policy.tick()  # nothing due again until young collections accumulate


async def test_overdue_full_collection_runs_even_when_busy() -> None:
    quiet, clock, collected = [False], FakeClock(), []
    policy = _policy(quiet, clock, collected)
    _young_collections(policy, DUE_AFTER_YOUNG)
    await clock.advance(59)
    assert not policy.tick()
    await clock.advance(1)
    assert policy.tick()
    assert collected == [2]
    assert policy.full_collections == 1


def test_young_collections_of_generation_0_do_not_count() -> None:
    quiet, clock, collected = [True], FakeClock(), []
    policy = _policy(quiet, clock, collected)
    for _ in range(100):
        policy._on_gc("stop", {"generation": 0, "collected": 0, "uncollectable": 0})
    assert not policy.due()
    assert not policy.tick()


async def test_start_and_stop_restore_the_collector() -> None:
    before = gc.get_threshold()
    policy = CollectorPolicy(lambda: True)
    policy.start()
    try:
        # Generation 0 as CPython has it; generation 1 collected more often (shorter pauses).
        assert gc.get_threshold()[:2] == (before[0], YOUNG_THRESHOLD)
        assert gc.get_threshold()[2] > 1_000_000  # automatic full collections are off
        assert gc.get_freeze_count() > 0  # start-up objects are out of the collector's sight
        assert policy._on_gc in gc.callbacks
        gc.collect(1)  # a young collection is counted
        assert policy._young_since_full >= 1
    finally:
        await policy.stop()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
    assert policy._on_gc not in gc.callbacks


async def test_the_running_policy_looks_once_a_tick() -> None:
    """Started, the policy looks every ``TICK_SECONDS`` of its clock, and runs what is due."""
    collected: list[int] = []
    clock = FakeClock()
    policy = _policy([True], clock, collected)
    policy.start()
    try:
        await asyncio.sleep(0)  # the policy's task reaches its first sleep
        _young_collections(policy, DUE_AFTER_YOUNG)
        await clock.advance(TICK_SECONDS / 2)
        assert collected == []  # due and quiet, but not looked at yet
        await clock.advance(TICK_SECONDS / 2)
        assert collected == [2]
        _young_collections(policy, DUE_AFTER_YOUNG)
        await clock.advance(TICK_SECONDS)
        assert collected == [2, 2]
    finally:
        await policy.stop()


async def test_collections_wait_while_a_send_is_answered() -> None:
    """No collection runs inside a /send's answer; the collector is back on the loop's next
    turn (after the reply was handed over), and is left alone if it was off already."""
    from homeserver.gcpolicy import collections_paused

    assert gc.isenabled()
    with collections_paused():
        assert not gc.isenabled()
        with collections_paused():  # two answers at once
            pass
        assert not gc.isenabled()
    assert not gc.isenabled()  # not yet: the reply is written first
    await asyncio.sleep(0)
    assert gc.isenabled()
    gc.disable()
    try:
        with collections_paused():
            pass
        await asyncio.sleep(0)
        assert not gc.isenabled()  # it was off before: still off
    finally:
        gc.enable()
