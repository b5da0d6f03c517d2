"""The pure rules of the outbound sender (federation/destinations.py): who hears about an
event of ours, which EDUs may leave, backoff and transaction ids."""

from __future__ import annotations

from typing import Any

from homeserver.config import OutboundConfig
from homeserver.events.event import Event, StateKey
from homeserver.events.identifiers import server_name_of
from homeserver.federation.destinations import (
    destinations_for_event,
    edu_is_ours,
    handshake_refusal,
    is_dead,
    joined_servers,
    next_interval_ms,
    next_txn_id,
    other_servers,
    to_device_target,
)
from tests.unit.events.builders import ALL_VERSIONS, Room

US = "a.test"
ALICE = "@alice:a.test"
BOB = "@bob:b.test"
CAROL = "@carol:c.test"
DAVE = "@dave:b.test"
ERIN = "@erin:e.test"
VERSION = ALL_VERSIONS[-1]


def room_with(members: dict[str, str]) -> Room:
    room = Room(VERSION, ALICE)
    room.set_member(ALICE, "join")
    room.send("m.room.power_levels", ALICE, {"users": {ALICE: 100}}, "")
    room.send("m.room.join_rules", ALICE, {"join_rule": "public"}, "")
    for user, membership in members.items():
        room.set_member(user, membership)
    return room


def dests(room: Room, event: Event) -> set[str]:
    before = dict(room.state)
    after: dict[StateKey, Event] = dict(before)
    if event.is_state:
        after[event.state_tuple] = event
    return destinations_for_event(event, before, after, server_name=US)


def test_message_goes_to_every_joined_server_but_us() -> None:
    room = room_with({BOB: "join", DAVE: "join", CAROL: "join", ERIN: "leave"})
    msg = room.make("m.room.message", ALICE, {"body": "hi"})
    assert dests(room, msg) == {"b.test", "c.test"}  # b.test once, e.test left, not a.test


def test_state_maps_of_contents_work_too() -> None:
    state: dict[StateKey, Any] = {
        ("m.room.member", BOB): {"membership": "join"},
        ("m.room.member", CAROL): {"membership": "invite"},
        ("m.room.member", ALICE): {"membership": "join"},
        ("m.room.name", ""): {"name": "x"},
    }
    assert joined_servers(state) == {"a.test", "b.test"}
    msg = room_with({}).make("m.room.message", ALICE, {"body": "hi"})
    assert destinations_for_event(msg, state, state, server_name=US) == {"b.test"}


def test_ban_reaches_a_server_with_no_member_left() -> None:
    room = room_with({BOB: "join", CAROL: "join"})
    room.set_member(CAROL, "leave")  # c.test's last member left
    ban = room.member(CAROL, "ban", sender=ALICE)
    assert dests(room, ban) == {"b.test", "c.test"}


def test_invite_and_kick_reach_the_target_server() -> None:
    room = room_with({BOB: "join"})
    invite = room.member(ERIN, "invite", sender=ALICE)
    assert dests(room, invite) == {"b.test", "e.test"}
    room = room_with({BOB: "join", CAROL: "join"})
    kick = room.member(CAROL, "leave", sender=ALICE)
    assert dests(room, kick) == {"b.test", "c.test"}


def test_own_leave_goes_to_the_room_only() -> None:
    room = room_with({BOB: "join"})
    leave = room.member(ALICE, "leave")
    assert dests(room, leave) == {"b.test"}
    # our own user's ban of one of our users: only the room's servers
    room = room_with({BOB: "join"})
    room.set_member("@zed:a.test", "join")
    assert dests(room, room.member("@zed:a.test", "ban", sender=ALICE)) == {"b.test"}


def test_join_includes_the_state_after() -> None:
    # Our user joins a room where only c.test is: c.test hears, and the after-state
    # (which adds us) adds no one else.
    room = room_with({CAROL: "join"})
    join = room.member("@zed:a.test", "join")
    assert dests(room, join) == {"c.test"}
    # A join whose after-state has a server the before-state lacks (state given by the caller).
    before: dict[StateKey, Any] = {("m.room.member", ALICE): {"membership": "join"}}
    after = dict(before)
    after[("m.room.member", BOB)] = {"membership": "join"}
    ev = room.member("@zed:a.test", "join")
    assert destinations_for_event(ev, before, after, server_name=US) == {"b.test"}
    # ... but a message does not use the after-state.
    msg = room.make("m.room.message", ALICE, {"body": "x"})
    assert destinations_for_event(msg, before, after, server_name=US) == set()


