"""Every authorization rule of room versions 10, 11 and 12, accepting and rejecting.

Test names use the room v12 numbering (``rule_5_3_2``); each assertion also names the
v10/v11 number (the v12 list inserted rule 2 and rule 10.4, shifting the others).
Signatures are dummies: auth does not verify them (the caller does, before auth).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from signedjson.sign import sign_json

from homeserver.events.auth import auth_types_for_event, check_auth_events_shape, check_auth_rules
from homeserver.events.canonical import unpadded_b64
from homeserver.events.errors import AuthError
from homeserver.events.event import Event, StateKey
from homeserver.events.power import get_creators, get_power_level, is_power_event
from homeserver.events.versions import ROOM_V10, ROOM_V11, ROOM_V12, RoomVersion
from tests.unit.events.builders import (
    ALICE,
    ALL_VERSIONS,
    BOB,
    CAROL,
    DAVE,
    Room,
    make_pdu,
    signing_key,
    standard_room,
)

V = pytest.mark.parametrize("version", ALL_VERSIONS, ids=lambda v: f"v{v.identifier}")
PRE_V12 = pytest.mark.parametrize("version", [ROOM_V10, ROOM_V11], ids=["v10", "v11"])


def allowed(event: Event, state: dict[StateKey, Event]) -> None:
    check_auth_rules(event, state)


def rejected(event: Event, state: dict[StateKey, Event], v12: str, old: str | None = None) -> None:
    """Assert rejection by rule ``v12`` (room v12 numbering) / ``old`` (v10, v11)."""
    with pytest.raises(AuthError) as info:
        check_auth_rules(event, state)
    expected = v12 if event.room_version.identifier == "12" else (old or v12)
    assert info.value.rule == expected, info.value


def with_member(room: Room, user: str, membership: str) -> Room:
    """Put ``user``'s membership in the state directly (the way there is not under test)."""
    room.add(room.member(user, membership))
    return room


# -- rule 1: m.room.create ---------------------------------------------------------------

def create_event(version: RoomVersion, **overrides: Any) -> Event:
    content = overrides.pop("content", {"room_version": version.identifier})
    if "creator" not in content and version.identifier == "10" and overrides.pop(
            "add_creator", True):
        content["creator"] = ALICE
    room_id = overrides.pop("room_id", None if version.identifier == "12" else "!r:a.test")
    pdu = make_pdu(version, room_id=room_id, type="m.room.create", sender=ALICE,
                   content=content, state_key="", **overrides)
    return Event.from_pdu(pdu, version)


@V
def test_rule_1_1_create_without_prev_events(version: RoomVersion) -> None:
    allowed(create_event(version), {})
    rejected(create_event(version, prev_events=["$x"]), {}, "1.1")


@PRE_V12
def test_rule_1_2_create_room_id_domain_matches_sender(version: RoomVersion) -> None:
    allowed(create_event(version, room_id="!r:a.test"), {})
    rejected(create_event(version, room_id="!r:b.test"), {}, "1.2")


def test_rule_1_2_v12_create_must_not_have_room_id() -> None:
    allowed(create_event(ROOM_V12), {})
    rejected(create_event(ROOM_V12, room_id="!" + "A" * 43), {}, "1.2")


@V
def test_rule_1_3_create_room_version_recognised(version: RoomVersion) -> None:
    allowed(create_event(version, content={"room_version": "11", "creator": ALICE}), {})
    allowed(create_event(version, content={"creator": ALICE}), {})  # absent: fine
    rejected(create_event(version, content={"room_version": "999", "creator": ALICE}), {},
             "1.3")
    rejected(create_event(version, content={"room_version": 12, "creator": ALICE}), {}, "1.3")


def test_rule_1_4_v10_create_needs_creator() -> None:
    allowed(create_event(ROOM_V10), {})
    rejected(create_event(ROOM_V10, content={"room_version": "10"}, add_creator=False), {},
             "1.4")


def test_rule_1_4_v11_create_without_creator_allowed() -> None:
    allowed(create_event(ROOM_V11, content={"room_version": "11"}), {})


def test_rule_1_4_v12_additional_creators_must_be_user_ids() -> None:
    allowed(create_event(ROOM_V12, content={"additional_creators": [BOB, CAROL]}), {})
    for bad in (BOB, ["bob"], [1], [BOB, "@x"]):
        rejected(create_event(ROOM_V12, content={"additional_creators": bad}), {}, "1.4")


# -- rule 2 (v12): the room ID is the create event ---------------------------------------

def test_rule_2_v12_room_id_must_be_create_event_id() -> None:
    room = standard_room(ROOM_V12)
    allowed(room.make("m.room.message", ALICE, {"body": "hi"}), room.state)
    other = Room(ROOM_V12, BOB)
    wrong_room = other.make("m.room.message", ALICE, {"body": "hi"})
    rejected(wrong_room, room.state, "2")
    no_create = {k: v for k, v in room.state.items() if k != ("m.room.create", "")}
    rejected(room.make("m.room.message", ALICE, {"body": "hi"}), no_create, "2")


@PRE_V12
def test_rule_2_4_pre_v12_create_must_be_in_auth_state(version: RoomVersion) -> None:
    room = standard_room(version)
    no_create = {k: v for k, v in room.state.items() if k != ("m.room.create", "")}
    rejected(room.make("m.room.message", ALICE, {"body": "hi"}), no_create, "2.4")


