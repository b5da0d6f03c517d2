"""Record how Synapse hashes, signs and names an event holding floats:
``tests/fixtures/synapse-vectors/floats.json``.

Run with the Python of the interop suite's cached Synapse virtualenv (it imports Synapse):

    ~/.cache/homeserver-interop/synapse-1.163.2/bin/python tools/record_float_vectors.py

For room versions 1, 3 and 5 (floats allowed) and 10 (floats refused by canonical JSON),
one ``m.room.message`` whose content holds ``1.0``, ``1e3`` (a float: Synapse keeps it,
and its canonical JSON writes ``1000.0``), ``0.5`` and ``-0.0``, and one
``m.room.power_levels`` with float levels (which the redacted form, hence the signature,
covers) are hashed and signed with
Synapse's own ``add_hashes_and_signatures`` under a fixed key, and its event ID computed
by Synapse's event classes. Stored per version: the PDU as Synapse's JSON encoder sends
it (text), Synapse's event ID, content hash and reference hash, the canonical JSON it
hashed, and the key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from pathlib import Path

import canonicaljson
import signedjson.key
import synapse
from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
from synapse.crypto.event_signing import (
    add_hashes_and_signatures,
    compute_content_hash,
    compute_event_reference_hash,
)
from synapse.events import make_event_from_dict
from synapse.util.json import json_encoder

SERVER = "synapse.test"
# A fixed seed: the vector is reproducible.
SEED = base64.b64encode(bytes(range(32))).decode().rstrip("=")
OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "synapse-vectors" / "floats.json"


POWER_LEVELS = {  # kept by redaction: the signature covers these floats too
    "users": {"@alice:synapse.test": 100.0},
    "users_default": 0,
    "ban": 50.0,
    "kick": 1e3,
    "events": {"m.room.name": 50.0},
}
MESSAGE = {
    "msgtype": "m.text",
    "body": "floats",
    "org.example.one": 1.0,
    "org.example.thousand": 1e3,
    "org.example.half": 0.5,
    "org.example.negzero": -0.0,
    "org.example.list": [2.0, 3],
}


def record(version_id: str, kind: str) -> dict[str, object]:
    version = KNOWN_ROOM_VERSIONS[version_id]
    key = signedjson.key.decode_signing_key_base64("ed25519", "floats", SEED)
    v1_style = version_id in ("1", "2")
    prev = ["$prev:synapse.test", {"sha256": "a" * 43}] if v1_style else "$prevprevprevprevprevprevprevprevprevprevpre"
    auth = ["$auth:synapse.test", {"sha256": "b" * 43}] if v1_style else "$authauthauthauthauthauthauthauthauthauthaut"
    event = {
        "room_id": "!floats:synapse.test",
        "sender": "@alice:synapse.test",
        "origin": SERVER,
        "origin_server_ts": 1700000000000,
        "type": kind,
        "depth": 7,
        "prev_events": [prev],
        "auth_events": [auth],
        "content": dict(MESSAGE if kind == "m.room.message" else POWER_LEVELS),
    }
    if kind == "m.room.power_levels":
        event["state_key"] = ""
    if v1_style:
        event["event_id"] = f"$floats{len(kind)}:synapse.test"
    add_hashes_and_signatures(version, event, SERVER, key)
    made = make_event_from_dict(dict(event), version)
    pdu = made.get_pdu_json()
    _, digest = compute_content_hash(dict(pdu), hashlib.sha256)
    _, ref = compute_event_reference_hash(made)
    hashed = {k: v for k, v in pdu.items() if k not in ("unsigned", "signatures", "hashes")}
    return {
        "room_version": version_id,
        "pdu_text": json_encoder.encode(pdu),
        "event_id": made.event_id,
        "content_hash": base64.b64encode(digest).decode().rstrip("="),
        "reference_hash": base64.b64encode(ref).decode().rstrip("="),
        "hashed_canonical_json": canonicaljson.encode_canonical_json(hashed).decode(),
    }


def main() -> None:
    key = signedjson.key.decode_signing_key_base64("ed25519", "floats", SEED)
    doc = {
        "source": "recorded by tools/record_float_vectors.py with Synapse "
                  + synapse.__version__ + ", canonicaljson " + canonicaljson.__version__,
        "server_name": SERVER,
        "key_id": "ed25519:floats",
        "verify_key": signedjson.key.encode_verify_key_base64(key.verify_key),
        "events": [record(v, kind) for v in ("1", "3", "5", "10")
                   for kind in ("m.room.message", "m.room.power_levels")],
    }
    OUT.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
