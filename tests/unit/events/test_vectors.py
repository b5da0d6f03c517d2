"""Real events from Synapse as test vectors: IDs, hashes, signatures and the auth rules.

Fixtures: tests/fixtures/synapse-vectors/synapse-room-v{10,11,12}.json (copied from the
project's shared reference material), made by
running two Synapse 1.163.2 servers on loopback (see the README next to them). Every
event there was accepted by Synapse, so each must pass our auth rules in order.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from signedjson.key import decode_verify_key_bytes

from homeserver.events.auth import check_auth_events_shape, check_auth_rules
from homeserver.events.canonical import decode_b64
from homeserver.events.errors import SignatureError
from homeserver.events.event import Event, StateKey
from homeserver.events.format import check_pdu_format
from homeserver.events.hashes import compute_event_id, content_hash_matches, room_id_for_create
from homeserver.events.signing import (
    HashCheck,
    VerifyKeys,
    check_content_hash,
    required_signers,
    verify_event_signatures,
)
from homeserver.events.versions import get_room_version

VECTORS = Path(__file__).resolve().parents[2] / "fixtures" / "synapse-vectors"
FILES = [VECTORS / f"synapse-room-v{v}.json" for v in (10, 11, 12)]

pytestmark = pytest.mark.skipif(not VECTORS.is_dir(), reason="synapse vectors not present")


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def keys_of(data: dict[str, Any]) -> VerifyKeys:
    out: dict[str, dict[str, Any]] = {}
    for server, doc in data["server_keys"].items():
        for key_id, entry in doc["verify_keys"].items():
            out.setdefault(server, {})[key_id] = decode_verify_key_bytes(
                key_id, decode_b64(entry["key"])
            )
    return out


@pytest.fixture(params=FILES, ids=lambda p: p.stem)
def room(request: pytest.FixtureRequest) -> dict[str, Any]:
    return load(request.param)


def test_event_ids_and_content_hashes(room: dict[str, Any]) -> None:
    version = get_room_version(room["room_version"])
    for entry in room["events"]:
        pdu = entry["pdu"]
        check_pdu_format(pdu, version)
        assert compute_event_id(pdu, version) == entry["event_id"]
        assert content_hash_matches(pdu), entry["event_id"]
        assert check_content_hash(pdu, version) == (HashCheck.MATCH, pdu)


def test_room_id_is_create_hash_in_v12() -> None:
    data = load(VECTORS / "synapse-room-v12.json")
    version = get_room_version("12")
    create = data["events"][0]["pdu"]
    assert "room_id" not in create
    assert room_id_for_create(create, version) == data["room_id"]
    for entry in data["events"][1:]:
        assert entry["pdu"]["room_id"] == data["room_id"]


def test_signatures_verify(room: dict[str, Any]) -> None:
    version = get_room_version(room["room_version"])
    keys = keys_of(room)
    servers = set()
    for entry in room["events"]:
        verify_event_signatures(entry["pdu"], version, keys)
        servers |= required_signers(entry["pdu"])
    assert servers == set(room["server_keys"])  # both servers' events were checked


def test_tampered_vector_fails_signature(room: dict[str, Any]) -> None:
    version = get_room_version(room["room_version"])
    pdu = copy.deepcopy(room["events"][1]["pdu"])
    pdu["origin_server_ts"] += 1
    with pytest.raises(SignatureError):
        verify_event_signatures(pdu, version, keys_of(room))


def test_replay_through_auth_rules(room: dict[str, Any]) -> None:
    version = get_room_version(room["room_version"])
    state: dict[StateKey, Event] = {}
    by_id: dict[str, Event] = {}
    for entry in room["events"]:
        event = Event.from_pdu(entry["pdu"], version)
        assert event.event_id == entry["event_id"]
        # against the event's own auth events
        auth_events = [by_id[e] for e in event.auth_events]
        check_auth_events_shape(event, auth_events)
        auth_state = {a.state_tuple: a for a in auth_events}
        if version.create_event_implied_in_auth and by_id:
            create = state[("m.room.create", "")]
            auth_state[create.state_tuple] = create
        check_auth_rules(event, auth_state)
        # against the room state before it
        check_auth_rules(event, state)
        by_id[event.event_id] = event
        if event.is_state:
            state[event.state_tuple] = event
    assert len(by_id) == len(room["events"])