@PRE_V12
def test_rule_2_5_pre_v12_create_from_another_room(version: RoomVersion) -> None:
    room = standard_room(version)
    other = Room(version)
    other.room_id = "!other:a.test"
    event = other.make("m.room.message", ALICE, {"body": "hi"})
    rejected(event, room.state, "2.5")


# -- rule 3 (v10/v11: 2): the auth events themselves --------------------------------------

def _auth_events(room: Room, event: Event) -> list[Event]:
    return [room.by_id[e] for e in event.auth_events]


@V
def test_rule_3_auth_events_selection_accepts_correct_set(version: RoomVersion) -> None:
    room = standard_room(version)
    event = room.make("m.room.message", ALICE, {"body": "hi"})
    check_auth_events_shape(event, _auth_events(room, event))
    join = room.member(BOB, "join")
    check_auth_events_shape(join, _auth_events(room, join))


def _shape_rejected(event: Event, auth: list[Event], v12: str, old: str) -> None:
    with pytest.raises(AuthError) as info:
        check_auth_events_shape(event, auth)
    assert info.value.rule == (v12 if event.room_version.identifier == "12" else old)


@V
def test_rule_3_1_duplicate_auth_event_pairs(version: RoomVersion) -> None:
    room = standard_room(version)
    old_pl = room.state[("m.room.power_levels", "")]
    room.send("m.room.power_levels", ALICE, dict(old_pl.content), "")
    event = room.make("m.room.message", ALICE, {"body": "hi"})
    auth = [*_auth_events(room, event), old_pl]
    _shape_rejected(event, auth, "3.1", "2.1")


@V
def test_rule_3_2_auth_event_not_selected(version: RoomVersion) -> None:
    room = standard_room(version)
    event = room.make("m.room.message", ALICE, {"body": "hi"})
    # join rules are not selected for a message
    auth = [*_auth_events(room, event), room.state[("m.room.join_rules", "")]]
    _shape_rejected(event, auth, "3.2", "2.2")


def test_rule_3_2_v12_create_must_not_be_cited() -> None:
    room = standard_room(ROOM_V12)
    event = room.make("m.room.message", ALICE, {"body": "hi"})
    assert room.create.event_id not in event.auth_events
    _shape_rejected(event, [*_auth_events(room, event), room.create], "3.2", "2.2")


@PRE_V12
def test_rule_2_4_pre_v12_create_must_be_cited(version: RoomVersion) -> None:
    room = standard_room(version)
    event = room.make("m.room.message", ALICE, {"body": "hi"})
    auth = [e for e in _auth_events(room, event) if e.type != "m.room.create"]
    _shape_rejected(event, auth, "n/a", "2.4")


@V
def test_rule_3_5_auth_event_from_another_room(version: RoomVersion) -> None:
    room = standard_room(version)
    event = room.make("m.room.message", ALICE, {"body": "hi"})
    foreign_pl = Event.from_pdu(
        make_pdu(version, room_id="!elsewhere:a.test" if version.identifier != "12"
                 else "!" + "B" * 43, type="m.room.power_levels", sender=ALICE,
                 content={}, state_key=""),
        version,
    )
    auth = [e for e in _auth_events(room, event) if e.type != "m.room.power_levels"]
    _shape_rejected(event, [*auth, foreign_pl], "3.5", "2.5")


@V
def test_rule_3_create_event_auth_events_not_checked(version: RoomVersion) -> None:
    check_auth_events_shape(create_event(version), [])


# -- rule 4 (v10/v11: 3): m.federate ----------------------------------------------------

@V
def test_rule_4_m_federate_false_keeps_other_servers_out(version: RoomVersion) -> None:
    room = standard_room(version, create_content={"m.federate": False})
    with_member(room, DAVE, "join")
    with_member(room, "@eve:a.test", "join")
    allowed(room.make("m.room.message", "@eve:a.test", {"body": "hi"}), room.state)
    rejected(room.make("m.room.message", DAVE, {"body": "hi"}), room.state, "4", "3")
    rejected(room.member(BOB, "join"), room.state, "4", "3")


@V
def test_rule_4_m_federate_true_lets_other_servers_in(version: RoomVersion) -> None:
    room = standard_room(version, create_content={"m.federate": True})
    allowed(room.member(BOB, "join"), room.state)


# -- rule 5 (v10/v11: 4): m.room.member ---------------------------------------------------

@V
def test_rule_5_1_member_needs_membership_and_state_key(version: RoomVersion) -> None:
    room = standard_room(version)
    allowed(room.make("m.room.member", BOB, {"membership": "join"}, BOB), room.state)
    rejected(room.make("m.room.member", BOB, {"displayname": "b"}, BOB), room.state,
             "5.1", "4.1")
    rejected(room.make("m.room.member", BOB, {"membership": "join"}), room.state, "5.1", "4.1")


def _restricted(version: RoomVersion, join_rule: str = "restricted") -> Room:
    room = standard_room(version, join_rule=join_rule, users={CAROL: 0},
                         power_levels={"invite": 0})
    with_member(room, CAROL, "join")
    return room


def _signed_by(event: Event, *servers: str) -> Event:
    pdu = dict(event.pdu)
    pdu["signatures"] = {s: {"ed25519:k": "c2ln"} for s in servers}
    return Event.from_pdu(pdu, event.room_version)


