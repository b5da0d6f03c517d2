"""Redaction shares deep values with its input (for speed) but never changes the input:
signing, hashing and checking an event leave the PDU they were given as it was."""

from __future__ import annotations

import copy

from homeserver.events.hashes import compute_event_id
from homeserver.events.redaction import redact
from homeserver.events.signing import check_content_hash, sign_event
from homeserver.events.versions import KNOWN_ROOM_VERSIONS
from tests.unit.events.builders import ALICE, signing_key, standard_room


def test_signing_and_hashing_leave_the_input_unchanged() -> None:
    version = KNOWN_ROOM_VERSIONS["12"]
    room = standard_room(version)
    pdu = room.make("m.room.member", ALICE, {"membership": "join", "displayname": "A"}, ALICE).pdu
    before = copy.deepcopy(pdu)
    signed = sign_event(pdu, version, "a.test", signing_key())
    compute_event_id(signed, version)
    check_content_hash(signed, version)
    assert pdu == before
    redacted = redact(signed, version)
    redacted["content"]["membership"] = "leave"
    redacted.pop("signatures")
    assert signed["content"]["membership"] == "join" and "signatures" in signed
    assert redacted["content"] is not signed["content"]
