"""Content hashes, reference hashes, event IDs (per room version) and (v12) room IDs.

Spec: server-server-api.md "Calculating the content hash for an event" and
"Calculating the reference hash for an event"; rooms/fragments/v1-event-ids.md, v4-event-ids.md.
"""

from __future__ import annotations

import hashlib
from typing import Any

from homeserver.events.canonical import (
    canonical_json,
    canonical_json_float_free,
    unpadded_b64,
    urlsafe_unpadded_b64,
)
from homeserver.events.errors import EventFormatError
from homeserver.events.identifiers import is_valid_event_id
from homeserver.events.redaction import redact
from homeserver.events.versions import EventIdFormat, RoomVersion


def content_hash(pdu: dict[str, Any]) -> bytes:
    """SHA-256 of the event's canonical JSON without ``unsigned``, ``signatures``, ``hashes``."""
    if not isinstance(pdu, dict):
        raise EventFormatError("a PDU must be a JSON object")
    stripped = {k: v for k, v in pdu.items() if k not in ("unsigned", "signatures", "hashes")}
    return hashlib.sha256(canonical_json(stripped)).digest()


def add_content_hash(pdu: dict[str, Any]) -> dict[str, Any]:
    """Return ``pdu`` with ``hashes.sha256`` set to its content hash."""
    out = dict(pdu)
    out["hashes"] = {"sha256": unpadded_b64(content_hash(pdu))}
    return out


def content_hash_matches(pdu: dict[str, Any]) -> bool:
    if not isinstance(pdu, dict):
        raise EventFormatError("a PDU must be a JSON object")
    hashes = pdu.get("hashes")
    if not isinstance(hashes, dict):
        return False
    claimed = hashes.get("sha256")
    return isinstance(claimed, str) and claimed == unpadded_b64(content_hash(pdu))


def reference_hash(pdu: dict[str, Any], version: RoomVersion, *, float_free: bool = False) -> bytes:
    """SHA-256 of the redacted event without ``signatures``, ``unsigned`` and ``age_ts``,
    and from room 3 without ``event_id`` (in rooms 1-2 the origin's event ID is covered).
    ``float_free``: the caller knows the PDU holds no float (a faster encoder is used)."""
    redacted = redact(pdu, version)
    for key in ("signatures", "unsigned", "age_ts"):
        redacted.pop(key, None)
    if not version.origin_event_ids:
        redacted.pop("event_id", None)
    encoded = canonical_json_float_free(redacted) if float_free else canonical_json(redacted)
    return hashlib.sha256(encoded).digest()


def compute_event_id(pdu: dict[str, Any], version: RoomVersion, *, float_free: bool = False) -> str:
    """The event ID of ``pdu`` in a room of ``version``, the one way every caller gets it:

    - rooms 1 and 2: the ``event_id`` the origin chose, carried in the PDU (EventFormatError
      if it has none);
    - room 3: ``$`` + standard unpadded base64 of the reference hash;
    - rooms 4 and later: ``$`` + URL-safe unpadded base64 of the reference hash.
    """
    fmt = version.event_id_format
    if fmt is EventIdFormat.ORIGIN:
        if not isinstance(pdu, dict):
            raise EventFormatError("a PDU must be a JSON object")
        event_id = pdu.get("event_id")
        if not isinstance(event_id, str) or not is_valid_event_id(event_id) or ":" not in event_id:
            raise EventFormatError("a room version 1 or 2 event needs an event_id '$id:server'")
        return event_id
    digest = reference_hash(pdu, version, float_free=float_free)
    if fmt is EventIdFormat.REFERENCE_B64:
        return "$" + unpadded_b64(digest)
    return "$" + urlsafe_unpadded_b64(digest)


def event_reference(pdu: dict[str, Any], version: RoomVersion) -> list[Any]:
    """How rooms 1 and 2 cite an event in ``prev_events``/``auth_events``:
    ``[event_id, {"sha256": reference hash}]``."""
    return [compute_event_id(pdu, version), {"sha256": unpadded_b64(reference_hash(pdu, version))}]


def room_id_for_create(create_pdu: dict[str, Any], version: RoomVersion) -> str:
    """The room ID a v12 create event defines: its event ID with the sigil ``!``."""
    return "!" + compute_event_id(create_pdu, version)[1:]