@V
def test_rule_5_2_1_join_authorised_via_server_must_have_signed(version: RoomVersion) -> None:
    # The signature itself is verified by signing.verify_event_signatures, which requires
    # the authorising server (required_signers); auth checks the signature is present.
    room = _restricted(version)
    join = room.member(BOB, "join", join_authorised_via_users_server=CAROL)
    allowed(_signed_by(join, "b.test", "c.test"), room.state)
    rejected(_signed_by(join, "b.test"), room.state, "5.2.1", "4.2.1")
    bad = room.member(BOB, "join", join_authorised_via_users_server="carol")
    rejected(_signed_by(bad, "b.test", "c.test"), room.state, "5.2.1", "4.2.1")


# 5.3: join

@V
def test_rule_5_3_1_creator_first_join_after_create(version: RoomVersion) -> None:
    room = Room(version)
    allowed(room.member(ALICE, "join"), room.state)  # no join rules at all: still allowed
    # not the creator: 5.3.1 does not apply, and with no join rules the join is refused
    rejected(room.member(BOB, "join"), room.state, "5.3.7", "4.3.7")


@V
def test_rule_5_3_1_creator_join_not_right_after_create(version: RoomVersion) -> None:
    room = Room(version)
    room.send("m.room.topic", ALICE, {"topic": "t"}, "")
    rejected(room.member(ALICE, "join"), room.state, "5.3.7", "4.3.7")


@V
def test_rule_5_3_2_join_sender_must_match_state_key(version: RoomVersion) -> None:
    room = standard_room(version)
    allowed(room.member(BOB, "join"), room.state)
    rejected(room.member(BOB, "join", sender=ALICE), room.state, "5.3.2", "4.3.2")


@V
def test_rule_5_3_3_banned_cannot_join(version: RoomVersion) -> None:
    room = standard_room(version)
    with_member(room, BOB, "ban")
    rejected(room.member(BOB, "join"), room.state, "5.3.3", "4.3.3")
    with_member(room, BOB, "leave")
    allowed(room.member(BOB, "join"), room.state)


@V
@pytest.mark.parametrize("join_rule", ["invite", "knock"])
def test_rule_5_3_4_invite_and_knock_rooms_need_invite(version: RoomVersion,
                                                       join_rule: str) -> None:
    room = standard_room(version, join_rule=join_rule)
    rejected(room.member(BOB, "join"), room.state, "5.3.7", "4.3.7")
    with_member(room, BOB, "invite")
    allowed(room.member(BOB, "join"), room.state)
    with_member(room, BOB, "join")
    allowed(room.member(BOB, "join"), room.state)  # profile change


@V
@pytest.mark.parametrize("join_rule", ["restricted", "knock_restricted"])
def test_rule_5_3_5_1_restricted_invited_or_joined(version: RoomVersion, join_rule: str) -> None:
    room = _restricted(version, join_rule)
    rejected(room.member(BOB, "join"), room.state, "5.3.5.2", "4.3.5.2")
    with_member(room, BOB, "invite")
    allowed(room.member(BOB, "join"), room.state)


@V
@pytest.mark.parametrize("join_rule", ["restricted", "knock_restricted"])
def test_rule_5_3_5_2_restricted_authorising_user(version: RoomVersion, join_rule: str) -> None:
    room = _restricted(version, join_rule)
    join = room.member(BOB, "join", join_authorised_via_users_server=CAROL)
    allowed(_signed_by(join, "b.test", "c.test"), room.state)  # 5.3.5.3
    # not joined
    not_joined = room.member(BOB, "join", join_authorised_via_users_server=DAVE)
    rejected(_signed_by(not_joined, "b.test"), room.state, "5.3.5.2", "4.3.5.2")
    # joined but below the invite level
    strict = _restricted(version, join_rule)
    strict.send("m.room.power_levels", ALICE,
                {"users": {} if version.identifier == "12" else {ALICE: 100}, "invite": 10}, "")
    join = strict.member(BOB, "join", join_authorised_via_users_server=CAROL)
    rejected(_signed_by(join, "b.test", "c.test"), strict.state, "5.3.5.2", "4.3.5.2")


@V
def test_rule_5_3_6_public_room_join(version: RoomVersion) -> None:
    room = standard_room(version, join_rule="public")
    allowed(room.member(BOB, "join"), room.state)


@V
@pytest.mark.parametrize("join_rule", ["private", "unknown"])
def test_rule_5_3_7_other_join_rules_refuse(version: RoomVersion, join_rule: str) -> None:
    room = standard_room(version, join_rule=join_rule)
    rejected(room.member(BOB, "join"), room.state, "5.3.7", "4.3.7")
    # even a joined member's join (a profile change) is refused under such a join rule
    rejected(room.member(ALICE, "join"), room.state, "5.3.7", "4.3.7")
    with_member(room, BOB, "invite")
    rejected(room.member(BOB, "join"), room.state, "5.3.7", "4.3.7")


# 5.4: invite

ID_SERVER_KEY = signing_key(b"i" * 32, "0")


