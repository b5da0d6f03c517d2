"""Malformed PDUs make the event core raise its own errors (events/errors.py) only, never
TypeError, KeyError, AttributeError or ValueError: format checks, event IDs, hashes,
redaction, signature checks and building an Event, fed whatever JSON a peer may send."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from homeserver.events.auth import check_auth_rules
from homeserver.events.errors import EventError
from homeserver.events.event import Event
from homeserver.events.format import check_pdu_format
from homeserver.events.hashes import compute_event_id, content_hash, content_hash_matches, reference_hash
from homeserver.events.redaction import redact
from homeserver.events.signing import check_content_hash, required_signers, verify_event_signatures
from homeserver.events.versions import RoomVersion
from tests.unit.events.builders import ALICE, BOB, CAROL, EVERY_VERSION, make_pdu, standard_room

KEY = SigningKey(b"\x01" * 32)
KEYS = {"a.test": {"ed25519:dummy": KEY.verify_key}}

# Whatever a JSON parser can hand us: floats include the infinities "1e400" parses to.
scalars = (
    st.none() | st.booleans() | st.integers() | st.text(max_size=8)
    | st.floats(allow_nan=False) | st.sampled_from(["ed25519:dummy", "$ev", "@u:a.test", "a.test"])
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)
# What content may hold once the format check passed: no floats.
plain_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=8)
    | st.sampled_from([ALICE, BOB, "invite", "join", "public", "restricted"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6) | st.just(BOB), inner, max_size=3),
    max_leaves=12,
)
KEYS_OF_A_PDU = ["type", "room_id", "sender", "state_key", "content", "prev_events", "auth_events", "depth",
                 "origin_server_ts", "hashes", "signatures", "unsigned", "redacts", "event_id", "origin"]
versions = st.sampled_from(EVERY_VERSION)


def _valid(version: RoomVersion) -> dict[str, Any]:
    room_id = "!" + "A" * 43 if version.room_id_is_create_hash else "!r:a.test"
    return make_pdu(version, room_id=room_id, type="m.room.member", sender="@u:a.test",
                    state_key="@u:a.test", content={"membership": "join"}, prev_events=["$p"],
                    auth_events=["$a"], depth=3)


@st.composite
def malformed_pdus(draw: st.DrawFn) -> tuple[Any, RoomVersion]:
    """A valid PDU with some keys replaced by anything or removed, with anything nested
    in its content, hashes and signatures; or any JSON value at all."""
    version = draw(versions)
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values), version
    pdu = copy.deepcopy(_valid(version))
    for key in draw(st.lists(st.sampled_from(KEYS_OF_A_PDU), max_size=4)):
        if draw(st.booleans()):
            pdu.pop(key, None)
        else:
            pdu[key] = draw(json_values)
    if draw(st.booleans()) and isinstance(pdu.get("content"), dict):
        pdu["content"][draw(st.sampled_from(["membership", "join_authorised_via_users_server",
                                             "third_party_invite", "redacts", "x"]))] = draw(json_values)
    if draw(st.booleans()):
        pdu["signatures"] = draw(st.dictionaries(
            st.sampled_from(["a.test", "b.test"]),
            json_values | st.dictionaries(st.sampled_from(["ed25519:dummy", "x"]), json_values, max_size=2),
            max_size=2))
    return pdu, version


CALLS: dict[str, Callable[[Any, RoomVersion], object]] = {
    "format": check_pdu_format,
    "event_id": compute_event_id,
    "event_id_float_free": lambda pdu, v: compute_event_id(pdu, v, float_free=True),
    "reference_hash": reference_hash,
    "content_hash": lambda pdu, v: content_hash(pdu),
    "content_hash_matches": lambda pdu, v: content_hash_matches(pdu),
    "redact": redact,
    "check_content_hash": check_content_hash,
    "required_signers": required_signers,
    "signatures": lambda pdu, v: verify_event_signatures(pdu, v, KEYS),
    "from_pdu": lambda pdu, v: Event.from_pdu(pdu, v, event_id="$x"),
    "from_pdu_computed_id": Event.from_pdu,
}


@pytest.mark.parametrize("name", sorted(CALLS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=malformed_pdus())
def test_only_event_errors_come_out(name: str, case: tuple[Any, RoomVersion]) -> None:
    pdu, version = case
    try:
        CALLS[name](pdu, version)
    except EventError:
        pass


@pytest.mark.parametrize("bad", [
    None, [], "pdu", 3,
    {"content": []}, {"content": "x", "type": "m.room.member"},
    {"type": "m.room.member", "content": {"membership": "join"}, "sender": 5},
    {"signatures": {"a.test": {"ed25519:dummy": 5}}, "sender": "@u:a.test"},
    {"signatures": {"a.test": {"ed25519:dummy": "!!!"}}, "sender": "@u:a.test"},
    {"signatures": {"a.test": {5: "abc"}}, "sender": "@u:a.test"},
    {"signatures": "x", "sender": "@u:a.test"},
    {"depth": "3", "prev_events": 5, "auth_events": {"a": 1}},
    {"depth": 1e400, "origin_server_ts": [1]},
    {"hashes": {"sha256": 5}}, {"hashes": []},
])
@pytest.mark.parametrize("name", sorted(CALLS))
def test_known_shapes(name: str, bad: Any) -> None:
    for version in EVERY_VERSION:
        try:
            CALLS[name](copy.deepcopy(bad), version)
        except EventError:
            pass


def test_a_valid_pdu_still_passes() -> None:
    for version in EVERY_VERSION:
        pdu = _valid(version)
        check_pdu_format(pdu, version)
        assert content_hash_matches(pdu)
        event = Event.from_pdu(pdu, version)
        assert event.event_id == compute_event_id(pdu, version)
        assert event.depth == 3 and event.prev_events == ("$p",)


@st.composite
def odd_rooms(draw: st.DrawFn) -> tuple[Any, Event]:
    """A standard room where one state event (create, power levels, join rules, a member)
    may hold anything in its content, and a new event of any type with any content."""
    version = draw(versions)
    room = standard_room(version, users={BOB: 50})
    room.set_member(BOB, "join")
    kind = draw(st.sampled_from(["m.room.power_levels", "m.room.join_rules", "m.room.member", None]))
    odd = draw(st.dictionaries(
        st.sampled_from(["users", "users_default", "events", "state_default", "ban", "kick", "invite",
                         "redact", "events_default", "join_rule", "allow", "membership", "notifications"]),
        plain_values, max_size=4))
    if kind == "m.room.member":
        room.add(room.make(kind, BOB, {"membership": "join", **odd}, BOB))
    elif kind is not None:
        room.add(room.make(kind, ALICE, odd, ""))
    event_type = draw(st.sampled_from(["m.room.member", "m.room.power_levels", "m.room.join_rules",
                                       "m.room.message", "m.room.third_party_invite", "m.room.create"]))
    content = draw(st.dictionaries(
        st.sampled_from(["membership", "users", "join_rule", "third_party_invite", "events", "ban",
                         "join_authorised_via_users_server", "room_version", "additional_creators", "body"]),
        plain_values, max_size=4))
    state_key = draw(st.sampled_from([None, "", BOB, CAROL]))
    sender = draw(st.sampled_from([ALICE, BOB, CAROL]))
    return room, room.make(event_type, sender, content, state_key)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=odd_rooms())
def test_auth_rules_on_odd_content_raise_only_auth_errors(case: tuple[Any, Event]) -> None:
    room, event = case
    try:
        check_auth_rules(event, room.state)
    except EventError:
        pass
