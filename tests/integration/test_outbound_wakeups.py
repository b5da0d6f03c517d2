"""The outbound sender's wake-ups and timers, on both engines: a queued PDU or EDU wakes
its destination only once the enqueuing transaction has committed (by the transaction's
after-commit callback; a rolled-back one wakes nothing and sends nothing), on the builder's
path too; backoff and the dead horizon run on the injected clock (FakeClock, no sleeps)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from homeserver.config import OutboundConfig
from homeserver.events.event import Event
from homeserver.events.versions import get_room_version
from homeserver.federation.destination_queue import DestinationQueue
from homeserver.federation.sender import OutboundSender
from homeserver.metrics import Metrics
from homeserver.net.client import FederationRequestError
from homeserver.storage.database import Connection, Database
from homeserver.storage.migrations import migrate
from homeserver.util.clock import FakeClock
from tests.conftest import DatabaseFactory
from tests.local_room import LocalRoom
from tests.outbound_receiver import Receiver, eventually
from tests.servers import make_config, running_server
from tests.unit.events.builders import make_pdu

US = "a.test"
ALICE = f"@alice:{US}"
B, C = "b.test", "c.test"
VERSION = get_room_version("10")


@dataclass
class FakeClient:
    """Stands in for the federation client: records each /send, fails while ``fail`` is set."""

    fail: int | None = None
    attempts: list[tuple[str, str]] = field(default_factory=list)  # (destination, txn_id)
    sent: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def put_json(self, destination: str, path: str, content: Any, **kw: Any) -> Any:
        self.attempts.append((destination, path.rsplit("/", 1)[1]))
        if self.fail is not None:
            raise FederationRequestError(destination, "unavailable", status=self.fail)
        self.sent.append((destination, content))
        return {"pdus": {}}

    def pdu_ids(self, destination: str) -> list[str]:
        return [p["content"]["body"] for d, body in self.sent if d == destination for p in body["pdus"]]

    def edu_types(self, destination: str) -> list[str]:
        return [e["edu_type"] for d, body in self.sent if d == destination for e in body["edus"]]


@dataclass
class Outbox:
    db: Database
    sender: OutboundSender
    client: FakeClient
    clock: FakeClock


@pytest.fixture
def woken(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The destinations woken, in order (DestinationQueue.wake spied on)."""
    calls: list[str] = []
    original = DestinationQueue.wake

    def wake(self: DestinationQueue) -> None:
        calls.append(self.destination)
        original(self)

    monkeypatch.setattr(DestinationQueue, "wake", wake)
    return calls


async def open_outbox(db: Database, **config: Any) -> Outbox:
    await migrate(db)
    client, clock = FakeClient(), FakeClock()
    cfg = OutboundConfig(**{"backoff_initial_seconds": 1.0, "backoff_factor": 2.0, "backoff_jitter": 0.0,
                            **config})
    sender = OutboundSender(US, db, client, cfg, Metrics(), clock=clock)  # type: ignore[arg-type]
    await sender.start()
    return Outbox(db, sender, client, clock)


@pytest.fixture
async def outbox(db: Database) -> AsyncIterator[Outbox]:
    ob = await open_outbox(db)
    try:
        yield ob
    finally:
        await ob.sender.stop()


def our_event(body: str) -> Event:
    """A message of ours whose body is its name (the fake client reports bodies)."""
    pdu = make_pdu(VERSION, room_id=f"!room:{US}", type="m.room.message", sender=ALICE,
                   content={"msgtype": "m.text", "body": body})
    return Event.from_pdu(pdu, VERSION)