def _tpi_room(version: RoomVersion, *, key_field: str = "public_key") -> Room:
    room = standard_room(version, join_rule="invite")
    public = unpadded_b64(bytes(ID_SERVER_KEY.verify_key))
    content: dict[str, Any] = {"display_name": "b...", "key_validity_url": "https://id"}
    if key_field == "public_key":
        content["public_key"] = public
    else:
        content["public_key"] = unpadded_b64(b"\x01" * 32)  # a key that does not match
        content["public_keys"] = [{"public_key": public}]
    room.send("m.room.third_party_invite", ALICE, content, "tok")
    return room


def _signed_block(mxid: str = BOB, token: str = "tok") -> dict[str, Any]:
    return sign_json({"mxid": mxid, "token": token, "sender": ALICE}, "id.test", ID_SERVER_KEY)


def _tpi_invite(room: Room, signed: Any, sender: str = ALICE, target: str = BOB) -> Event:
    tpi: dict[str, Any] = {"display_name": "b..."}
    if signed is not None:
        tpi["signed"] = signed
    return room.member(target, "invite", sender=sender, third_party_invite=tpi)


@V
@pytest.mark.parametrize("key_field", ["public_key", "public_keys"])
def test_rule_5_4_1_7_third_party_invite_signed_by_invite_key(version: RoomVersion,
                                                             key_field: str) -> None:
    room = _tpi_room(version, key_field=key_field)
    allowed(_tpi_invite(room, _signed_block()), room.state)


@V
def test_rule_5_4_1_1_third_party_invite_target_banned(version: RoomVersion) -> None:
    room = _tpi_room(version)
    with_member(room, BOB, "ban")
    rejected(_tpi_invite(room, _signed_block()), room.state, "5.4.1.1", "4.4.1.1")


@V
def test_rule_5_4_1_2_third_party_invite_needs_signed(version: RoomVersion) -> None:
    room = _tpi_room(version)
    rejected(_tpi_invite(room, None), room.state, "5.4.1.2", "4.4.1.2")


@V
def test_rule_5_4_1_3_signed_needs_mxid_and_token(version: RoomVersion) -> None:
    room = _tpi_room(version)
    signed = _signed_block()
    del signed["token"]
    rejected(_tpi_invite(room, signed), room.state, "5.4.1.3", "4.4.1.3")
    signed = _signed_block()
    del signed["mxid"]
    rejected(_tpi_invite(room, signed), room.state, "5.4.1.3", "4.4.1.3")


@V
def test_rule_5_4_1_4_mxid_must_match_state_key(version: RoomVersion) -> None:
    room = _tpi_room(version)
    rejected(_tpi_invite(room, _signed_block(mxid=CAROL)), room.state, "5.4.1.4", "4.4.1.4")


@V
def test_rule_5_4_1_5_third_party_invite_event_must_exist(version: RoomVersion) -> None:
    room = _tpi_room(version)
    rejected(_tpi_invite(room, _signed_block(token="other")), room.state, "5.4.1.5", "4.4.1.5")


@V
def test_rule_5_4_1_6_sender_must_match_third_party_invite_sender(version: RoomVersion) -> None:
    room = _tpi_room(version)
    with_member(room, CAROL, "join")
    rejected(_tpi_invite(room, _signed_block(), sender=CAROL), room.state, "5.4.1.6", "4.4.1.6")


@V
def test_rule_5_4_1_8_third_party_invite_bad_signature(version: RoomVersion) -> None:
    room = _tpi_room(version)
    signed = _signed_block()
    signed["sender"] = CAROL  # no longer what the identity server signed
    rejected(_tpi_invite(room, signed), room.state, "5.4.1.8", "4.4.1.8")
    forged = sign_json({"mxid": BOB, "token": "tok"}, "id.test", signing_key(b"z" * 32, "0"))
    rejected(_tpi_invite(room, forged), room.state, "5.4.1.8", "4.4.1.8")


@V
def test_rule_5_4_2_inviter_must_be_joined(version: RoomVersion) -> None:
    room = standard_room(version)
    allowed(room.member(BOB, "invite", sender=ALICE), room.state)
    with_member(room, CAROL, "invite")
    rejected(room.member(BOB, "invite", sender=CAROL), room.state, "5.4.2", "4.4.2")


@V
@pytest.mark.parametrize("membership", ["join", "ban"])
def test_rule_5_4_3_cannot_invite_joined_or_banned(version: RoomVersion,
                                                  membership: str) -> None:
    room = standard_room(version)
    with_member(room, BOB, membership)
    rejected(room.member(BOB, "invite", sender=ALICE), room.state, "5.4.3", "4.4.3")
    with_member(room, BOB, "leave")
    allowed(room.member(BOB, "invite", sender=ALICE), room.state)


@V
def test_rule_5_4_4_and_5_4_5_invite_level(version: RoomVersion) -> None:
    room = standard_room(version, users={CAROL: 10}, power_levels={"invite": 20})
    with_member(room, CAROL, "join")
    rejected(room.member(BOB, "invite", sender=CAROL), room.state, "5.4.5", "4.4.5")
    room2 = standard_room(version, users={CAROL: 20}, power_levels={"invite": 20})
    with_member(room2, CAROL, "join")
    allowed(room2.member(BOB, "invite", sender=CAROL), room2.state)


# 5.5: leave

@V
@pytest.mark.parametrize("membership", ["invite", "join", "knock"])
def test_rule_5_5_1_leave_self_allowed(version: RoomVersion, membership: str) -> None:
    room = standard_room(version)
    with_member(room, BOB, membership)
    allowed(room.member(BOB, "leave"), room.state)