def test_nobody_else_in_the_room() -> None:
    room = room_with({})
    assert dests(room, room.make("m.room.message", ALICE, {"body": "alone"})) == set()
    # a user ID without a valid server name is ignored
    state: dict[StateKey, Any] = {("m.room.member", "@bad:"): {"membership": "join"},
                                  ("m.room.member", "@x:bad host"): {"membership": "join"}}
    assert destinations_for_event(room.make("m.room.message", ALICE, {}), state, None, server_name=US) == set()


def test_edus_only_about_our_users() -> None:
    assert edu_is_ours("m.typing", {"user_id": ALICE, "typing": True}, US)
    assert not edu_is_ours("m.typing", {"user_id": BOB, "typing": True}, US)
    receipt = {"!r:a.test": {"m.read": {ALICE: {"event_ids": ["$e"]}}}}
    assert edu_is_ours("m.receipt", receipt, US)
    assert not edu_is_ours("m.receipt", {"!r:a.test": {"m.read": {ALICE: {}, BOB: {}}}}, US)
    assert not edu_is_ours("m.receipt", {"!r:a.test": {"m.read": {}}}, US)  # names nobody
    assert not edu_is_ours("m.receipt", {"!r:a.test": ["not", "a", "map"]}, US)
    assert edu_is_ours("m.presence", {"push": [{"user_id": ALICE, "presence": "online"}]}, US)
    assert not edu_is_ours("m.presence", {"push": []}, US)
    assert edu_is_ours("m.direct_to_device", {"sender": ALICE, "messages": {BOB: {"D": {}}}}, US)
    assert not edu_is_ours("m.direct_to_device", {"sender": BOB, "messages": {BOB: {"D": {}}}}, US)
    assert not edu_is_ours("m.direct_to_device", {"sender": ALICE, "messages": {}}, US)  # names nobody
    assert not edu_is_ours("m.direct_to_device", {"sender": ALICE, "messages": {ALICE: {"D": {}}}}, US)  # ours
    # one target server per EDU
    assert not edu_is_ours("m.direct_to_device", {"sender": ALICE, "messages": {BOB: {}, "@c:c.test": {}}}, US)
    assert to_device_target({"messages": {BOB: {"D": {}}}}) == server_name_of(BOB)
    assert edu_is_ours("m.device_list_update", {"user_id": ALICE}, US)
    assert not edu_is_ours("m.device_list_update", {"user_id": "alice"}, US)  # not a user ID
    assert edu_is_ours("m.signing_key_update", {"user_id": ALICE, "master_key": {}}, US)
    assert not edu_is_ours("m.signing_key_update", {"user_id": "@bob:elsewhere.test"}, US)
    assert not edu_is_ours("m.unknown", {"user_id": ALICE}, US)


def test_backoff_and_transaction_ids() -> None:
    cfg = OutboundConfig(backoff_initial_seconds=10.0, backoff_factor=2.0, backoff_ceiling_seconds=30.0,
                         dead_after_days=1.0)
    assert [next_interval_ms(p, cfg) for p in (0, 10_000, 20_000, 30_000)] == [10_000, 20_000, 30_000, 30_000]
    assert not is_dead(1_000, 1_000 + 86_400_000 - 1, cfg)
    assert is_dead(1_000, 1_000 + 86_400_000, cfg)
    assert next_txn_id(5, 1_000) == 1_000  # never below the clock
    assert next_txn_id(2_000, 1_000) == 2_001  # never repeating
    assert other_servers(["c.test", US, "b.test", "c.test", "bad host"], US) == ["b.test", "c.test"]


def test_handshake_refusal_admits_only_the_origins_own_join_leave_or_knock() -> None:
    room = room_with({})
    for membership in ("join", "leave", "knock"):
        event = room.member(BOB, membership, BOB)
        assert handshake_refusal(event, "b.test", US) is None
    assert handshake_refusal(room.member(BOB, "join", BOB), "c.test", US) is not None  # not its origin
    assert handshake_refusal(room.member(BOB, "join", BOB), None, US) is not None
    assert handshake_refusal(room.member(ALICE, "leave", ALICE), US, US) is not None  # ours: not a handshake
    assert handshake_refusal(room.member(DAVE, "leave", BOB), "b.test", US) is not None  # a kick
    for membership in ("invite", "ban"):
        assert handshake_refusal(room.member(DAVE, membership, BOB), "b.test", US) is not None
    message = room.make("m.room.message", BOB, {"msgtype": "m.text", "body": "hi"})
    assert handshake_refusal(message, "b.test", US) is not None