async def turns(n: int = 50) -> None:
    """Let every ready task run (no time passes)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def test_an_event_wakes_its_destinations_once_committed(outbox: Outbox, woken: list[str]) -> None:
    async with outbox.db.transaction() as conn:
        await outbox.sender.enqueue_event(conn, our_event("one"), [B, C, US])
        await turns()
        assert woken == []  # not before the commit
    assert sorted(woken) == [B, C]  # at the commit, not later
    await eventually(lambda: outbox.client.pdu_ids(B) == ["one"] == outbox.client.pdu_ids(C), timeout=10)


async def test_a_rolled_back_enqueue_wakes_and_sends_nothing(outbox: Outbox, woken: list[str]) -> None:
    with pytest.raises(RuntimeError):
        async with outbox.db.transaction() as conn:
            await outbox.sender.enqueue_event(conn, our_event("rolled back"), [B])
            await outbox.sender.enqueue_edu("m.typing", {"room_id": "!r:x", "user_id": ALICE, "typing": True},
                                            [B], conn)
            raise RuntimeError("the persister failed")
    await turns()
    assert woken == [] and outbox.client.attempts == []
    assert await outbox.sender.queue_depth(B) == (0, 0)
    # The next event goes; the rolled-back one never.
    async with outbox.db.transaction() as conn:
        await outbox.sender.enqueue_event(conn, our_event("committed"), [B])
    assert woken == [B]
    await eventually(lambda: outbox.client.pdu_ids(B) == ["committed"], timeout=10)
    assert outbox.client.edu_types(B) == []


async def test_an_edu_outside_a_transaction_wakes_after_its_own_commit(outbox: Outbox, woken: list[str]) -> None:
    typing = {"room_id": "!r:x", "user_id": ALICE, "typing": True}
    assert await outbox.sender.enqueue_edu("m.typing", typing, [B])
    assert woken == [B]
    await eventually(lambda: outbox.client.edu_types(B) == ["m.typing"], timeout=10)


async def test_backoff_runs_on_the_clock(outbox: Outbox) -> None:
    sender, client, clock = outbox.sender, outbox.client, outbox.clock
    client.fail = 500
    async with outbox.db.transaction() as conn:
        await sender.enqueue_event(conn, our_event("late"), [B])
    await eventually(lambda: len(client.attempts) == 1, timeout=10)
    await eventually(lambda: clock.sleepers == 2, timeout=10)  # the sweeper and B's backoff
    state = await sender.get_state(B)
    assert state is not None and state.failure_count == 1 and state.retry_interval_ms == 1000
    assert B in sender.destinations_in_backoff()
    await clock.advance(0.9)
    assert len(client.attempts) == 1  # not before the retry time
    await clock.advance(0.2)
    await eventually(lambda: len(client.attempts) == 2, timeout=10)  # a second failure: 2 s now
    await eventually(lambda: clock.sleepers == 2, timeout=10)
    state = await sender.get_state(B)
    assert state is not None and state.retry_interval_ms == 2000
    client.fail = None
    await clock.advance(1.5)
    assert len(client.attempts) == 2
    await clock.advance(0.6)
    await eventually(lambda: client.pdu_ids(B) == ["late"], timeout=10)
    # Every attempt carried the same transaction.
    assert len({txn for _, txn in client.attempts}) == 1
    await eventually(lambda: not sender.destinations_in_backoff(), timeout=10)


async def test_a_dead_destination_costs_nothing_until_it_calls(db_factory: DatabaseFactory) -> None:
    db = await db_factory.open()
    # Dead once failing for 1.5 s: the third failure (at 0 s, 1 s, 3 s) is past it.
    ob = await open_outbox(db, dead_after_days=1.5 / 86_400)
    sender, client, clock = ob.sender, ob.client, ob.clock
    try:
        client.fail = 500
        async with db.transaction() as conn:
            await sender.enqueue_event(conn, our_event("first"), [B])
            await sender.enqueue_event(conn, our_event("second"), [B])
        for attempt, wait in ((1, 1.0), (2, 2.0)):
            await eventually(lambda a=attempt: len(client.attempts) == a, timeout=10)  # type: ignore[misc]
            await eventually(lambda: clock.sleepers == 2, timeout=10)
            await clock.advance(wait)
        await eventually(lambda: len(client.attempts) == 3, timeout=10)

        async def dead() -> bool:
            state = await sender.get_state(B)
            return state is not None and state.dead

        await eventually(dead, timeout=10)
        assert await sender.queue_depth(B) == (1, 0)  # the room's catch-up marker
        await clock.advance(3600)  # an hour: no attempt, whatever the sweeps do
        await turns()
        assert len(client.attempts) == 3
        async with db.transaction() as conn:
            await sender.enqueue_event(conn, our_event("third"), [B])  # replaces the marker
        await clock.advance(60)
        assert len(client.attempts) == 3
        client.fail = None
        await sender.notify_destination_up(B)
        await eventually(lambda: client.pdu_ids(B) == ["third"], timeout=10)
    finally:
        await sender.stop()
        await db.close()


async def test_a_revival_during_the_workers_last_read_is_not_lost(db_factory: DatabaseFactory) -> None:
    """The worker reads the destination dead, and before it ends the destination contacts
    us (notify_destination_up): the wake-up must start a worker again, not be lost."""
    db = await db_factory.open()
    ob = await open_outbox(db, dead_after_days=1.5 / 86_400)
    sender, client, clock = ob.sender, ob.client, ob.clock
    try:
        client.fail = 500
        async with db.transaction() as conn:
            await sender.enqueue_event(conn, our_event("first"), [B])
        for attempt, wait in ((1, 1.0), (2, 2.0)):
            await eventually(lambda a=attempt: len(client.attempts) == a, timeout=10)  # type: ignore[misc]
            await eventually(lambda: clock.sleepers == 2, timeout=10)
            await clock.advance(wait)
        # Hold the worker's next read (after the third failure makes B dead) once it has
        # read B dead, until B has been revived.
        real_load = sender.store.load_state
        read_dead, release = asyncio.Event(), asyncio.Event()

        async def held_load(destination: str) -> Any:
            state = await real_load(destination)
            if state.dead and not release.is_set():
                read_dead.set()
                await release.wait()
            return state

        sender.store.load_state = held_load  # type: ignore[method-assign]
        await eventually(lambda: len(client.attempts) == 3, timeout=10)
        await asyncio.wait_for(read_dead.wait(), 10)
        async with db.transaction() as conn:
            await sender.enqueue_event(conn, our_event("second"), [B])  # replaces the marker
        client.fail = None
        await sender.notify_destination_up(B)  # revived while the worker holds a stale read
        release.set()
        await eventually(lambda: client.pdu_ids(B) == ["second"], timeout=10)
    finally:
        await sender.stop()
        await db.close()


# ---------------------------------------------------------------- the builder's path


async def test_the_builders_transaction_wakes_the_sender_at_its_commit(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path], woken: list[str]
) -> None:
    """No sweep runs in this test (an hour apart): only the after-commit wake-up sends."""
    b = Receiver(tmp_path / "b", test_ca)
    await b.start()
    cfg = make_config(tmp_path / "a", await db_factory.new_settings(), test_ca, extra={
        "federation": {"connect_timeout": 2.0, "request_timeout": 5.0},
        "outbound": {"sweep_interval": 3600.0, "send_timeout": 5.0}})
    try:
        async with running_server(cfg) as a:
            room = await LocalRoom(a.services).create()
            await room.join_remote(f"@bob:{b.server_name}")
            builder = a.services.rooms.builder
            woken.clear()

            async def fail(conn: Connection, event: Event) -> None:
                raise RuntimeError("something else in the transaction failed")

            with pytest.raises(RuntimeError):
                await builder.send(room.room_id, "m.room.message", room.creator,
                                   {"msgtype": "m.text", "body": "never"}, also=fail)
            await turns()
            assert woken == []
            sent = await builder.send(room.room_id, "m.room.message", room.creator,
                                      {"msgtype": "m.text", "body": "sent"})
            assert woken == [b.server_name]
            await b.wait_for(lambda r: sent.event_id in r.pdu_counts(), timeout=20)
            assert len(b.pdu_ids()) == 1
    finally:
        await b.close()