@V
@pytest.mark.parametrize("membership", [None, "leave", "ban"])
def test_rule_5_5_1_leave_self_refused(version: RoomVersion, membership: str | None) -> None:
    room = standard_room(version)
    if membership:
        with_member(room, BOB, membership)
    rejected(room.member(BOB, "leave"), room.state, "5.5.1", "4.5.1")


@V
def test_rule_5_5_2_kicker_must_be_joined(version: RoomVersion) -> None:
    room = standard_room(version, users={CAROL: 100})
    with_member(room, BOB, "join")
    with_member(room, CAROL, "leave")
    rejected(room.member(BOB, "leave", sender=CAROL), room.state, "5.5.2", "4.5.2")


@V
def test_rule_5_5_3_unban_needs_ban_level(version: RoomVersion) -> None:
    room = standard_room(version, users={CAROL: 30}, power_levels={"kick": 20, "ban": 40})
    with_member(room, CAROL, "join")
    with_member(room, BOB, "ban")
    rejected(room.member(BOB, "leave", sender=CAROL), room.state, "5.5.3", "4.5.3")
    room2 = standard_room(version, users={CAROL: 40}, power_levels={"kick": 20, "ban": 40})
    with_member(room2, CAROL, "join")
    with_member(room2, BOB, "ban")
    allowed(room2.member(BOB, "leave", sender=CAROL), room2.state)


@V
def test_rule_5_5_4_kick_allowed(version: RoomVersion) -> None:
    room = standard_room(version, users={CAROL: 50, BOB: 10})
    with_member(room, CAROL, "join")
    with_member(room, BOB, "join")
    allowed(room.member(BOB, "leave", sender=CAROL), room.state)


@V
@pytest.mark.parametrize(("carol", "bob"), [(50, 50), (50, 60), (40, 0)],
                         ids=["equal", "outranked", "below-kick-level"])
def test_rule_5_5_5_kick_refused(version: RoomVersion, carol: int, bob: int) -> None:
    room = standard_room(version, users={CAROL: carol, BOB: bob})
    with_member(room, CAROL, "join")
    with_member(room, BOB, "join")
    rejected(room.member(BOB, "leave", sender=CAROL), room.state, "5.5.5", "4.5.5")


# 5.6: ban

@V
def test_rule_5_6_1_banner_must_be_joined(version: RoomVersion) -> None:
    room = standard_room(version, users={CAROL: 100})
    with_member(room, CAROL, "invite")
    rejected(room.member(BOB, "ban", sender=CAROL), room.state, "5.6.1", "4.6.1")


@V
def test_rule_5_6_2_ban_allowed(version: RoomVersion) -> None:
    room = standard_room(version, users={CAROL: 50})
    with_member(room, CAROL, "join")
    allowed(room.member(BOB, "ban", sender=CAROL), room.state)  # even when not in the room


@V
@pytest.mark.parametrize(("carol", "bob"), [(50, 50), (49, 0)], ids=["equal", "below-ban"])
def test_rule_5_6_3_ban_refused(version: RoomVersion, carol: int, bob: int) -> None:
    room = standard_room(version, users={CAROL: carol, BOB: bob})
    with_member(room, CAROL, "join")
    with_member(room, BOB, "join")
    rejected(room.member(BOB, "ban", sender=CAROL), room.state, "5.6.3", "4.6.3")


# 5.7: knock

@V
@pytest.mark.parametrize("join_rule", ["knock", "knock_restricted"])
def test_rule_5_7_3_knock_allowed(version: RoomVersion, join_rule: str) -> None:
    room = standard_room(version, join_rule=join_rule)
    allowed(room.member(BOB, "knock"), room.state)
    with_member(room, BOB, "leave")
    allowed(room.member(BOB, "knock"), room.state)


@V
@pytest.mark.parametrize("join_rule", ["public", "invite", "restricted", "private"])
def test_rule_5_7_1_knock_needs_knock_join_rule(version: RoomVersion, join_rule: str) -> None:
    room = standard_room(version, join_rule=join_rule)
    rejected(room.member(BOB, "knock"), room.state, "5.7.1", "4.7.1")


@V
def test_rule_5_7_2_knock_sender_must_match_state_key(version: RoomVersion) -> None:
    room = standard_room(version, join_rule="knock")
    rejected(room.member(BOB, "knock", sender=ALICE), room.state, "5.7.2", "4.7.2")


@V
@pytest.mark.parametrize("membership", ["ban", "invite", "join"])
def test_rule_5_7_4_knock_refused_when_banned_invited_joined(version: RoomVersion,
                                                            membership: str) -> None:
    room = standard_room(version, join_rule="knock")
    with_member(room, BOB, membership)
    rejected(room.member(BOB, "knock"), room.state, "5.7.4", "4.7.4")


@V
def test_rule_5_8_unknown_membership(version: RoomVersion) -> None:
    room = standard_room(version)
    rejected(room.member(BOB, "wander"), room.state, "5.8", "4.8")
    rejected(room.make("m.room.member", BOB, {"membership": 1}, BOB), room.state, "5.8", "4.8")


# -- rule 6 (v10/v11: 5): sender must be joined --------------------------------------------

