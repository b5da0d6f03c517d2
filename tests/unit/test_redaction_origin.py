"""Which redactions apply without the redact level, per room version
(``rooms/redactions.same_origin``): in rooms 1-2 auth rule 11's event-ID domains, from
room 3 the senders' servers."""

from __future__ import annotations

from typing import Any

import pytest

from homeserver.events.event import Event
from homeserver.events.versions import KNOWN_ROOM_VERSIONS, RoomVersion
from homeserver.rooms.redactions import same_origin

ORIGIN_IDS = [v for v in KNOWN_ROOM_VERSIONS.values() if v.origin_event_ids]
HASHED_IDS = [v for v in KNOWN_ROOM_VERSIONS.values() if not v.origin_event_ids]


def _event(version: RoomVersion, event_id: str, sender: str, type: str = "m.room.message",
           redacts: str | None = None) -> Event:
    pdu: dict[str, Any] = {
        "room_id": "!r:a.test", "sender": sender, "type": type, "content": {}, "depth": 2,
        "origin_server_ts": 1, "prev_events": [], "auth_events": [], "hashes": {}, "signatures": {},
    }
    if redacts is not None:
        if version.redacts_in_content:
            pdu["content"] = {"redacts": redacts}
        else:
            pdu["redacts"] = redacts
    if version.origin_event_ids:
        pdu["event_id"] = event_id
    return Event.from_pdu(pdu, version, event_id=event_id)


@pytest.mark.parametrize("version", ORIGIN_IDS, ids=lambda v: v.identifier)
def test_rooms_1_2_compare_the_event_ids_domains(version: RoomVersion) -> None:
    target = _event(version, "$t:a.test", "@alice:a.test")
    # A user of b.test whose redaction a.test named (and signed): same event-ID domain.
    by_id = _event(version, "$r:a.test", "@bob:b.test", "m.room.redaction", "$t:a.test")
    assert same_origin(by_id, target)
    # The target sender's server, but an event ID of another domain: not by origin.
    other_id = _event(version, "$r:b.test", "@alice2:a.test", "m.room.redaction", "$t:a.test")
    assert not same_origin(other_id, target)


@pytest.mark.parametrize("version", HASHED_IDS, ids=lambda v: v.identifier)
def test_rooms_3_on_compare_the_senders_servers(version: RoomVersion) -> None:
    target = _event(version, "$target", "@alice:a.test")
    assert same_origin(_event(version, "$r1", "@alice2:a.test", "m.room.redaction", "$target"), target)
    # Hash-based event IDs have no domain: two of them never "match" by ID.
    assert not same_origin(_event(version, "$r2", "@bob:b.test", "m.room.redaction", "$target"), target)
