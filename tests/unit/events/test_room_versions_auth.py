"""The authorization rules that differ between room versions 1 to 12: for each
difference, an accept and a reject test in every version where it applies, and the
behaviour of the versions where it does not.

Rule numbers are asserted in each version's own list (``events/rulenum.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from homeserver.events.auth import check_auth_rules
from homeserver.events.errors import AuthError
from homeserver.events.event import Event, StateKey
from homeserver.events.power import get_power_level, named_level, parse_level
from homeserver.events.rulenum import rule_number
from homeserver.events.versions import KNOWN_ROOM_VERSIONS, RoomVersion
from tests.unit.events.builders import ALICE, BOB, CAROL, EVERY_VERSION, Room, standard_room


def versions(where: Callable[[RoomVersion], bool]) -> pytest.MarkDecorator:
    chosen = [v for v in EVERY_VERSION if where(v)]
    return pytest.mark.parametrize("version", chosen, ids=lambda v: f"v{v.identifier}")


ALL = versions(lambda v: True)


def allowed(event: Event, state: dict[StateKey, Event]) -> None:
    check_auth_rules(event, state)


def rejected(event: Event, state: dict[StateKey, Event], rule: str) -> None:
    """Rejected by ``rule``, numbered in the event's room version's own list."""
    with pytest.raises(AuthError) as info:
        check_auth_rules(event, state)
    assert info.value.rule == rule, info.value


def with_member(room: Room, user: str, membership: str, **content: Any) -> Room:
    room.add(room.member(user, membership, **content))
    return room


def _signed_by(event: Event, *servers: str) -> Event:
    pdu = dict(event.pdu)
    pdu["signatures"] = {s: {"ed25519:k": "c2ln"} for s in servers}
    return Event.from_pdu(pdu, event.room_version)


# -- rule numbering --------------------------------------------------------------------

@pytest.mark.parametrize(
    ("identifier", "not_joined", "invite_not_joined", "knock_rule", "pl_users", "pl_scalar"),
    [
        ("1", "6", "5.3.2", None, "10.1", "10.3.1"),
        ("5", "6", "5.3.2", None, "10.1", "10.3.1"),
        ("6", "5", "4.3.2", None, "9.1", "9.3.1"),
        ("7", "5", "4.3.2", "4.6.1", "9.1", "9.3.1"),
        ("9", "5", "4.4.2", "4.7.1", "9.1", "9.3.1"),
        ("10", "5", "4.4.2", "4.7.1", "9.3", "9.5.1"),
        ("12", "6", "5.4.2", "5.7.1", "10.3", "10.6.1"),
    ],
)
def test_rule_numbers_follow_each_versions_list(
    identifier: str, not_joined: str, invite_not_joined: str, knock_rule: str | None,
    pl_users: str, pl_scalar: str,
) -> None:
    version = KNOWN_ROOM_VERSIONS[identifier]
    assert rule_number(version, "5") == not_joined
    assert rule_number(version, "4.4.2") == invite_not_joined
    if knock_rule is not None:
        assert rule_number(version, "4.7.1") == knock_rule
    assert rule_number(version, "9.3") == pl_users
    assert rule_number(version, "9.5.1") == pl_scalar


@versions(lambda v: not v.knocking)
def test_rule_numbers_of_rooms_without_knocking(version: RoomVersion) -> None:
    offset = 1 if version.special_case_aliases_auth else 0
    assert rule_number(version, "4.8") == f"{4 + offset}.6"  # unknown membership
    assert rule_number(version, "4.3.6") == f"{4 + offset}.2.5"  # public join
    assert rule_number(version, "4.3.7") == f"{4 + offset}.2.6"  # otherwise


@ALL
def test_message_from_non_member_cites_the_versions_rule(version: RoomVersion) -> None:
    room = standard_room(version)
    expected = "6" if version.special_case_aliases_auth or version.room_id_is_create_hash else "5"
    rejected(room.make("m.room.message", BOB, {"body": "hi"}), room.state, expected)


# -- m.room.aliases (rooms 1-5: rule 4) ---------------------------------------------------

@versions(lambda v: v.special_case_aliases_auth)
def test_aliases_rule_allows_the_state_keys_server(version: RoomVersion) -> None:
    room = standard_room(version)
    # BOB is not even in the room: rule 4 decides before membership is looked at.
    allowed(room.make("m.room.aliases", BOB, {"aliases": ["#a:b.test"]}, "b.test"), room.state)


@versions(lambda v: v.special_case_aliases_auth)
def test_aliases_rule_rejects_another_server(version: RoomVersion) -> None:
    room = standard_room(version)
    rejected(room.make("m.room.aliases", BOB, {"aliases": []}, "a.test"), room.state, "4.2")
    # not even the room's creator may set another server's aliases
    rejected(room.make("m.room.aliases", ALICE, {"aliases": []}, "b.test"), room.state, "4.2")


@versions(lambda v: v.special_case_aliases_auth)
def test_aliases_rule_needs_a_state_key(version: RoomVersion) -> None:
    room = standard_room(version)
    rejected(room.make("m.room.aliases", ALICE, {"aliases": []}), room.state, "4.1")


@versions(lambda v: not v.special_case_aliases_auth)
def test_aliases_are_ordinary_state_from_room_6(version: RoomVersion) -> None:
    room = standard_room(version)
    # a non-member of the state key's server: refused (sender must be joined)
    rejected(room.make("m.room.aliases", BOB, {"aliases": []}, "b.test"), room.state,
             rule_number(version, "5"))
    # a joined user with the state level may set another server's entry
    allowed(room.make("m.room.aliases", ALICE, {"aliases": []}, "b.test"), room.state)


# -- m.room.redaction (rooms 1-2: rule 11) ------------------------------------------------

def _redaction(room: Room, sender: str, redacts: str) -> Event:
    content: dict[str, Any] = {"redacts": redacts} if room.version.redacts_in_content else {}
    extra = {} if room.version.redacts_in_content else {"redacts": redacts}
    return room.make("m.room.redaction", sender, content, extra=extra)


def _redaction_room(version: RoomVersion) -> tuple[Room, Event]:
    room = standard_room(version, users={BOB: 0, CAROL: 0})
    with_member(room, BOB, "join")
    with_member(room, CAROL, "join")
    message = room.send("m.room.message", ALICE, {"body": "x"})
    return room, message


@versions(lambda v: v.redaction_auth_rule)
def test_redaction_rule_allows_the_redact_level(version: RoomVersion) -> None:
    room, message = _redaction_room(version)
    allowed(_redaction(room, ALICE, message.event_id), room.state)


@versions(lambda v: v.redaction_auth_rule)
def test_redaction_rule_allows_same_event_id_domain(version: RoomVersion) -> None:
    room, _ = _redaction_room(version)
    own = room.send("m.room.message", BOB, {"body": "mine"})
    assert own.event_id.endswith(":b.test")
    allowed(_redaction(room, BOB, own.event_id), room.state)


@versions(lambda v: v.redaction_auth_rule)
def test_redaction_rule_rejects_another_domain_below_redact_level(version: RoomVersion) -> None:
    room, message = _redaction_room(version)
    rejected(_redaction(room, BOB, message.event_id), room.state, "11.3")
    rejected(_redaction(room, CAROL, message.event_id), room.state, "11.3")


@versions(lambda v: not v.redaction_auth_rule)
def test_redactions_pass_auth_from_room_3(version: RoomVersion) -> None:
    room, message = _redaction_room(version)
    # auth lets it through; whether it applies is decided when it is served
    allowed(_redaction(room, BOB, message.event_id), room.state)


# -- notifications in power levels (room 6+) ----------------------------------------------

def _notifications_room(version: RoomVersion) -> Room:
    room = standard_room(version, users={BOB: 50},
                         power_levels={"notifications": {"room": 60}, "state_default": 50,
                                       "events": {}})
    with_member(room, BOB, "join")
    return room


def _pl_change(room: Room, sender: str, **changes: Any) -> Event:
    content = dict(room.state[("m.room.power_levels", "")].content)
    content.update(changes)
    return room.make("m.room.power_levels", sender, content, "")


@versions(lambda v: v.limit_notifications_power_levels)
def test_notifications_above_sender_rejected_from_room_6(version: RoomVersion) -> None:
    room = _notifications_room(version)
    # changing a current value above the sender's level (60 > 50)
    rejected(_pl_change(room, BOB, notifications={"room": 40}), room.state,
             rule_number(version, "9.6.1"))
    # a new value above the sender's level
    low = standard_room(version, users={BOB: 50},
                        power_levels={"notifications": {"room": 10}, "state_default": 50})
    with_member(low, BOB, "join")
    rejected(_pl_change(low, BOB, notifications={"room": 70}), low.state,
             rule_number(version, "9.7.1"))
    allowed(_pl_change(low, BOB, notifications={"room": 40}), low.state)


@versions(lambda v: not v.limit_notifications_power_levels)
def test_notifications_not_checked_before_room_6(version: RoomVersion) -> None:
    room = _notifications_room(version)
    allowed(_pl_change(room, BOB, notifications={"room": 40}), room.state)
    allowed(_pl_change(room, BOB, notifications={"room": 100}), room.state)


# -- knocking (room 7+) -------------------------------------------------------------------

@versions(lambda v: v.knocking)
def test_knock_allowed_from_room_7(version: RoomVersion) -> None:
    room = standard_room(version, join_rule="knock")
    allowed(room.member(BOB, "knock"), room.state)


@versions(lambda v: v.knocking)
def test_knock_rejected_in_a_public_room_from_room_7(version: RoomVersion) -> None:
    room = standard_room(version, join_rule="public")
    rejected(room.member(BOB, "knock"), room.state, rule_number(version, "4.7.1"))


@versions(lambda v: not v.knocking)
def test_knock_is_an_unknown_membership_before_room_7(version: RoomVersion) -> None:
    room = standard_room(version, join_rule="knock")
    rejected(room.member(BOB, "knock"), room.state, rule_number(version, "4.8"))


@versions(lambda v: v.knocking)
def test_leave_from_knock_allowed_from_room_7(version: RoomVersion) -> None:
    room = standard_room(version, join_rule="knock")
    with_member(room, BOB, "knock")
    allowed(room.member(BOB, "leave"), room.state)
    with_member(room, CAROL, "leave")
    rejected(room.member(CAROL, "leave"), room.state, rule_number(version, "4.5.1"))


@versions(lambda v: not v.knocking)
def test_leave_from_knock_rejected_before_room_7(version: RoomVersion) -> None:
    # A knock membership cannot arise there; were one in the state, leaving it is refused.
    room = standard_room(version)
    room.add(room.member(BOB, "knock"))
    rejected(room.member(BOB, "leave"), room.state, rule_number(version, "4.5.1"))
    with_member(room, CAROL, "invite")
    allowed(room.member(CAROL, "leave"), room.state)


@versions(lambda v: v.knocking)
def test_invited_join_in_knock_room_from_room_7(version: RoomVersion) -> None:
    room = standard_room(version, join_rule="knock")
    rejected(room.member(BOB, "join"), room.state, rule_number(version, "4.3.7"))
    with_member(room, BOB, "invite")
    allowed(room.member(BOB, "join"), room.state)


@versions(lambda v: not v.knocking)
def test_knock_join_rule_refuses_even_the_invited_before_room_7(version: RoomVersion) -> None:
    room = standard_room(version, join_rule="knock")
    with_member(room, BOB, "invite")
    rejected(room.member(BOB, "join"), room.state, rule_number(version, "4.3.7"))


# -- restricted joins (room 8+) and join_authorised_via_users_server -----------------------

def _restricted(version: RoomVersion, join_rule: str = "restricted") -> Room:
    room = standard_room(version, join_rule=join_rule, users={CAROL: 0},
                         power_levels={"invite": 0})
    with_member(room, CAROL, "join")
    return room


@versions(lambda v: v.restricted_joins)
def test_restricted_join_allowed_from_room_8(version: RoomVersion) -> None:
    room = _restricted(version)
    join = room.member(BOB, "join", join_authorised_via_users_server=CAROL)
    allowed(_signed_by(join, "b.test", "c.test"), room.state)


@versions(lambda v: v.restricted_joins)
def test_restricted_join_by_a_non_member_rejected_from_room_8(version: RoomVersion) -> None:
    room = _restricted(version)
    join = room.member(BOB, "join", join_authorised_via_users_server="@zed:c.test")
    rejected(_signed_by(join, "b.test", "c.test"), room.state, rule_number(version, "4.3.5.2"))


@versions(lambda v: not v.restricted_joins)
def test_restricted_is_an_unknown_join_rule_before_room_8(version: RoomVersion) -> None:
    room = _restricted(version)
    join = room.member(BOB, "join", join_authorised_via_users_server=CAROL)
    rejected(_signed_by(join, "b.test", "c.test"), room.state, rule_number(version, "4.3.7"))


@versions(lambda v: v.restricted_joins)
def test_authorising_servers_signature_required_from_room_8(version: RoomVersion) -> None:
    room = _restricted(version)
    join = room.member(BOB, "join", join_authorised_via_users_server=CAROL)
    rejected(_signed_by(join, "b.test"), room.state, rule_number(version, "4.2.1"))


@versions(lambda v: not v.restricted_joins)
def test_join_authorised_via_ignored_before_room_8(version: RoomVersion) -> None:
    room = standard_room(version)  # public
    join = room.member(BOB, "join", join_authorised_via_users_server="not a user")
    allowed(_signed_by(join, "b.test"), room.state)


# -- knock_restricted (room 10+) ----------------------------------------------------------

@versions(lambda v: v.knock_restricted)
def test_knock_restricted_allows_knock_and_restricted_join_from_room_10(version: RoomVersion) -> None:
    room = _restricted(version, "knock_restricted")
    allowed(room.member(BOB, "knock"), room.state)
    join = room.member(BOB, "join", join_authorised_via_users_server=CAROL)
    allowed(_signed_by(join, "b.test", "c.test"), room.state)
    rejected(room.member(BOB, "join"), room.state, rule_number(version, "4.3.5.2"))


@versions(lambda v: not v.knock_restricted)
def test_knock_restricted_unknown_before_room_10(version: RoomVersion) -> None:
    room = _restricted(version, "knock_restricted")
    knock_rule = "4.7.1" if version.knocking else "4.8"
    rejected(room.member(BOB, "knock"), room.state, rule_number(version, knock_rule))
    join = room.member(BOB, "join", join_authorised_via_users_server=CAROL)
    rejected(_signed_by(join, "b.test", "c.test"), room.state, rule_number(version, "4.3.7"))


# -- power levels: integers from room 10, strings in 1-9, floats in 1-5 ------------------

@versions(lambda v: not v.strict_integer_power_levels)
def test_string_levels_accepted_and_used_before_room_10(version: RoomVersion) -> None:
    room = standard_room(version, users={BOB: " +050 "}, power_levels={"ban": "40"})
    assert get_power_level(BOB, room.state) == 50
    assert named_level(room.state, "ban") == 40
    with_member(room, BOB, "join")
    with_member(room, CAROL, "join")
    allowed(room.member(CAROL, "ban", sender=BOB), room.state)
    allowed(_pl_change(room, ALICE, users={ALICE: "100", BOB: "0050"}, kick="50"), room.state)


@versions(lambda v: not v.strict_integer_power_levels)
def test_non_integer_strings_rejected_in_users_before_room_10(version: RoomVersion) -> None:
    room = standard_room(version)
    for bad in ("5.0", "fifty", "", "1_0", True):
        rejected(_pl_change(room, ALICE, users={ALICE: 100, BOB: bad}), room.state,
                 rule_number(version, "9.3"))


@versions(lambda v: v.strict_integer_power_levels)
def test_string_levels_rejected_from_room_10(version: RoomVersion) -> None:
    room = standard_room(version)
    pl_users = {} if version.creators_have_infinite_power else {ALICE: 100}
    rejected(_pl_change(room, ALICE, users={**pl_users, BOB: "50"}), room.state,
             rule_number(version, "9.3"))
    rejected(_pl_change(room, ALICE, ban="50"), room.state, rule_number(version, "9.1"))
    rejected(_pl_change(room, ALICE, events={"m.room.name": "50"}), room.state,
             rule_number(version, "9.2"))


@versions(lambda v: not v.strict_integer_power_levels)
def test_scalar_and_event_strings_pass_before_room_10(version: RoomVersion) -> None:
    room = standard_room(version)
    allowed(_pl_change(room, ALICE, ban="50", events={"m.room.name": "50"}), room.state)


@versions(lambda v: not v.strict_canonical_json)
def test_float_levels_truncate_in_rooms_1_to_5(version: RoomVersion) -> None:
    room = standard_room(version, users={BOB: 50.57}, power_levels={"kick": 5.114698e4})
    assert get_power_level(BOB, room.state) == 50
    assert named_level(room.state, "kick") == 51146
    allowed(_pl_change(room, ALICE, users={ALICE: 100, BOB: 49.9}), room.state)
    # a float above the sender's level after truncation is still above it
    with_member(room, BOB, "join")
    rejected(_pl_change(room, BOB, users={ALICE: 100, BOB: 50.2, CAROL: 51.0001}),
             room.state, rule_number(version, "9.9.1"))


@versions(lambda v: v.strict_canonical_json and not v.strict_integer_power_levels)
def test_float_levels_rejected_in_rooms_6_to_9(version: RoomVersion) -> None:
    room = standard_room(version)
    rejected(_pl_change(room, ALICE, users={ALICE: 100, BOB: 50.5}), room.state,
             rule_number(version, "9.3"))


@ALL
def test_parse_level(version: RoomVersion) -> None:
    assert parse_level(7, version) == 7
    assert parse_level(True, version) is None
    strings = not version.strict_integer_power_levels
    assert parse_level(" -0100 ", version) == (-100 if strings else None)
    assert parse_level("1e2", version) is None
    floats = not version.strict_canonical_json
    assert parse_level(2.9, version) == (2 if floats else None)
    assert parse_level(float("nan"), version) is None
    assert parse_level(float("inf"), version) is None


# -- the first join of the creator: the same rule in every version -------------------------

@ALL
def test_creator_first_join(version: RoomVersion) -> None:
    room = Room(version)
    allowed(room.member(ALICE, "join"), room.state)
    rejected(room.member(BOB, "join"), room.state, rule_number(version, "4.3.7"))
