"""Real events from Synapse as test vectors: IDs, hashes, signatures and the auth rules.

Fixtures: tests/fixtures/synapse-vectors/synapse-room-v{1..12}.json, made by running two
Synapse 1.163.2 servers on loopback (see the README next to them; v10-12 copied from the
project's shared reference material, v1-9 recorded by tools/record_synapse_vectors.py). Every
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
from homeserver.events.canonical import decode_b64, unpadded_b64
from homeserver.events.errors import SignatureError
from homeserver.events.event import Event, StateKey
from homeserver.events.format import check_pdu_format
from homeserver.events.hashes import (
    compute_event_id,
    content_hash_matches,
    reference_hash,
    room_id_for_create,
)
from homeserver.events.redaction import redact
from homeserver.events.signing import (
    HashCheck,
    VerifyKeys,
    check_content_hash,
    required_signers,
    verify_event_signatures,
)
from homeserver.events.versions import get_room_version

VECTORS = Path(__file__).resolve().parents[2] / "fixtures" / "synapse-vectors"
FILES = [VECTORS / f"synapse-room-v{v}.json" for v in range(1, 13)]

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


def test_event_id_format_per_version(room: dict[str, Any]) -> None:
    """v1/v2: the origin's ``$opaque:server``; v3: standard base64 (some with + or /);
    v4+: URL-safe base64."""
    version = get_room_version(room["room_version"])
    ids = [entry["event_id"] for entry in room["events"]]
    if version.origin_event_ids:
        assert all(":" in i and entry["pdu"]["event_id"] == i
                   for i, entry in zip(ids, room["events"], strict=True))
    else:
        assert all(":" not in i and len(i) == 44 for i in ids)
        assert all("event_id" not in entry["pdu"] for entry in room["events"])
        if version.identifier == "3":
            assert any("+" in i or "/" in i for i in ids)
        else:
            assert not any("+" in i or "/" in i for i in ids)


def test_v1_v2_reference_hashes_of_cited_events(room: dict[str, Any]) -> None:
    """Rooms 1-2 cite events as [id, {"sha256": reference hash}]: each hash given
    (Synapse sends {} for some) is the cited event's reference hash, bit for bit."""
    version = get_room_version(room["room_version"])
    if not version.origin_event_ids:
        return
    by_id = {entry["event_id"]: entry["pdu"] for entry in room["events"]}
    checked = 0
    for entry in room["events"]:
        for key in ("prev_events", "auth_events"):
            for cited, hashes in entry["pdu"][key]:
                if "sha256" in hashes and cited in by_id:
                    assert hashes["sha256"] == unpadded_b64(reference_hash(by_id[cited], version))
                    checked += 1
    assert checked > 10


def test_redacted_events_keep_ids_and_signatures(room: dict[str, Any]) -> None:
    """Every event redacted under its version's rules keeps its event ID (the reference
    hash covers the redacted form) and its signatures; the redacted message loses its body."""
    version = get_room_version(room["room_version"])
    keys = keys_of(room)
    for entry in room["events"]:
        pruned = redact(entry["pdu"], version)
        assert compute_event_id(pruned, version) == entry["event_id"]
        verify_event_signatures(pruned, version, keys)
    redactions = [e["pdu"] for e in room["events"] if e["pdu"]["type"] == "m.room.redaction"]
    assert redactions
    target = redactions[0]["content"].get("redacts") or redactions[0]["redacts"]
    message = next(e["pdu"] for e in room["events"] if e["event_id"] == target)
    assert message["content"] and redact(message, version)["content"] == {}


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
        servers |= required_signers(entry["pdu"], version)
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
