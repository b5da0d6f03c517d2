"""Event IDs, format checks, signers and redaction of each room version 1 to 12."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from signedjson.key import get_verify_key

from homeserver.events.canonical import unpadded_b64, urlsafe_unpadded_b64
from homeserver.events.errors import EventFormatError, SignatureError
from homeserver.events.event import Event
from homeserver.events.format import check_pdu_format
from homeserver.events.hashes import compute_event_id, event_reference, reference_hash
from homeserver.events.redaction import redact
from homeserver.events.signing import required_signers, sign_event, verify_event_signatures
from homeserver.events.versions import KNOWN_ROOM_VERSIONS, RoomVersion
from homeserver.rooms.builder import new_origin_event_id
from tests.unit.events.builders import ALICE, BOB, EVERY_VERSION, make_pdu, signing_key


def versions(where: Callable[[RoomVersion], bool]) -> pytest.MarkDecorator:
    chosen = [v for v in EVERY_VERSION if where(v)]
    return pytest.mark.parametrize("version", chosen, ids=lambda v: f"v{v.identifier}")


ALL = versions(lambda v: True)
ROOM = "!room:a.test"
ROOM_V12_ID = "!" + "A" * 43


def room_of(version: RoomVersion) -> str:
    return ROOM_V12_ID if version.room_id_is_create_hash else ROOM


def message(version: RoomVersion, **kwargs: Any) -> dict[str, Any]:
    return make_pdu(version, room_id=room_of(version), type="m.room.message", sender=ALICE,
                    content=kwargs.pop("content", {"body": "hi"}), **kwargs)


# -- event IDs ----------------------------------------------------------------------------

def test_every_version_is_known() -> None:
    assert list(KNOWN_ROOM_VERSIONS) == [str(n) for n in range(1, 13)]
    assert all(v.stable for v in EVERY_VERSION)


@versions(lambda v: v.origin_event_ids)
def test_v1_v2_event_id_is_the_origins(version: RoomVersion) -> None:
    pdu = message(version, extra={"event_id": "$abc:a.test"})
    assert compute_event_id(pdu, version) == "$abc:a.test"
    assert Event.from_pdu(pdu, version).event_id == "$abc:a.test"
    for bad in (None, "", "abc:a.test", "$nodomain", 5):
        broken = dict(pdu, event_id=bad)
        if bad is None:
            del broken["event_id"]
        with pytest.raises(EventFormatError):
            compute_event_id(broken, version)
        with pytest.raises(EventFormatError):
            check_pdu_format(broken, version)


@versions(lambda v: not v.origin_event_ids)
def test_event_id_is_the_reference_hash_from_v3(version: RoomVersion) -> None:
    # Find a message whose hash has characters where the two alphabets differ.
    for ts in range(1, 200):
        pdu = message(version, ts=ts)
        digest = reference_hash(pdu, version)
        if any(c in unpadded_b64(digest) for c in "+/"):
            break
    event_id = compute_event_id(pdu, version)
    if version.identifier == "3":
        assert event_id == "$" + unpadded_b64(digest)
        assert re.fullmatch(r"\$[A-Za-z0-9+/]{43}", event_id)
    else:
        assert event_id == "$" + urlsafe_unpadded_b64(digest)
        assert re.fullmatch(r"\$[A-Za-z0-9_-]{43}", event_id)
    # an event_id the PDU carries is not part of the hash
    assert compute_event_id(dict(pdu, event_id="$other:x.test"), version) == event_id


@versions(lambda v: v.origin_event_ids)
def test_v1_v2_reference_hash_covers_the_event_id(version: RoomVersion) -> None:
    pdu = message(version, extra={"event_id": "$abc:a.test"})
    other = dict(pdu, event_id="$abd:a.test")
    assert reference_hash(pdu, version) != reference_hash(other, version)
    assert event_reference(pdu, version) == [
        "$abc:a.test", {"sha256": unpadded_b64(reference_hash(pdu, version))}
    ]


def test_new_origin_event_ids() -> None:
    ids = {new_origin_event_id("a.test:8448") for _ in range(50)}
    assert len(ids) == 50
    assert all(re.fullmatch(r"\$[A-Za-z]{18}:a\.test:8448", i) for i in ids)


# -- prev_events / auth_events ------------------------------------------------------------

@versions(lambda v: v.origin_event_ids)
def test_v1_v2_references_are_pairs_exposed_as_ids(version: RoomVersion) -> None:
    pdu = message(version, prev_events=["$p:a.test"], auth_events=["$c:a.test", "$m:a.test"])
    assert pdu["prev_events"][0][0] == "$p:a.test" and isinstance(pdu["prev_events"][0][1], dict)
    check_pdu_format(pdu, version)
    event = Event.from_pdu(pdu, version)
    assert event.prev_events == ("$p:a.test",)
    assert event.auth_events == ("$c:a.test", "$m:a.test")
    # Synapse sends {} for some hashes: accepted
    check_pdu_format(dict(pdu, prev_events=[["$p:a.test", {}]]), version)
    for bad in (["$p:a.test"], [["$p:a.test"]], [["$p:a.test", "hash"]], [["p", {}]]):
        with pytest.raises(EventFormatError):
            check_pdu_format(dict(pdu, prev_events=bad), version)


@versions(lambda v: not v.origin_event_ids)
def test_pairs_refused_from_v3(version: RoomVersion) -> None:
    pdu = message(version, prev_events=["$p"])
    check_pdu_format(pdu, version)
    assert Event.from_pdu(pdu, version).prev_events == ("$p",)
    with pytest.raises(EventFormatError):
        check_pdu_format(dict(pdu, prev_events=[["$p", {"sha256": "x"}]]), version)


# -- canonical JSON (room 6+) -------------------------------------------------------------

@versions(lambda v: not v.strict_canonical_json)
def test_floats_and_big_integers_accepted_in_rooms_1_to_5(version: RoomVersion) -> None:
    check_pdu_format(message(version, content={"body": "x", "f": 1.5, "big": 2**60}), version)


@versions(lambda v: v.strict_canonical_json)
def test_floats_and_big_integers_refused_from_room_6(version: RoomVersion) -> None:
    for content in ({"body": "x", "f": 1.5}, {"body": "x", "big": 2**60}):
        with pytest.raises(EventFormatError):
            check_pdu_format(message(version, content=content), version)


# -- signers ------------------------------------------------------------------------------

@ALL
def test_required_signers(version: RoomVersion) -> None:
    pdu = message(version, extra={"event_id": "$abc:elsewhere.test"})
    expected = {"a.test", "elsewhere.test"} if version.origin_event_ids else {"a.test"}
    assert required_signers(pdu, version) == expected
    join = make_pdu(version, room_id=ROOM, type="m.room.member", sender=BOB, state_key=BOB,
                    content={"membership": "join", "join_authorised_via_users_server": ALICE})
    assert required_signers(join, version) == (
        {"b.test", "a.test"} if version.restricted_joins else {"b.test"}
    )


@versions(lambda v: v.origin_event_ids)
def test_v1_v2_event_id_servers_signature_is_required(version: RoomVersion) -> None:
    key = signing_key()
    pdu = message(version, extra={"event_id": "$abc:elsewhere.test"})
    pdu["signatures"] = {}
    signed = sign_event(pdu, version, "a.test", key)
    keys = {"a.test": {"ed25519:1": get_verify_key(key)},
            "elsewhere.test": {"ed25519:1": get_verify_key(key)}}
    with pytest.raises(SignatureError, match=r"not signed by elsewhere\.test"):
        verify_event_signatures(signed, version, keys)
    both = sign_event(signed, version, "elsewhere.test", key)
    verify_event_signatures(both, version, keys)


# -- redaction ----------------------------------------------------------------------------

def _redacted_content(version: RoomVersion, event_type: str, content: dict[str, Any],
                      state_key: str | None = "") -> dict[str, Any]:
    pdu = make_pdu(version, room_id=ROOM, type=event_type, sender=ALICE, content=content,
                   state_key=state_key)
    out: dict[str, Any] = redact(pdu, version)["content"]
    return out


@ALL
def test_aliases_kept_up_to_room_5(version: RoomVersion) -> None:
    kept = _redacted_content(version, "m.room.aliases", {"aliases": ["#a:a.test"], "x": 1},
                             "a.test")
    assert kept == ({"aliases": ["#a:a.test"]} if version.special_case_aliases_auth else {})


@ALL
def test_join_rules_allow_kept_from_room_8(version: RoomVersion) -> None:
    allow = [{"type": "m.room_membership", "room_id": "!r:a.test"}]
    kept = _redacted_content(version, "m.room.join_rules",
                             {"join_rule": "restricted", "allow": allow, "x": 1})
    expected: dict[str, Any] = {"join_rule": "restricted"}
    if int(version.identifier) >= 8:
        expected["allow"] = allow
    assert kept == expected


@ALL
def test_join_authorised_via_kept_from_room_9(version: RoomVersion) -> None:
    kept = _redacted_content(version, "m.room.member",
                             {"membership": "join", "join_authorised_via_users_server": BOB,
                              "displayname": "x"}, ALICE)
    expected: dict[str, Any] = {"membership": "join"}
    if int(version.identifier) >= 9:
        expected["join_authorised_via_users_server"] = BOB
    assert kept == expected


@ALL
def test_power_levels_invite_kept_from_room_11(version: RoomVersion) -> None:
    kept = _redacted_content(version, "m.room.power_levels",
                             {"ban": 50, "invite": 0, "notifications": {"room": 50}})
    assert kept == ({"ban": 50, "invite": 0} if int(version.identifier) >= 11 else {"ban": 50})


@ALL
def test_create_content_kept_whole_from_room_11(version: RoomVersion) -> None:
    content = {"creator": ALICE, "room_version": version.identifier, "m.federate": True}
    kept = _redacted_content(version, "m.room.create", content)
    assert kept == (content if int(version.identifier) >= 11 else {"creator": ALICE})


@ALL
def test_top_level_origin_membership_prev_state_kept_up_to_room_10(version: RoomVersion) -> None:
    pdu = message(version, extra={"origin": "a.test", "membership": "join", "prev_state": [],
                                  "other": 1})
    out = redact(pdu, version)
    old = int(version.identifier) <= 10
    assert ("origin" in out, "membership" in out, "prev_state" in out) == (old, old, old)
    assert "other" not in out
    assert ("event_id" in out) == version.origin_event_ids


@ALL
def test_redaction_redacts_kept_in_content_from_room_11(version: RoomVersion) -> None:
    kept = _redacted_content(version, "m.room.redaction", {"redacts": "$x", "reason": "r"},
                             None)
    assert kept == ({"redacts": "$x"} if int(version.identifier) >= 11 else {})
