"""An event received over federation may hold NUL characters in its content (JSON allows
``\\u0000``; the federation API lets them through, as event hashes cover them). The relation
and search index rows the persister writes with an accepted event take text from the
content: on PostgreSQL (text refuses NUL) such an event could not be stored at all, so a
remote server could make one of its events, and every event after it in the DAG,
unstorable here. Both engines: the event is stored, the NUL relation is left out."""

from __future__ import annotations

import pytest

from homeserver.events.relations import relation_of
from homeserver.events.versions import KNOWN_ROOM_VERSIONS
from homeserver.rooms.persist import EventPersister
from homeserver.storage.database import Database
from homeserver.storage.events import EventStore, Outcome
from homeserver.storage.migrations import migrate
from homeserver.storage.relations import RelationStore
from homeserver.storage.search import SearchQuery, SearchStore
from homeserver.util.clock import FakeClock
from tests.unit.events.builders import BOB, standard_room


def test_relation_with_nul_is_no_relation() -> None:
    assert relation_of({"m.relates_to": {"rel_type": "m.thread\x00", "event_id": "$a"}}) is None
    assert relation_of({"m.relates_to": {"rel_type": "m.thread", "event_id": "$a\x00b"}}) is None
    assert relation_of({"m.relates_to": {"rel_type": "m.thread", "event_id": "$a"}}) is not None


@pytest.mark.parametrize("where", ["rel_type", "event_id", "body"])
async def test_event_with_nul_in_relation_is_stored(db: Database, where: str) -> None:
    await migrate(db)
    persister = EventPersister(EventStore(db), clock=FakeClock())
    room = standard_room(KNOWN_ROOM_VERSIONS["11"])
    room.set_member(BOB, "join")
    root = room.send("m.room.message", BOB, {"body": "root words", "msgtype": "m.text"})
    relates = {"rel_type": "m.thread", "event_id": root.event_id}
    body = "reply words"
    if where == "body":
        body = "reply\x00words"
    else:
        relates[where] += "\x00"
    reply = room.send("m.room.message", BOB, {"body": body, "msgtype": "m.text", "m.relates_to": relates})
    for e in room.events:
        before = await persister.compute_state_before(e.room_version, e.prev_events) if e.prev_events else {}
        await persister.persist_event(e, Outcome.ACCEPTED, before)
    stored = await EventStore(db).get_event(reply.event_id)
    assert stored is not None and stored.outcome is Outcome.ACCEPTED
    kinds = await RelationStore(db).related_kinds([root.event_id])
    assert kinds == ({root.event_id: {"m.thread"}} if where == "body" else {})
    hits = await SearchStore(db).search(
        SearchQuery([root.room_id], ["reply"], ["content.body"]), limit=10, by_rank=False)
    assert [h.event_id for h in hits] == [reply.event_id]
