"""Events holding floats, hashed, signed and named by Synapse (rooms 1, 3, 5 and 10).

Fixture: tests/fixtures/synapse-vectors/floats.json, recorded by
``tools/record_float_vectors.py`` run in the interop suite's Synapse 1.163.2 virtualenv
(Synapse's ``add_hashes_and_signatures`` and event classes, canonicaljson 2.0.0). Synapse
keeps a float a float, ``1e3`` included, and its canonical JSON writes ``1.0`` and
``1000.0``: in rooms 1-5, where floats are allowed, the PDU must be parsed keeping them
(``loads_exact``) for the content hash, the signatures and (rooms 3-5) the event ID to
match. From room 6 any float is refused by the format check, as Synapse refuses it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from signedjson.key import decode_verify_key_bytes

from homeserver.events.canonical import (
    canonical_json,
    decode_b64,
    integral_floats_to_ints,
    loads,
    loads_exact,
    loads_exact_noting_floats,
    unpadded_b64,
)
from homeserver.events.errors import EventFormatError, SignatureError
from homeserver.events.format import check_pdu_format
from homeserver.events.hashes import compute_event_id, content_hash, reference_hash
from homeserver.events.signing import HashCheck, check_content_hash, verify_event_signatures
from homeserver.events.versions import get_room_version

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "synapse-vectors" / "floats.json"
DATA: dict[str, Any] = json.loads(FIXTURE.read_text(encoding="utf-8"))
EVENTS = DATA["events"]
ALLOWED = [e for e in EVENTS if int(e["room_version"]) <= 5]
STRICT = [e for e in EVENTS if int(e["room_version"]) >= 6]


def _id(entry: dict[str, Any]) -> str:
    return f"v{entry['room_version']}-{json.loads(entry['pdu_text'])['type']}"


def _keys() -> dict[str, dict[str, Any]]:
    key = decode_verify_key_bytes(DATA["key_id"], decode_b64(DATA["verify_key"]))
    return {DATA["server_name"]: {DATA["key_id"]: key}}


def test_the_fixture_holds_integral_floats() -> None:
    message = json.loads(EVENTS[0]["pdu_text"])["content"]
    assert message["org.example.one"] == 1.0 and isinstance(message["org.example.one"], float)
    assert '"org.example.thousand":1000.0' in EVENTS[0]["pdu_text"]  # Synapse's 1e3
    assert {e["room_version"] for e in EVENTS} == {"1", "3", "5", "10"}


@pytest.mark.parametrize("entry", ALLOWED, ids=_id)
def test_rooms_1_to_5_reproduce_synapse_exactly(entry: dict[str, Any]) -> None:
    version = get_room_version(entry["room_version"])
    pdu = loads_exact(entry["pdu_text"])
    check_pdu_format(pdu, version)
    hashed = {k: v for k, v in pdu.items() if k not in ("unsigned", "signatures", "hashes")}
    assert canonical_json(hashed).decode() == entry["hashed_canonical_json"]
    assert unpadded_b64(content_hash(pdu)) == entry["content_hash"]
    assert check_content_hash(pdu, version)[0] is HashCheck.MATCH
    assert unpadded_b64(reference_hash(pdu, version)) == entry["reference_hash"]
    assert compute_event_id(pdu, version) == entry["event_id"]
    verify_event_signatures(pdu, version, _keys())


@pytest.mark.parametrize("entry", ALLOWED, ids=_id)
def test_the_exponent_form_parses_to_the_same_event(entry: dict[str, Any]) -> None:
    # Another sender may write Synapse's 1000.0 as 1e3, or 1.0 as 1.00: the same float.
    version = get_room_version(entry["room_version"])
    text = entry["pdu_text"].replace("1000.0", "1e3").replace(":1.0,", ":1.00,")
    assert text != entry["pdu_text"]
    assert compute_event_id(loads_exact(text), version) == entry["event_id"]
    assert check_content_hash(loads_exact(text), version)[0] is HashCheck.MATCH


@pytest.mark.parametrize("entry", ALLOWED, ids=_id)
def test_integral_floats_made_integers_break_the_hash(entry: dict[str, Any]) -> None:
    # Why PDUs are not parsed with ``loads``: the content hash no longer matches (the event
    # would be used redacted), and when the redacted form holds the floats (power levels)
    # the signature fails and, from room 3, the event ID changes.
    version = get_room_version(entry["room_version"])
    pdu = loads(entry["pdu_text"])
    assert check_content_hash(pdu, version)[0] is HashCheck.MISMATCH
    if pdu["type"] == "m.room.power_levels":
        with pytest.raises(SignatureError):
            verify_event_signatures(pdu, version, _keys())
        if entry["room_version"] != "1":
            assert compute_event_id(pdu, version) != entry["event_id"]


@pytest.mark.parametrize("entry", STRICT, ids=_id)
def test_floats_are_refused_from_room_6(entry: dict[str, Any]) -> None:
    with pytest.raises(EventFormatError, match="float"):
        check_pdu_format(loads_exact(entry["pdu_text"]), get_room_version(entry["room_version"]))


@pytest.mark.parametrize(("text", "floats"), [
    ('{"a": 1, "b": "1.0"}', False),
    ('{"a": 1.0}', True),
    ('{"a": [1e3, -0.0]}', True),
])
def test_loads_exact_keeps_floats(text: str, floats: bool) -> None:
    value, seen = loads_exact_noting_floats(text)
    assert seen is floats
    assert value == loads_exact(text)
    assert canonical_json(value) == canonical_json(json.loads(text))
    assert integral_floats_to_ints(value) == loads(text)
    assert canonical_json(integral_floats_to_ints(value)) == canonical_json(loads(text))


def test_loads_exact_refuses_nan() -> None:
    with pytest.raises(ValueError):
        loads_exact('{"a": NaN}')


def test_integral_floats_to_ints_keeps_shape_at_any_depth() -> None:
    value = loads_exact('{"a": [1.0, {"b": 2.5, "c": [3e0, true, null, "4.0"]}], "d": -0.0}')
    assert integral_floats_to_ints(value) == {"a": [1, {"b": 2.5, "c": [3, True, None, "4.0"]}], "d": 0}
    assert [type(x) for x in integral_floats_to_ints(value)["a"][1]["c"]] == [int, bool, type(None), str]
    nested: list[Any] = [1.0]
    for _ in range(20000):
        nested = [nested]
    out = integral_floats_to_ints(nested)
    for _ in range(20000):
        out = out[0]
    assert out == [1] and isinstance(out[0], int)
