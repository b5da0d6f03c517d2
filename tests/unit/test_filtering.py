"""Filters as the spec says (client_api/filtering.py): parsing, matching, event_fields."""

from __future__ import annotations

from typing import Any

import pytest

from homeserver.client_api.filtering import (
    DEFAULT_TIMELINE_LIMIT,
    MAX_TIMELINE_LIMIT,
    apply_event_fields,
    filter_events,
    parse_event_filter,
    parse_filter,
    parse_room_event_filter,
    type_matches,
)
from homeserver.errors import MatrixError
from homeserver.util.dotted import split_path


def ev(type_: str, sender: str = "@a:x", room: str = "!r:x", **content: Any) -> dict[str, Any]:
    return {"type": type_, "sender": sender, "room_id": room, "content": content}


def test_wildcards_in_types() -> None:
    assert type_matches("m.*", "m.room.message")
    assert type_matches("*", "anything")
    assert type_matches("m.room.*age", "m.room.message")
    assert not type_matches("m.*", "org.m.x")
    assert not type_matches("m.room.message", "m.room.messages")
    assert not type_matches("m.room.mess?ge", "m.room.message")  # only * is special


def test_types_and_not_types() -> None:
    flt = parse_room_event_filter({"types": ["m.room.*"], "not_types": ["m.room.member"]}, "f")
    got = filter_events(flt, [ev("m.room.message"), ev("m.room.member"), ev("m.reaction")])
    assert [e["type"] for e in got] == ["m.room.message"]
    # An empty types list lets nothing through; an absent one everything.
    assert filter_events(parse_room_event_filter({"types": []}, "f"), [ev("m.room.message")]) == []
    assert len(filter_events(parse_room_event_filter({}, "f"), [ev("a"), ev("b")])) == 2


def test_senders_rooms_and_contains_url() -> None:
    events = [ev("m.room.message", "@a:x", "!1:x", url="mxc://x/y"), ev("m.room.message", "@b:x", "!2:x"),
              ev("m.room.message", "@c:x", "!1:x", url=5)]
    senders = parse_room_event_filter({"senders": ["@a:x", "@b:x"], "not_senders": ["@b:x"]}, "f")
    assert [e["sender"] for e in filter_events(senders, events)] == ["@a:x"]
    rooms = parse_room_event_filter({"rooms": ["!1:x", "!2:x"], "not_rooms": ["!2:x"]}, "f")
    assert [e["sender"] for e in filter_events(rooms, events)] == ["@a:x", "@c:x"]
    with_url = parse_room_event_filter({"contains_url": True}, "f")
    assert [e["sender"] for e in filter_events(with_url, events)] == ["@a:x"]
    without = parse_room_event_filter({"contains_url": False}, "f")
    assert [e["sender"] for e in filter_events(without, events)] == ["@b:x", "@c:x"]
    # Room events without room_id (a /sync timeline) are matched against the room given.
    no_room = [{k: v for k, v in e.items() if k != "room_id"} for e in events]
    assert len(filter_events(rooms, no_room, room_id="!2:x")) == 0


def test_limit_and_event_filter() -> None:
    flt = parse_event_filter({"limit": 2, "types": ["m.presence"], "not_senders": ["@z:x"]}, "presence")
    events = [ev("m.presence", "@a:x"), ev("m.presence", "@z:x"), ev("m.typing"), ev("m.presence", "@b:x"),
              ev("m.presence", "@c:x")]
    assert [e["sender"] for e in filter_events(flt, events)] == ["@a:x", "@b:x"]


def test_parse_whole_filter_and_defaults() -> None:
    flt = parse_filter({})
    assert flt.timeline_limit == DEFAULT_TIMELINE_LIMIT and not flt.include_leave and not flt.lazy_load_members
    flt = parse_filter({
        "event_fields": ["type", "content.body"], "presence": {"types": ["m.presence"]},
        "account_data": {"not_types": ["m.push_rules"]},
        "room": {"rooms": ["!a:x"], "include_leave": True, "timeline": {"limit": 500},
                 "state": {"lazy_load_members": True, "include_redundant_members": True},
                 "ephemeral": {"types": ["m.receipt"]}},
    })
    assert flt.timeline_limit == MAX_TIMELINE_LIMIT and flt.include_leave and flt.lazy_load_members
    assert flt.room.state.include_redundant_members
    assert flt.room.allows_room("!a:x") and not flt.room.allows_room("!b:x")
    assert flt.event_fields == (("type",), ("content", "body"))
    assert not flt.account_data.matches(ev("m.push_rules"))


@pytest.mark.parametrize("bad", [
    [], {"room": []}, {"room": {"timeline": {"limit": "5"}}}, {"room": {"timeline": {"limit": True}}},
    {"room": {"include_leave": "yes"}}, {"room": {"state": {"types": "m.room.name"}}},
    {"room": {"timeline": {"types": [1]}}}, {"presence": {"senders": [None]}}, {"event_fields": "type"},
    {"event_format": "xml"}, {"room": {"state": {"lazy_load_members": 1}}}, {"room": {"timeline": {"contains_url": 0}}},
])
def test_bad_filters_are_400(bad: Any) -> None:
    with pytest.raises(MatrixError) as raised:
        parse_filter(bad)
    assert raised.value.status == 400 and raised.value.errcode == "M_BAD_JSON"


def test_event_fields_paths_and_escapes() -> None:
    assert split_path("content.body") == ("content", "body")
    assert split_path(r"content.m\.relates_to") == ("content", "m.relates_to")
    assert split_path(r"a\\.b") == ("a\\", "b")
    event = {"type": "t", "event_id": "$e", "content": {"body": "hi", "m.relates_to": {"x": 1}, "other": 2}}
    fields = [split_path(f) for f in ["type", "content.body", r"content.m\.relates_to", "content.none",
                                       "missing.deep"]]
    assert apply_event_fields(event, fields) == {"type": "t", "content": {"body": "hi", "m.relates_to": {"x": 1}}}
    assert apply_event_fields(event, None) == event
