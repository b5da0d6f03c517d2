"""Room directory pieces that need no server: the alias grammar, createRoom's place for
the canonical alias, pagination tokens, and the cut of another server's directory entries."""

from __future__ import annotations

import pytest

from homeserver.events.versions import KNOWN_ROOM_VERSIONS
from homeserver.rooms.creation import plan_room
from homeserver.rooms.directory import InvalidAlias, InvalidParam, parse_alias, parse_since, sanitize_chunk_entry

ALICE = "@alice:a.test"


def test_alias_grammar() -> None:
    assert parse_alias("#room:example.org") == ("room", "example.org")
    assert parse_alias("#ünï cødé:[::1]:8448") == ("ünï cødé", "[::1]:8448")
    assert parse_alias("#r:localhost:8448") == ("r", "localhost:8448")
    for bad in ("room:example.org", "#room", "#:example.org", "#a\x00b:example.org", "#room:bad host",
                "#room:example.org:99999", "#" + "x" * 250 + ":example.org", None, 5):
        with pytest.raises(InvalidAlias):
            parse_alias(bad)


def test_canonical_alias_is_the_fourth_event_of_create_room() -> None:
    for version in KNOWN_ROOM_VERSIONS.values():
        plan = plan_room(version, ALICE, preset="public_chat", name="N", canonical_alias="#n:a.test")
        assert [d.type for d in plan.state[:3]] == [
            "m.room.power_levels", "m.room.canonical_alias", "m.room.join_rules"]
        assert plan.state[1].content == {"alias": "#n:a.test"}
    plan = plan_room(KNOWN_ROOM_VERSIONS["11"], ALICE)
    assert "m.room.canonical_alias" not in [d.type for d in plan.state]


def test_pagination_tokens() -> None:
    assert parse_since(None) == 0
    assert parse_since("o25") == 25
    for bad in ("25", "o", "o-1", "p3", "oxx"):
        with pytest.raises(InvalidParam):
            parse_since(bad)


def test_remote_entries_are_cut_to_the_spec() -> None:
    entry = {
        "room_id": "!r:b.test", "name": "R", "num_joined_members": 3, "world_readable": True,
        "guest_can_join": "yes", "topic": 5, "extra": "x", "join_rule": "public",
    }
    assert sanitize_chunk_entry(entry) == {
        "room_id": "!r:b.test", "name": "R", "num_joined_members": 3, "world_readable": True,
        "guest_can_join": False, "join_rule": "public",
    }
    assert sanitize_chunk_entry({"room_id": "!r:b.test", "num_joined_members": True}) == {
        "room_id": "!r:b.test", "num_joined_members": 0, "world_readable": False, "guest_can_join": False}
    assert sanitize_chunk_entry({"name": "no id"}) is None
    assert sanitize_chunk_entry("nope") is None
