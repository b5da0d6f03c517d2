"""PDU format checks and identifier validators."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from homeserver.events.errors import EventFormatError
from homeserver.events.format import check_pdu_format
from homeserver.events.identifiers import (
    is_valid_event_id,
    is_valid_room_id,
    is_valid_server_name,
    is_valid_user_id,
    server_name_of,
)
from homeserver.events.versions import ROOM_V10, ROOM_V11, ROOM_V12, RoomVersion
from tests.unit.events.builders import ALL_VERSIONS, Room

V12_ROOM = "!" + "A" * 43


def message(version: RoomVersion) -> dict[str, Any]:
    return {
        "room_id": V12_ROOM if version.room_id_is_create_hash else "!r:a.test",
        "sender": "@u:a.test",
        "type": "m.room.message",
        "content": {"body": "hi"},
        "prev_events": ["$p"],
        "auth_events": ["$a", "$b"],
        "depth": 5,
        "origin_server_ts": 1,
        "hashes": {"sha256": "x"},
        "signatures": {"a.test": {"ed25519:1": "sig"}},
    }


@pytest.fixture(params=ALL_VERSIONS, ids=lambda v: f"v{v.identifier}")
def version(request: pytest.FixtureRequest) -> RoomVersion:
    v: RoomVersion = request.param
    return v


def test_valid_message_passes(version: RoomVersion) -> None:
    check_pdu_format(message(version), version)


def test_builder_events_pass(version: RoomVersion) -> None:
    room = Room(version)
    room.set_member("@alice:a.test", "join")
    for event in room.events:
        check_pdu_format(event.pdu, version)


REQUIRED = ["auth_events", "content", "depth", "hashes", "origin_server_ts", "prev_events",
            "room_id", "sender", "signatures", "type"]


@pytest.mark.parametrize("key", REQUIRED)
def test_missing_required_key(version: RoomVersion, key: str) -> None:
    pdu = message(version)
    del pdu[key]
    with pytest.raises(EventFormatError, match=key):
        check_pdu_format(pdu, version)


BAD_VALUES: list[tuple[str, Any]] = [
    ("auth_events", "$a"),
    ("auth_events", [1]),
    ("auth_events", ["no-sigil"]),
    ("prev_events", {"$p": 1}),
    ("prev_events", ["$" + "x" * 255]),
    ("content", []),
    ("depth", -1),
    ("depth", "5"),
    ("depth", True),
    ("depth", 2**53),
    ("origin_server_ts", -5),
    ("origin_server_ts", 1.5),
    ("hashes", {"sha256": 1}),
    ("hashes", {}),
    ("signatures", {"a.test": "sig"}),
    ("signatures", []),
    ("sender", "u:a.test"),
    ("sender", "@u"),
    ("sender", "@u:bad_domain!"),
    ("sender", "@" + "u" * 250 + ":a.test"),
    ("type", 5),
    ("type", "t" * 256),
    ("state_key", 5),
    ("state_key", "s" * 256),
    ("unsigned", []),
    ("event_id", "nosigil"),
    ("room_id", 5),
    ("room_id", "no-sigil"),
]


@pytest.mark.parametrize(("key", "value"), BAD_VALUES, ids=lambda x: str(x)[:20])
def test_bad_values(version: RoomVersion, key: str, value: Any) -> None:
    pdu = message(version)
    pdu[key] = value
    with pytest.raises(EventFormatError):
        check_pdu_format(pdu, version)


def test_255_byte_limits_count_bytes(version: RoomVersion) -> None:
    pdu = message(version)
    pdu["state_key"] = "s" * 255
    pdu["type"] = "t" * 255
    check_pdu_format(pdu, version)
    pdu["state_key"] = "é" * 128  # 256 bytes, 128 characters
    with pytest.raises(EventFormatError, match="state_key"):
        check_pdu_format(pdu, version)


def test_float_anywhere_is_rejected(version: RoomVersion) -> None:
    pdu = message(version)
    pdu["content"] = {"nested": [{"x": 1.0}]}
    with pytest.raises(EventFormatError, match="float"):
        check_pdu_format(pdu, version)


def test_integer_out_of_canonical_range(version: RoomVersion) -> None:
    pdu = message(version)
    pdu["content"] = {"n": -(2**53)}
    with pytest.raises(EventFormatError, match="range"):
        check_pdu_format(pdu, version)
    pdu["content"] = {"n": -(2**53) + 1}
    check_pdu_format(pdu, version)


def test_size_limit_65536(version: RoomVersion) -> None:
    pdu = message(version)
    pdu["content"] = {"body": ""}
    base = len(__import__("canonicaljson").encode_canonical_json(pdu))
    pdu["content"]["body"] = "x" * (65536 - base)
    check_pdu_format(pdu, version)  # exactly 65536 bytes
    pdu["content"]["body"] += "x"
    with pytest.raises(EventFormatError, match="65536"):
        check_pdu_format(pdu, version)


def test_historical_sender_localparts_are_accepted(version: RoomVersion) -> None:
    pdu = message(version)
    pdu["sender"] = "@Old User!:a.test"
    check_pdu_format(pdu, version)


@pytest.mark.parametrize("version", [ROOM_V10, ROOM_V11], ids=["v10", "v11"])
def test_pre_v12_room_id_needs_domain(version: RoomVersion) -> None:
    pdu = message(version)
    pdu["room_id"] = V12_ROOM
    with pytest.raises(EventFormatError, match="room_id"):
        check_pdu_format(pdu, version)


def test_v12_room_id_is_a_hash() -> None:
    pdu = message(ROOM_V12)
    pdu["room_id"] = "!r:a.test"
    with pytest.raises(EventFormatError, match="room_id"):
        check_pdu_format(pdu, ROOM_V12)


def _create(version: RoomVersion, **content: Any) -> dict[str, Any]:
    pdu = message(version)
    pdu.update(type="m.room.create", state_key="", prev_events=[], auth_events=[],
               content={"room_version": version.identifier, **content})
    if version.room_id_is_create_hash:
        del pdu["room_id"]
    return pdu


def test_v12_create_must_not_have_room_id() -> None:
    check_pdu_format(_create(ROOM_V12), ROOM_V12)
    pdu = _create(ROOM_V12)
    pdu["room_id"] = V12_ROOM
    with pytest.raises(EventFormatError, match="must not have a room_id"):
        check_pdu_format(pdu, ROOM_V12)


@pytest.mark.parametrize("version", [ROOM_V10, ROOM_V11], ids=["v10", "v11"])
def test_pre_v12_create_needs_room_id(version: RoomVersion) -> None:
    pdu = _create(version)
    check_pdu_format(pdu, version)
    del pdu["room_id"]
    with pytest.raises(EventFormatError, match="room_id"):
        check_pdu_format(pdu, version)


def test_v11_create_without_creator_is_well_formed() -> None:
    check_pdu_format(_create(ROOM_V11), ROOM_V11)


@pytest.mark.parametrize(
    "creators",
    [["@b:b.test"], [], ["@b:b.test", "@c:c.test:8448"]],
)
def test_v12_additional_creators_valid(creators: list[str]) -> None:
    check_pdu_format(_create(ROOM_V12, additional_creators=creators), ROOM_V12)


@pytest.mark.parametrize(
    "creators",
    ["@b:b.test", [1], ["b:b.test"], ["@b"], [None]],
    ids=["not-array", "int", "no-sigil", "no-domain", "null"],
)
def test_v12_additional_creators_invalid(creators: Any) -> None:
    with pytest.raises(EventFormatError, match="additional_creators"):
        check_pdu_format(_create(ROOM_V12, additional_creators=creators), ROOM_V12)


def test_input_not_mutated() -> None:
    pdu = message(ROOM_V11)
    before = copy.deepcopy(pdu)
    check_pdu_format(pdu, ROOM_V11)
    assert pdu == before


# -- identifiers -----------------------------------------------------------------------

@pytest.mark.parametrize(
    "name",
    ["matrix.org", "matrix.org:8888", "1.2.3.4", "1.2.3.4:1234", "[1234:5678::abcd]",
     "[1234:5678::abcd]:5678", "localhost", "localhost:18448", "a-b.example", "[::1]",
     "x:1", "x:65535", "EXAMPLE.com"],
)
def test_valid_server_names(name: str) -> None:
    assert is_valid_server_name(name)


@pytest.mark.parametrize(
    "name",
    ["", "matrix.org:", "matrix.org:0", "matrix.org:65536", "matrix.org:123456",
     "matrix.org:80a", "1.2.3.256", "[1234:5678::abcd", "1234:5678::abcd", "[zz::1]",
     "[::1]x", "[::1]:", "bad_host", "a..b", "a.", ".a", "host name", "ünïcode.test",
     "[1:2:3:4:5:6:7:8:9]", "[fe80::1%eth0]", "h" * 256],
)
def test_invalid_server_names(name: str) -> None:
    assert not is_valid_server_name(name)


def test_user_ids() -> None:
    assert is_valid_user_id("@alice:example.org")
    assert is_valid_user_id("@alice:example.org:8448")
    assert is_valid_user_id("@a.b_c=d-e/f+g:[::1]:80", strict=True)
    assert is_valid_user_id("@Alice:example.org")  # historical: accepted in events
    assert not is_valid_user_id("@Alice:example.org", strict=True)
    assert not is_valid_user_id("@:example.org", strict=True)
    assert not is_valid_user_id("@a\x00b:example.org")
    assert not is_valid_user_id("alice:example.org")
    assert not is_valid_user_id("@alice")
    assert not is_valid_user_id("@alice:bad host")
    assert not is_valid_user_id(5)
    assert is_valid_user_id("@" + "a" * 242 + ":example.org")  # 255 bytes
    assert not is_valid_user_id("@" + "a" * 243 + ":example.org")


def test_server_name_of() -> None:
    assert server_name_of("@alice:example.org:8448") == "example.org:8448"
    assert server_name_of("!room:a.test") == "a.test"
    assert server_name_of("@nodomain") == ""


def test_room_and_event_ids() -> None:
    assert is_valid_room_id("!abc:a.test", hash_format=False)
    assert not is_valid_room_id("!abc", hash_format=False)
    assert is_valid_room_id(V12_ROOM, hash_format=True)
    assert not is_valid_room_id(V12_ROOM + "A", hash_format=True)
    assert is_valid_event_id("$abc")
    assert not is_valid_event_id("$")
    assert not is_valid_event_id("abc")
