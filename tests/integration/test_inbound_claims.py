"""How the inbound worker claims from the inbox (both engines, a real database, the real
InboxStore and InboundWorker; the processor is the test's, held by a gate).

- A room whose in-memory queue is full is left out of claims, so another room of the same
  origin is claimed and processed meanwhile.
- A claim that found nothing outside the full rooms is not repeated while they stay full
  and the origin sends only more of the same rooms (each such claim walks every entry of
  those rooms); a /send for another room, or a full room making room, claims again.
- Claims are taken in pieces, in inbox order: nothing is skipped or taken twice.
- Claims are held in memory: a claimed entry is not claimed again until it is deleted or
  released; a worker starting afresh (after a crash) claims everything there is.

The workers here run on a fake clock: their idle poll (which finds every origin with
entries again) never fires unless a test moves the clock, and a failed round's retry comes
when the test moves the clock by RETRY_SECONDS.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

from homeserver.config import InboundConfig
from homeserver.federation.worker import RETRY_SECONDS, InboundWorker
from homeserver.metrics import Metrics
from homeserver.storage.inbox import InboxEntry, InboxStore, PendingPdu
from homeserver.storage.migrations import migrate
from homeserver.util.clock import FakeClock
from tests.conftest import DatabaseFactory

ORIGIN = "remote.test"
MAX_QUEUED = 4


class CountingStore(InboxStore):
    """The real store, counting claims (and those that found nothing)."""

    claims = 0
    empty_claims_with_exclusions = 0

    async def claim(self, origin: str, limit: int, exclude_keys: Sequence[str]) -> list[InboxEntry]:
        got = await super().claim(origin, limit, exclude_keys)
        self.claims += 1
        if exclude_keys and not got:
            self.empty_claims_with_exclusions += 1
        return got


async def _admit(store: InboxStore, txn: str, room: str, ids: Sequence[str]) -> None:
    pdus = [PendingPdu(room, event_id, "11", {"event_id": event_id}) for event_id in ids]
    admitted = await store.admit(ORIGIN, txn, {"pdus": {}}, pdus, [])
    assert admitted.enqueued == len(ids)


async def _until(condition: object, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_full_room_is_skipped_and_not_claimed_from_again(db_factory: DatabaseFactory) -> None:
    db = await db_factory.open()
    await migrate(db)
    store = CountingStore(db)
    store.claim_piece = 3  # several pieces per claim
    processed: list[str] = []
    gate = {"!a:remote.test": asyncio.Event(), "!b:remote.test": asyncio.Event()}
    gate["!b:remote.test"].set()

    async def process(entry: InboxEntry) -> None:
        # Room A's first five go through; then it is held (its queue stays full).
        if entry.room_id != "!a:remote.test" or len([e for e in processed if e.startswith("$a")]) >= 5:
            await gate[entry.room_id or ""].wait()
        processed.append(entry.event_id or "")

    config = InboundConfig(worker_batch_size=10, max_queued_per_room=MAX_QUEUED, check_processes=0)
    worker = InboundWorker(store, process, config, Metrics(), FakeClock())
    try:
        room_a = [f"$a{i}" for i in range(30)]
        await _admit(store, "t1", "!a:remote.test", room_a)
        await worker.start()
        worker.notify(ORIGIN, {"!a:remote.test"})
        # Room A is held with its queue full: the next claim leaves it out, finds nothing.
        await _until(lambda: store.empty_claims_with_exclusions >= 1)
        await asyncio.sleep(0.2)
        claims = store.claims
        # More for room A only: nothing is claimed while it stays full.
        await _admit(store, "t2", "!a:remote.test", ["$a30"])
        worker.notify(ORIGIN, {"!a:remote.test"})
        await asyncio.sleep(0.3)
        assert store.claims == claims
        assert store.empty_claims_with_exclusions == 1
        # Room B of the same origin is claimed and processed while A is held.
        await _admit(store, "t3", "!b:remote.test", ["$b0", "$b1"])
        worker.notify(ORIGIN, {"!b:remote.test"})
        await _until(lambda: processed[5:] == ["$b0", "$b1"])
        # Room A released: everything it had, once each and in order.
        gate["!a:remote.test"].set()
        await _until(lambda: len(processed) == 33)
        assert [e for e in processed if e.startswith("$a")] == [*room_a, "$a30"]
        assert await worker.wait_idle(10.0)
    finally:
        await worker.stop()
        await db.close()


async def test_origin_drained_after_a_full_room_is_claimed_from_when_it_sends_again(
    db_factory: DatabaseFactory,
) -> None:
    """An origin that was left alone while its room was full, then drained, is claimed from
    at once when it sends to that room again (not after the worker's idle poll)."""
    db = await db_factory.open()
    await migrate(db)
    store = CountingStore(db)
    processed: list[str] = []
    hold = asyncio.Event()

    async def process(entry: InboxEntry) -> None:
        if len(processed) >= 5:
            await hold.wait()
        processed.append(entry.event_id or "")

    config = InboundConfig(worker_batch_size=10, max_queued_per_room=MAX_QUEUED, check_processes=0)
    worker = InboundWorker(store, process, config, Metrics(), FakeClock())  # no idle poll
    try:
        await _admit(store, "t1", "!a:remote.test", [f"$a{i}" for i in range(12)])
        await worker.start()
        worker.notify(ORIGIN, {"!a:remote.test"})
        await _until(lambda: store.empty_claims_with_exclusions >= 1)  # left alone: A is full
        hold.set()
        assert await worker.wait_idle(10.0)  # drained
        await _admit(store, "t2", "!a:remote.test", ["$a12"])
        worker.notify(ORIGIN, {"!a:remote.test"})
        await _until(lambda: processed[-1:] == ["$a12"], timeout=2.0)
    finally:
        await worker.stop()
        await db.close()


async def test_claims_are_held_in_memory_until_deleted_or_released(db_factory: DatabaseFactory) -> None:
    db = await db_factory.open()
    await migrate(db)
    try:
        store = InboxStore(db)
        await _admit(store, "t1", "!a:remote.test", [f"$e{i}" for i in range(6)])
        first = await store.claim(ORIGIN, 4, [])
        assert [e.event_id for e in first] == ["$e0", "$e1", "$e2", "$e3"]
        # Held: the next claim takes the rest, in order, and then nothing.
        second = await store.claim(ORIGIN, 4, [])
        assert [e.event_id for e in second] == ["$e4", "$e5"]
        assert await store.claim(ORIGIN, 4, []) == []
        # Entries admitted later come after what is held.
        await _admit(store, "t2", "!a:remote.test", ["$e6"])
        assert [e.event_id for e in await store.claim(ORIGIN, 4, [])] == ["$e6"]
        # A released entry is claimed again; a deleted one is gone for good.
        store.release([(first[1].id, ORIGIN)])
        await store.delete([(first[0].id, ORIGIN)])
        assert [e.event_id for e in await store.claim(ORIGIN, 4, [])] == ["$e1"]
        assert await store.count() == 6
        # A worker starting afresh (the process crashed holding claims) holds nothing: every
        # entry left is claimed again, in order.
        store.reset_claims()
        again = await store.claim(ORIGIN, 10, [])
        assert [e.event_id for e in again] == [f"$e{i}" for i in range(1, 7)]
        # Claiming writes nothing to the database: another store sees every entry unclaimed.
        other = await InboxStore(db).claim(ORIGIN, 10, [])
        assert [e.id for e in other] == [e.id for e in again]
    finally:
        await db.close()


class FailingOnceStore(InboxStore):
    """The real store, whose second claim statement fails once (a database error mid-round)."""

    calls = 0

    async def claim(self, origin: str, limit: int, exclude_keys: Sequence[str]) -> list[InboxEntry]:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("claim failed")
        return await super().claim(origin, limit, exclude_keys)


@contextlib.asynccontextmanager
async def _failing_worker(
    db_factory: DatabaseFactory,
) -> AsyncIterator[tuple[FailingOnceStore, InboundWorker, FakeClock, list[str]]]:
    """A real database and worker whose store's second claim fails; the worker's clock;
    the events processed."""
    db = await db_factory.open()
    await migrate(db)
    store = FailingOnceStore(db)
    store.claim_piece = 3
    processed: list[str] = []

    async def process(entry: InboxEntry) -> None:
        processed.append(entry.event_id or "")

    config = InboundConfig(worker_batch_size=10, max_queued_per_room=MAX_QUEUED, check_processes=0)
    clock = FakeClock()
    worker = InboundWorker(store, process, config, Metrics(), clock)
    try:
        yield store, worker, clock, processed
    finally:
        await worker.stop()
        await db.close()


async def test_a_claim_round_that_fails_hands_back_what_it_took(db_factory: DatabaseFactory) -> None:
    """The entries a round claimed before a claim statement failed are handed back (they are
    held in memory): the worker's next round takes them, and each is processed once, in order."""
    async with _failing_worker(db_factory) as (store, worker, clock, processed):
        ids = [f"$e{i}" for i in range(8)]
        await _admit(store, "t1", "!a:remote.test", ids)
        await worker.start()
        worker.notify(ORIGIN, {"!a:remote.test"})
        await _until(lambda: store.calls == 2)  # failed: the worker waits for its retry
        assert processed == []  # the round's entries were handed back, not processed
        await clock.advance(RETRY_SECONDS)
        await _until(lambda: len(processed) == 8)
        assert processed == ids
        assert await worker.wait_idle(10.0)
        assert await store.count() == 0


async def test_entries_handed_back_by_a_failed_round_are_claimed_though_their_origin_drained(
    db_factory: DatabaseFactory,
) -> None:
    """Two origins: the round drains the first (fewer entries than its share), then the
    claim for the second fails. The first origin's entries are handed back and its origin
    registered again, so they are processed without waiting for another /send from it."""
    async with _failing_worker(db_factory) as (store, worker, clock, processed):
        for origin in ("a.test", "b.test"):
            pdus = [PendingPdu(f"!{origin[0]}:remote.test", f"${origin[0]}{i}", "11", {}) for i in range(2)]
            assert (await store.admit(origin, "t1", {"pdus": {}}, pdus, [])).enqueued == 2
        await worker.start()  # both origins have entries: one round claims from both
        await _until(lambda: store.calls == 2)
        # After the worker's retry; the clock does not reach its idle poll
        # (IDLE_POLL_SECONDS), which would find the origin again in the database.
        await clock.advance(RETRY_SECONDS)
        await _until(lambda: len(processed) == 4, timeout=3.0)
        assert sorted(processed) == ["$a0", "$a1", "$b0", "$b1"]
        assert await worker.wait_idle(10.0)
