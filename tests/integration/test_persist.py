"""Persisting events with their state on both engines: outcomes, extremities, current
state, forks resolved, state groups shared, idempotence."""

from __future__ import annotations

import asyncio

import pytest

from homeserver.events.versions import KNOWN_ROOM_VERSIONS, RoomVersion
from homeserver.rooms.persist import EventPersister, PersistError
from homeserver.storage.database import Database
from homeserver.storage.events import EventStore, Outcome
from homeserver.storage.migrations import migrate
from tests.unit.events.builders import ALICE, BOB, standard_room

VERSIONS = list(KNOWN_ROOM_VERSIONS.values())  # 1 to 12


@pytest.fixture
async def persister(db: Database) -> EventPersister:
    await migrate(db)
    return EventPersister(EventStore(db))


async def persist_linear(p: EventPersister, events: list) -> None:  # type: ignore[type-arg]
    for e in events:
        before = await p.compute_state_before(e.room_version, e.prev_events) if e.prev_events else {}
        await p.persist_event(e, Outcome.ACCEPTED, before)


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"v{v.identifier}")
async def test_linear_room(persister: EventPersister, version: RoomVersion) -> None:
    room = standard_room(version)
    room.set_member(BOB, "join")
    msg = room.send("m.room.message", BOB, {"body": "hi", "msgtype": "m.text"})
    await persist_linear(persister, room.events)
    store = persister.store
    assert await store.get_room_version(room.room_id) == version
    assert await store.get_forward_extremities(room.room_id) == [msg.event_id]
    current = await store.get_current_state_ids(room.room_id)
    assert current == {k: e.event_id for k, e in room.state.items()}
    assert await store.joined_members(room.room_id) == sorted([ALICE, BOB])
    assert await store.joined_servers(current) == {"a.test", "b.test"}
    # a message shares the state group of its predecessor: no new state rows
    assert await store.get_state_ids_before(msg.event_id) == await store.get_state_ids_after(msg.event_id)
    stored = await store.get_event(msg.event_id)
    assert stored is not None and stored.outcome is Outcome.ACCEPTED
    assert stored.event.content["body"] == "hi" and stored.event.pdu == msg.pdu
    chain = await store.get_auth_chain_ids([msg.event_id])
    assert room.create.event_id in chain or version.create_event_implied_in_auth


async def test_persisting_twice_has_one_effect(persister: EventPersister) -> None:
    room = standard_room(KNOWN_ROOM_VERSIONS["12"])
    await persist_linear(persister, room.events)
    last = room.events[-1]
    first = await persister.store.get_event(last.event_id)
    assert first is not None
    again = await persister.persist_event(last, Outcome.ACCEPTED, {})
    assert again == first.stream_ordering
    count = await persister.db.fetchval("SELECT COUNT(*) FROM events")
    assert count == len(room.events)


async def test_rejected_and_soft_failed_never_touch_current_state(persister: EventPersister) -> None:
    room = standard_room(KNOWN_ROOM_VERSIONS["11"])
    await persist_linear(persister, room.events)
    head = room.events[-1].event_id
    current = await persister.store.get_current_state_ids(room.room_id)
    topic = room.make("m.room.topic", BOB, {"topic": "evil"}, "")
    before = await persister.compute_state_before(room.version, topic.prev_events)
    await persister.persist_event(topic, Outcome.REJECTED, before, rejection_reason="4.8")
    name = room.make("m.room.name", ALICE, {"name": "late"}, "")
    await persister.persist_event(name, Outcome.SOFT_FAILED, before)
    assert await persister.store.get_current_state_ids(room.room_id) == current
    assert await persister.store.get_forward_extremities(room.room_id) == [head]
    outcomes = await persister.store.get_outcomes([topic.event_id, name.event_id])
    assert outcomes == {topic.event_id: Outcome.REJECTED, name.event_id: Outcome.SOFT_FAILED}
    # a rejected state event is not in the state after it; a soft-failed one is
    assert ("m.room.topic", "") not in (await persister.store.get_state_ids_after(topic.event_id) or {})
    assert (await persister.store.get_state_ids_after(name.event_id) or {})[("m.room.name", "")] == name.event_id


async def test_fork_is_resolved_into_current_state(persister: EventPersister) -> None:
    room = standard_room(KNOWN_ROOM_VERSIONS["12"])
    room.set_member(BOB, "join")
    await persist_linear(persister, room.events)
    base = room.events[-1]
    t1 = room.make("m.room.topic", ALICE, {"topic": "one"}, "", ts=1_700_000_000_100)
    t2 = room.make("m.room.name", ALICE, {"name": "two"}, "", ts=1_700_000_000_200)
    for e in (t1, t2):
        assert e.prev_events == (base.event_id,)
        before = await persister.compute_state_before(room.version, e.prev_events)
        await persister.persist_event(e, Outcome.ACCEPTED, before)
    store = persister.store
    assert sorted(await store.get_forward_extremities(room.room_id)) == sorted([t1.event_id, t2.event_id])
    current = await store.get_current_state_ids(room.room_id)
    assert current[("m.room.topic", "")] == t1.event_id
    assert current[("m.room.name", "")] == t2.event_id
    # an event on top of both forks sees the resolved state
    merged = await persister.compute_state_before(room.version, [t1.event_id, t2.event_id])
    assert merged == current


