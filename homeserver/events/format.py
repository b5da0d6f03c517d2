"""Event format checks: is this JSON a well-formed PDU for its room version?

The first check on receipt of a PDU (server-server-api "Checks performed on receipt of a
PDU", step 1): an event failing it is dropped, never stored. Pure and cheap.
"""

from __future__ import annotations

from typing import Any

from homeserver.events.canonical import canonical_json, check_canonical_values
from homeserver.events.errors import EventFormatError
from homeserver.events.identifiers import (
    MAX_ID_BYTES,
    is_valid_event_id,
    is_valid_room_id,
    is_valid_user_id,
)
from homeserver.events.versions import RoomVersion

MAX_PDU_BYTES = 65536

_REQUIRED: tuple[tuple[str, type | tuple[type, ...]], ...] = (
    ("auth_events", list),
    ("content", dict),
    ("depth", int),
    ("hashes", dict),
    ("origin_server_ts", int),
    ("prev_events", list),
    ("sender", str),
    ("signatures", dict),
    ("type", str),
)


def _byte_len(value: str) -> int:
    return len(value.encode("utf-8", "surrogatepass"))


def _check_event_id_list(pdu: dict[str, Any], key: str, version: RoomVersion) -> None:
    """A list of event IDs; in rooms 1 and 2 of ``[event_id, {"sha256": hash}]`` pairs."""
    for item in pdu[key]:
        if version.origin_event_ids:
            if not (
                isinstance(item, list)
                and len(item) == 2
                and is_valid_event_id(item[0])
                and isinstance(item[1], dict)
            ):
                raise EventFormatError(f"{key} must be a list of [event_id, hashes] pairs")
        elif not is_valid_event_id(item):
            raise EventFormatError(f"{key} must be a list of event IDs, got {item!r}")


def _check_no_nul(pdu: dict[str, Any]) -> None:
    """No NUL character in what is stored outside the event's JSON (IDs, type, state key,
    membership, redacted event; PostgreSQL's text cannot hold one): any string of the PDU
    but those of ``content`` and ``unsigned``, and ``content.membership`` and
    ``content.redacts``."""
    content = pdu.get("content")
    stack: list[Any] = [v for k, v in pdu.items() if k not in ("content", "unsigned")]
    if isinstance(content, dict):
        stack.extend(content[k] for k in ("membership", "redacts") if k in content)
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise EventFormatError("a NUL character outside the content")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def check_additional_creators(content: dict[str, Any]) -> None:
    """Room v12: ``additional_creators``, if present, is an array of valid user IDs."""
    if "additional_creators" not in content:
        return
    creators = content["additional_creators"]
    if not isinstance(creators, list):
        raise EventFormatError("additional_creators must be an array")
    for user_id in creators:
        if not is_valid_user_id(user_id):
            raise EventFormatError(f"additional_creators holds an invalid user ID: {user_id!r}")


def check_pdu_format(pdu: dict[str, Any], version: RoomVersion) -> None:
    """Raise EventFormatError unless ``pdu`` is a well-formed PDU for ``version``."""
    if not isinstance(pdu, dict):
        raise EventFormatError("a PDU must be a JSON object")
    # Canonical JSON (room 6 and later): no floats, integers within [-(2**53)+1, 2**53-1].
    if version.strict_canonical_json:
        check_canonical_values(pdu)

    for key, kind in _REQUIRED:
        if key not in pdu:
            raise EventFormatError(f"missing required key {key!r}")
        value = pdu[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise EventFormatError(f"{key!r} has the wrong type")

    event_type: str = pdu["type"]
    is_create = event_type == "m.room.create" and pdu.get("state_key") == ""

    # room_id: required, except on v12 create events, which must not carry one.
    if version.room_id_is_create_hash and is_create:
        if "room_id" in pdu:
            raise EventFormatError("a room version 12 create event must not have a room_id")
    elif "room_id" not in pdu:
        raise EventFormatError("missing required key 'room_id'")
    elif not is_valid_room_id(pdu["room_id"], hash_format=version.room_id_is_create_hash):
        raise EventFormatError(f"invalid room_id {pdu['room_id']!r}")

    if pdu["depth"] < 0:
        raise EventFormatError("depth must be non-negative")
    if pdu["origin_server_ts"] < 0:
        raise EventFormatError("origin_server_ts must be non-negative")

    sender: str = pdu["sender"]
    if not is_valid_user_id(sender):
        raise EventFormatError(f"invalid sender {sender!r}")
    if _byte_len(event_type) > MAX_ID_BYTES:
        raise EventFormatError("type is longer than 255 bytes")

    if "state_key" in pdu:
        state_key = pdu["state_key"]
        if not isinstance(state_key, str):
            raise EventFormatError("state_key must be a string")
        if _byte_len(state_key) > MAX_ID_BYTES:
            raise EventFormatError("state_key is longer than 255 bytes")
    _check_no_nul(pdu)
    if "unsigned" in pdu and not isinstance(pdu["unsigned"], dict):
        raise EventFormatError("unsigned must be an object")
    if "event_id" in pdu and not is_valid_event_id(pdu["event_id"]):
        raise EventFormatError("event_id must be an event ID of at most 255 bytes")
    if version.origin_event_ids and ":" not in pdu.get("event_id", ""):
        raise EventFormatError("a room version 1 or 2 event needs an event_id '$id:server'")

    _check_event_id_list(pdu, "prev_events", version)
    _check_event_id_list(pdu, "auth_events", version)

    hashes: dict[str, Any] = pdu["hashes"]
    if not isinstance(hashes.get("sha256"), str):
        raise EventFormatError("hashes.sha256 must be a string")
    for server, sigs in pdu["signatures"].items():
        if not isinstance(sigs, dict) or not all(isinstance(s, str) for s in sigs.values()):
            raise EventFormatError(f"signatures of {server!r} must map key IDs to strings")

    if is_create and version.creators_have_infinite_power:
        check_additional_creators(pdu["content"])

    if len(canonical_json(pdu)) > MAX_PDU_BYTES:
        raise EventFormatError("PDU is larger than 65536 bytes")
