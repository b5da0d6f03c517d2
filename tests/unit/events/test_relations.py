"""events/relations.py: which relation an event declares, and what search indexes of it."""

from __future__ import annotations

from typing import Any

from homeserver.events.event import Event
from homeserver.events.relations import Relation, event_relation, relation_of, searchable_of
from homeserver.events.versions import get_room_version


def _event(event_type: str, content: dict[str, Any], state_key: str | None = None) -> Event:
    pdu: dict[str, Any] = {
        "type": event_type, "content": content, "room_id": "!r:x", "sender": "@a:x", "depth": 1,
        "origin_server_ts": 1, "prev_events": [], "auth_events": [], "hashes": {"sha256": "x"},
        "signatures": {},
    }
    if state_key is not None:
        pdu["state_key"] = state_key
    return Event.from_pdu(pdu, get_room_version("10"), event_id="$e")


def test_relations_declared_in_content() -> None:
    thread = {"m.relates_to": {"rel_type": "m.thread", "event_id": "$root"}}
    assert relation_of(thread) == Relation("m.thread", "$root")
    assert relation_of({"m.relates_to": {"rel_type": "m.replace", "event_id": "$x"}}) == Relation("m.replace", "$x")
    # Not relations: a plain reply, malformed ones, and state events.
    assert relation_of({"m.relates_to": {"m.in_reply_to": {"event_id": "$x"}}}) is None
    assert relation_of({"m.relates_to": {"rel_type": "m.thread", "event_id": 5}}) is None
    assert relation_of({"m.relates_to": {"rel_type": "", "event_id": "$x"}}) is None
    assert relation_of({"m.relates_to": {"rel_type": "m.thread", "event_id": "not-an-id"}}) is None
    assert relation_of({"m.relates_to": ["m.thread"]}) is None
    assert relation_of("content") is None
    assert relation_of(thread, is_state=True) is None
    assert event_relation(_event("m.room.message", thread)) == Relation("m.thread", "$root")
    assert event_relation(_event("m.room.topic", thread, "")) is None


def test_searchable_text() -> None:
    assert searchable_of(_event("m.room.message", {"body": "hello world"})) == ("content.body", "hello world")
    assert searchable_of(_event("m.room.name", {"name": "Lobby"}, "")) == ("content.name", "Lobby")
    assert searchable_of(_event("m.room.topic", {"topic": "Chat"}, "")) == ("content.topic", "Chat")
    assert searchable_of(_event("m.room.message", {"body": 3})) is None
    assert searchable_of(_event("m.room.message", {"body": "   "})) is None
    assert searchable_of(_event("m.room.name", {"name": "x"}, "not-empty")) is None
    assert searchable_of(_event("m.room.message", {"body": "x"}, "")) is None
    assert searchable_of(_event("m.reaction", {"body": "x"})) is None
    long = searchable_of(_event("m.room.message", {"body": "a\x00" * 20_000}))
    assert long is not None and len(long[1]) == 16_384 and "\x00" not in long[1]