@V
@pytest.mark.parametrize("membership", [None, "invite", "leave", "knock", "ban"])
def test_rule_6_sender_must_be_joined(version: RoomVersion, membership: str | None) -> None:
    room = standard_room(version)
    allowed(room.make("m.room.message", ALICE, {"body": "hi"}), room.state)
    if membership:
        with_member(room, BOB, membership)
    rejected(room.make("m.room.message", BOB, {"body": "hi"}), room.state, "6", "5")


# -- rule 7 (v10/v11: 6): m.room.third_party_invite ---------------------------------------

@V
def test_rule_7_1_third_party_invite_event_needs_invite_level(version: RoomVersion) -> None:
    room = standard_room(version, users={CAROL: 5, BOB: 10}, power_levels={"invite": 10,
                         "events": {"m.room.third_party_invite": 100}})
    with_member(room, CAROL, "join")
    with_member(room, BOB, "join")
    # the invite level decides, not the events level
    allowed(room.make("m.room.third_party_invite", BOB, {}, "t"), room.state)
    rejected(room.make("m.room.third_party_invite", CAROL, {}, "t"), room.state, "7.1", "6.1")


# -- rule 8 (v10/v11: 7): required power level ---------------------------------------------

@V
def test_rule_8_required_power_level(version: RoomVersion) -> None:
    room = standard_room(version, users={BOB: 10},
                         power_levels={"events": {"m.room.name": 10, "m.custom": 11},
                                       "events_default": 5})
    with_member(room, BOB, "join")
    allowed(room.make("m.room.name", BOB, {"name": "n"}, ""), room.state)
    allowed(room.make("m.room.message", BOB, {"body": "hi"}), room.state)
    rejected(room.make("m.custom", BOB, {}), room.state, "8", "7")
    rejected(room.make("m.room.topic", BOB, {"topic": "t"}, ""), room.state, "8", "7")  # 50
    with_member(room, DAVE, "join")  # users_default 0 < events_default 5
    rejected(room.make("m.room.message", DAVE, {"body": "hi"}), room.state, "8", "7")


@V
def test_rule_8_state_default_is_50_without_power_levels(version: RoomVersion) -> None:
    room = Room(version)
    room.set_member(ALICE, "join")
    room.send("m.room.join_rules", ALICE, {"join_rule": "public"}, "")
    room.set_member(BOB, "join")
    allowed(room.make("m.room.message", BOB, {"body": "hi"}), room.state)
    rejected(room.make("m.room.topic", BOB, {"topic": "t"}, ""), room.state, "8", "7")
    allowed(room.make("m.room.topic", ALICE, {"topic": "t"}, ""), room.state)  # creator: 100


# -- rule 9 (v10/v11: 8): state keys naming users -----------------------------------------

@V
def test_rule_9_user_state_key_must_be_sender(version: RoomVersion) -> None:
    room = standard_room(version)
    allowed(room.make("m.custom.state", ALICE, {}, ALICE), room.state)
    allowed(room.make("m.custom.state", ALICE, {}, "not-a-user"), room.state)
    rejected(room.make("m.custom.state", ALICE, {}, BOB), room.state, "9", "8")


# -- rule 10 (v10/v11: 9): m.room.power_levels --------------------------------------------

def _pl_room(version: RoomVersion, **pl: Any) -> Room:
    users = {BOB: 50, CAROL: 60, DAVE: 40}
    room = standard_room(version, users=users, power_levels=pl)
    for user in (BOB, CAROL, DAVE):
        with_member(room, user, "join")
    return room


def _current_pl(room: Room) -> dict[str, Any]:
    content = dict(room.state[("m.room.power_levels", "")].content)
    content["users"] = dict(content["users"])
    return content


def _pl(room: Room, sender: str, content: dict[str, Any]) -> Event:
    return room.make("m.room.power_levels", sender, content, "")


@V
@pytest.mark.parametrize("key", ["users_default", "events_default", "state_default", "ban",
                                 "redact", "kick", "invite"])
def test_rule_10_1_scalar_levels_must_be_integers(version: RoomVersion, key: str) -> None:
    room = _pl_room(version)
    content = _current_pl(room)
    content[key] = 20
    allowed(_pl(room, ALICE, content), room.state)
    for bad in ("20", True, None):
        content[key] = bad
        rejected(_pl(room, ALICE, content), room.state, "10.1", "9.1")


@V
@pytest.mark.parametrize("key", ["events", "notifications"])
def test_rule_10_2_events_and_notifications_of_integers(version: RoomVersion, key: str) -> None:
    room = _pl_room(version)
    content = _current_pl(room)
    content[key] = {"room": 20}
    allowed(_pl(room, ALICE, content), room.state)
    for bad in ({"room": "20"}, [20], 20):
        content[key] = bad
        rejected(_pl(room, ALICE, content), room.state, "10.2", "9.2")


@V
def test_rule_10_3_users_of_user_ids_to_integers(version: RoomVersion) -> None:
    room = _pl_room(version)
    for bad in ({"bob": 10}, {BOB: "10"}, {BOB: True}, [BOB]):
        content = _current_pl(room)
        content["users"] = bad
        rejected(_pl(room, ALICE, content), room.state, "10.3", "9.3")