@pytest.mark.parametrize("identifier", ["1", "2"])
async def test_fork_in_room_1_is_resolved_by_state_resolution_v1(persister: EventPersister, identifier: str) -> None:
    """Room 1 resolves with the original algorithm (the deeper topic wins), room 2 with v2
    (same mainline: the later timestamp wins): the persister takes the room's own."""
    version = KNOWN_ROOM_VERSIONS[identifier]
    room = standard_room(version)
    await persist_linear(persister, room.events)
    base = room.events[-1]
    late = room.make("m.room.topic", ALICE, {"topic": "late"}, "", ts=1_700_000_000_900,
                     prev_events=[base.event_id])
    first = room.send("m.room.topic", ALICE, {"topic": "early"}, "", ts=1_700_000_000_100)
    deeper = room.send("m.room.topic", ALICE, {"topic": "early, deeper"}, "", ts=1_700_000_000_200)
    assert deeper.depth > late.depth
    for e in (first, deeper, late):
        before = await persister.compute_state_before(room.version, e.prev_events)
        await persister.persist_event(e, Outcome.ACCEPTED, before)
    current = await persister.store.get_current_state_ids(room.room_id)
    expected = deeper if identifier == "1" else late
    assert current[("m.room.topic", "")] == expected.event_id
    merged = await persister.compute_state_before(room.version, [deeper.event_id, late.event_id])
    assert merged[("m.room.topic", "")] == expected.event_id


async def test_outliers_have_no_state_and_upgrade(persister: EventPersister) -> None:
    room = standard_room(KNOWN_ROOM_VERSIONS["10"])
    await persister.persist_outliers(room.events)
    store = persister.store
    assert await store.have_events(e.event_id for e in room.events) == {e.event_id for e in room.events}
    assert await store.get_current_state_ids(room.room_id) == {}
    assert await store.get_state_ids_before(room.events[1].event_id) is None
    with pytest.raises(PersistError):
        await persister.compute_state_before(room.version, [room.events[1].event_id])
    # now persisted properly: the outliers become full events
    await persist_linear(persister, room.events)
    assert len(await store.get_current_state_ids(room.room_id)) == 4
    outcomes = await store.get_outcomes(e.event_id for e in room.events)
    assert set(outcomes.values()) == {Outcome.ACCEPTED}


async def test_state_groups_survive_cache_loss(persister: EventPersister, db: Database) -> None:
    room = standard_room(KNOWN_ROOM_VERSIONS["12"])
    for i in range(10):
        room.set_member(f"@u{i}:b.test", "join")
    await persist_linear(persister, room.events)
    fresh = EventStore(db)  # empty caches: everything comes from delta chains in the DB
    for e in room.events[1:]:
        assert await fresh.get_state_ids_after(e.event_id) == await persister.store.get_state_ids_after(e.event_id)
    assert len(await fresh.get_current_state_ids(room.room_id)) == 4 + 10


async def test_nothing_is_deferred_while_a_transaction_holds_the_commit_lock(persister: EventPersister) -> None:
    """A message that could be deferred is written at once while another persist holds the
    commit lock: that one may take its stream ordering after the message's and commit first,
    and a reader that saw its ordering would then never see the message (both engines)."""
    room = standard_room(KNOWN_ROOM_VERSIONS["11"])
    room.set_member(BOB, "join")
    first = room.send("m.room.message", BOB, {"body": "one", "msgtype": "m.text"})
    await persist_linear(persister, room.events)
    second = room.send("m.room.message", BOB, {"body": "two", "msgtype": "m.text"})
    third = room.send("m.room.message", BOB, {"body": "three", "msgtype": "m.text"})
    before = await persister.compute_state_before(second.room_version, [first.event_id])
    assert persister.db.supports_defer  # both engines
    # The fast path defers, as a rule ...
    _, commit = await persister.persist_event_deferred(second, Outcome.ACCEPTED, before)
    assert commit is not None
    await commit
    # ... but not while the commit lock is held.
    async with persister._commit_lock:
        task = asyncio.ensure_future(persister.persist_event_deferred(third, Outcome.ACCEPTED, before))
        await asyncio.sleep(0.05)
        assert not task.done()  # waits for the lock, writes nothing meanwhile
    _, commit = await task
    assert commit is None
    assert (await persister.store.get_forward_extremities(room.room_id)) == [third.event_id]
