"""The persister's store on both engines: the one-statement write is chosen by the engine,
deferred writes carry their callbacks to the group commit, and a deferred persist tells
its notifier only once committed."""

from __future__ import annotations

import pytest

from homeserver.events.event import Event
from homeserver.events.versions import KNOWN_ROOM_VERSIONS
from homeserver.notifier import Notifier
from homeserver.rooms.persist import EventPersister
from homeserver.storage.database import Database, DeferredWriteError
from homeserver.storage.event_writes import CollectedWrites, EventWriteStore, ReadInDeferredWrite
from homeserver.storage.events import EventStore, Outcome
from homeserver.storage.migrations import migrate
from homeserver.util.clock import FakeClock
from tests.unit.events.builders import BOB, standard_room


@pytest.fixture
async def migrated(db: Database) -> Database:
    await migrate(db)
    return db


async def test_one_statement_only_on_postgres_and_never_for_a_redaction(migrated: Database) -> None:
    writes = EventWriteStore(migrated)
    room = standard_room(KNOWN_ROOM_VERSIONS["11"])
    message = room.send("m.room.message", BOB, {"body": "hi", "msgtype": "m.text"})
    redaction = room.send("m.room.redaction", BOB, {"redacts": message.event_id})
    assert writes.writes_in_one_statement(message) is (migrated.dialect.name == "postgres")
    assert not writes.writes_in_one_statement(redaction)


async def test_collected_writes_refuse_reads() -> None:
    collect = CollectedWrites()
    await collect.write("DELETE FROM events WHERE event_id = ?", "$x")
    await collect.write_many("DELETE FROM events WHERE event_id = ?", [])
    assert collect.statements == [("DELETE FROM events WHERE event_id = ?", ("$x",), False)]
    with pytest.raises(ReadInDeferredWrite):
        await collect.fetchall("SELECT 1")
    with pytest.raises(ReadInDeferredWrite):
        await collect.execute("SELECT 1")


async def test_collected_callbacks_run_with_the_group_commit(migrated: Database) -> None:
    ran: list[str] = []
    good = CollectedWrites()
    await good.write("INSERT INTO forgotten_rooms (user_id, room_id, forgotten_ts) VALUES (?, ?, ?)", "@a:x", "!r", 1)
    good.call_after(lambda: ran.append("good committed"))
    good.call_on_exception(lambda: ran.append("good failed"))
    await good.defer(migrated)
    assert ran == ["good committed"]

    bad = CollectedWrites()
    await bad.write("INSERT INTO no_such_table (x) VALUES (?)", 1)
    bad.call_after(lambda: ran.append("bad committed"))
    bad.call_on_exception(lambda: ran.append("bad failed"))
    with pytest.raises(DeferredWriteError):
        await bad.defer(migrated)
    assert ran == ["good committed", "bad failed"]


async def test_a_deferred_persist_tells_the_notifier_once_committed(migrated: Database) -> None:
    clock = FakeClock()
    told: list[tuple[str, Outcome, int]] = []
    listening = False

    class Recording(Notifier):
        def on_event(self, event: Event, outcome: Outcome, stream_ordering: int) -> None:
            if listening:
                told.append((event.event_id, outcome, stream_ordering))
            super().on_event(event, outcome, stream_ordering)

    persister = EventPersister(EventStore(migrated), clock=clock, notifier=Recording(clock))

    room = standard_room(KNOWN_ROOM_VERSIONS["11"])
    room.set_member(BOB, "join")
    first = room.send("m.room.message", BOB, {"body": "one", "msgtype": "m.text"})
    for e in room.events:
        before = await persister.compute_state_before(e.room_version, e.prev_events) if e.prev_events else {}
        await persister.persist_event(e, Outcome.ACCEPTED, before)
    listening = True
    second = room.send("m.room.message", BOB, {"body": "two", "msgtype": "m.text"})
    before = await persister.compute_state_before(second.room_version, [first.event_id])
    ordering, commit = await persister.persist_event_deferred(second, Outcome.ACCEPTED, before)
    assert commit is not None
    assert told == []  # not committed yet: nobody is told
    await commit
    assert told == [(second.event_id, Outcome.ACCEPTED, ordering)]
    # The stored timestamps come from the injected clock.
    received = await migrated.fetchval("SELECT received_ts FROM events WHERE event_id = ?", second.event_id)
    assert int(received) == clock.time_ms()