def test_rule_10_4_v12_creators_not_in_users() -> None:
    room = standard_room(ROOM_V12, create_content={"additional_creators": [CAROL]})
    allowed(_pl(room, ALICE, {"users": {BOB: 100}}), room.state)
    rejected(_pl(room, ALICE, {"users": {ALICE: 100}}), room.state, "10.4")
    rejected(_pl(room, ALICE, {"users": {CAROL: 100}}), room.state, "10.4")


@PRE_V12
def test_pre_v12_creator_may_be_in_users(version: RoomVersion) -> None:
    room = standard_room(version)
    allowed(_pl(room, ALICE, {"users": {ALICE: 100}}), room.state)


@V
def test_rule_10_5_first_power_levels_allowed(version: RoomVersion) -> None:
    room = Room(version)
    room.set_member(ALICE, "join")
    users = {BOB: 100} if version.identifier == "12" else {ALICE: 100, BOB: 100}
    allowed(_pl(room, ALICE, {"users": users, "ban": 100, "events": {"x": 100}}), room.state)


@V
def test_rule_10_6_1_cannot_change_scalar_above_own_level(version: RoomVersion) -> None:
    room = _pl_room(version, kick=70)
    content = _current_pl(room)
    content["kick"] = 50
    rejected(_pl(room, CAROL, content), room.state, "10.6.1", "9.5.1")
    del content["kick"]  # removal is a change too
    rejected(_pl(room, CAROL, content), room.state, "10.6.1", "9.5.1")


@V
def test_rule_10_6_2_cannot_set_scalar_above_own_level(version: RoomVersion) -> None:
    room = _pl_room(version, events={"m.room.power_levels": 50})
    content = _current_pl(room)
    content["ban"] = 60  # CAROL is 60: allowed
    allowed(_pl(room, CAROL, content), room.state)
    content["ban"] = 61
    rejected(_pl(room, CAROL, content), room.state, "10.6.2", "9.5.2")


@V
def test_rule_10_7_1_cannot_change_events_entry_above_own_level(version: RoomVersion) -> None:
    room = _pl_room(version, events={"m.room.power_levels": 50, "m.x": 70, "m.y": 60})
    content = _current_pl(room)
    content["events"] = {"m.room.power_levels": 50, "m.x": 70, "m.y": 10}
    allowed(_pl(room, CAROL, content), room.state)
    content["events"] = {"m.room.power_levels": 50, "m.x": 10, "m.y": 60}
    rejected(_pl(room, CAROL, content), room.state, "10.7.1", "9.6.1")
    content["events"] = {"m.room.power_levels": 50, "m.y": 60}  # removed
    rejected(_pl(room, CAROL, content), room.state, "10.7.1", "9.6.1")


@V
def test_rule_10_8_1_cannot_add_events_entry_above_own_level(version: RoomVersion) -> None:
    room = _pl_room(version, events={"m.room.power_levels": 50},
                    notifications={"room": 50})
    content = _current_pl(room)
    content["events"] = {"m.room.power_levels": 50, "m.z": 60}
    allowed(_pl(room, CAROL, content), room.state)
    content["events"] = {"m.room.power_levels": 50, "m.z": 61}
    rejected(_pl(room, CAROL, content), room.state, "10.8.1", "9.7.1")
    content = _current_pl(room)
    content["notifications"] = {"room": 61}
    rejected(_pl(room, CAROL, content), room.state, "10.8.1", "9.7.1")


@V
def test_rule_10_9_1_cannot_change_users_at_or_above_own_level(version: RoomVersion) -> None:
    room = _pl_room(version, events={"m.room.power_levels": 50})
    content = _current_pl(room)
    content["users"][DAVE] = 0  # 40 < 60: allowed
    allowed(_pl(room, CAROL, content), room.state)
    content = _current_pl(room)
    content["users"][CAROL] = 10  # own entry: may lower oneself
    allowed(_pl(room, CAROL, content), room.state)
    content = _current_pl(room)
    content["users"][BOB] = 0  # 50 < 50? no: BOB at 50 is below CAROL's 60: allowed
    allowed(_pl(room, CAROL, content), room.state)
    content = _current_pl(room)
    content["users"][CAROL] = 40
    rejected(_pl(room, BOB, content), room.state, "10.9.1", "9.8.1")  # CAROL 60 >= BOB 50
    equal = _pl_room(version, events={"m.room.power_levels": 50}, users_default=0)
    content = _current_pl(equal)
    content["users"][DAVE] = 50
    content["users"]["@erin:e.test"] = 50
    equal.send("m.room.power_levels", ALICE, content, "")
    content = _current_pl(equal)
    content["users"]["@erin:e.test"] = 0
    rejected(_pl(equal, BOB, content), equal.state, "10.9.1", "9.8.1")  # 50 >= 50
    content = _current_pl(room)
    del content["users"][CAROL]
    rejected(_pl(room, BOB, content), room.state, "10.9.1", "9.8.1")


@V
def test_rule_10_10_1_cannot_raise_users_above_own_level(version: RoomVersion) -> None:
    room = _pl_room(version, events={"m.room.power_levels": 50})
    content = _current_pl(room)
    content["users"][DAVE] = 60
    allowed(_pl(room, CAROL, content), room.state)
    content["users"][DAVE] = 61
    rejected(_pl(room, CAROL, content), room.state, "10.10.1", "9.9.1")
    content = _current_pl(room)
    content["users"]["@new:x.test"] = 61
    rejected(_pl(room, CAROL, content), room.state, "10.10.1", "9.9.1")


# -- rule 11 (v10/v11: 10): otherwise allow -------------------------------------------------

@V
def test_rule_11_otherwise_allow(version: RoomVersion) -> None:
    room = standard_room(version)
    with_member(room, BOB, "join")
    allowed(room.make("m.room.message", BOB, {"body": "hi"}), room.state)
    allowed(room.make("m.room.redaction", BOB, {"redacts": "$x"}), room.state)


# -- version differences -------------------------------------------------------------------

def test_v12_creators_have_infinite_power() -> None:
    room = standard_room(ROOM_V12, users={BOB: 2**53 - 1},
                         create_content={"additional_creators": [CAROL]})
    with_member(room, BOB, "join")
    with_member(room, CAROL, "join")
    assert get_power_level(ALICE, room.state) == math.inf
    assert get_power_level(CAROL, room.state) == math.inf
    assert get_creators(room.state) == {ALICE, CAROL}
    # the creator kicks even the highest possible finite level...
    allowed(room.member(BOB, "leave", sender=ALICE), room.state)
    # ...and creators cannot be kicked or banned by anyone
    rejected(room.member(ALICE, "ban", sender=BOB), room.state, "5.6.3")
    rejected(room.member(CAROL, "leave", sender=ALICE), room.state, "5.5.5")


@PRE_V12
def test_pre_v12_creators_have_finite_power(version: RoomVersion) -> None:
    room = standard_room(version, users={BOB: 100})
    with_member(room, BOB, "join")
    assert get_power_level(ALICE, room.state) == 100
    rejected(room.member(BOB, "leave", sender=ALICE), room.state, "5.5.5", "4.5.5")
    room2 = standard_room(version, users={ALICE: 50, BOB: 100})
    with_member(room2, BOB, "join")
    allowed(room2.member(ALICE, "ban", sender=BOB), room2.state)


def test_v10_creator_comes_from_content() -> None:
    room = Room(ROOM_V10, create_content={"creator": BOB})
    assert get_creators(room.state) == {BOB}
    assert get_power_level(BOB, room.state) == 100
    assert get_power_level(ALICE, room.state) == 0
    allowed(room.member(BOB, "join"), room.state)  # 4.3.1: the creator named in content
    rejected(room.member(ALICE, "join"), room.state, "4.3.7")


def test_v11_creator_is_the_sender() -> None:
    room = Room(ROOM_V11, create_content={"creator": BOB})  # ignored from v11
    assert get_creators(room.state) == {ALICE}
    allowed(room.member(ALICE, "join"), room.state)
    rejected(room.member(BOB, "join"), room.state, "4.3.7")


@V
def test_power_level_defaults(version: RoomVersion) -> None:
    room = standard_room(version, users={BOB: 7}, power_levels={"users_default": 3})
    assert get_power_level(BOB, room.state) == 7
    assert get_power_level(DAVE, room.state) == 3
    assert get_power_level(DAVE, {}) == 0


# -- helpers for state resolution ----------------------------------------------------------

@V
def test_is_power_event(version: RoomVersion) -> None:
    room = standard_room(version)
    assert is_power_event(room.create)
    assert is_power_event(room.state[("m.room.power_levels", "")])
    assert is_power_event(room.state[("m.room.join_rules", "")])
    assert is_power_event(room.member(BOB, "leave", sender=ALICE))
    assert is_power_event(room.member(BOB, "ban", sender=ALICE))
    assert not is_power_event(room.member(BOB, "leave"))
    assert not is_power_event(room.member(BOB, "join"))
    assert not is_power_event(room.make("m.room.topic", ALICE, {"topic": "t"}, ""))
    assert not is_power_event(room.make("m.room.power_levels", ALICE, {}))  # not state


@V
def test_auth_types_for_event(version: RoomVersion) -> None:
    room = standard_room(version)
    create = {("m.room.create", "")} if version.identifier != "12" else set()
    base = {("m.room.power_levels", ""), *create}
    assert auth_types_for_event(room.create) == set()
    assert auth_types_for_event(room.make("m.room.message", BOB, {})) == {
        *base, ("m.room.member", BOB)}
    assert auth_types_for_event(room.member(BOB, "leave", sender=ALICE)) == {
        *base, ("m.room.member", BOB), ("m.room.member", ALICE)}
    assert auth_types_for_event(room.member(BOB, "join", join_authorised_via_users_server=CAROL)
                                ) == {*base, ("m.room.member", BOB), ("m.room.join_rules", ""),
                                      ("m.room.member", CAROL)}
    assert auth_types_for_event(room.member(BOB, "knock")) == {
        *base, ("m.room.member", BOB), ("m.room.join_rules", "")}
    invite = room.member(BOB, "invite", sender=ALICE,
                         third_party_invite={"signed": {"token": "tok"}})
    assert auth_types_for_event(invite) == {
        *base, ("m.room.member", BOB), ("m.room.member", ALICE), ("m.room.join_rules", ""),
        ("m.room.third_party_invite", "tok")}
    # a bare PDU works too, with the version given or inferred from the room ID
    assert auth_types_for_event(invite.pdu, version) == auth_types_for_event(invite)
    assert auth_types_for_event(invite.pdu) == auth_types_for_event(invite)
