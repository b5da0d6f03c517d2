"""Signing and verification: appendix test vectors, round trips, tampering, hash checks."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from signedjson.sign import sign_json

from homeserver.events.canonical import decode_b64
from homeserver.events.errors import SignatureError
from homeserver.events.redaction import redact
from homeserver.events.signing import (
    HashCheck,
    check_content_hash,
    required_signers,
    sign_event,
    verify_event_signatures,
)
from homeserver.events.versions import ROOM_V10, ROOM_V11, ROOM_V12, RoomVersion
from tests.unit.events.builders import ALL_VERSIONS, signing_key

# Appendices, "Cryptographic Test Vectors".
SEED = decode_b64("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1")


@pytest.fixture
def key() -> Any:
    return signing_key(SEED, "1")


def keys_for(key: Any, server: str = "domain") -> dict[str, dict[str, Any]]:
    return {server: {"ed25519:1": key.verify_key}}


def test_appendix_json_signing_empty_object(key: Any) -> None:
    assert sign_json({}, "domain", key)["signatures"] == {
        "domain": {"ed25519:1": "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/"
                                 "7Xg4ahLwYGYZzuHGZKM5ZAQ"}
    }


def test_appendix_json_signing_with_data(key: Any) -> None:
    signed = sign_json({"one": 1, "two": "Two"}, "domain", key)
    assert signed["signatures"]["domain"]["ed25519:1"] == (
        "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"
    )


MINIMAL_EVENT: dict[str, Any] = {
    "room_id": "!x:domain",
    "sender": "@a:domain",
    "origin": "domain",
    "origin_server_ts": 1000000,
    "signatures": {},
    "hashes": {},
    "type": "X",
    "content": {},
    "prev_events": [],
    "auth_events": [],
    "depth": 3,
    "unsigned": {"age_ts": 1000000},
}

REDACTABLE_EVENT: dict[str, Any] = {
    "content": {"body": "Here is the message content"},
    "event_id": "$0:domain",
    "origin": "domain",
    "origin_server_ts": 1000000,
    "type": "m.room.message",
    "room_id": "!r:domain",
    "sender": "@u:domain",
    "signatures": {},
    "unsigned": {"age_ts": 1000000},
}


@pytest.mark.parametrize(
    ("event", "sha256", "signature"),
    [
        (MINIMAL_EVENT, "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos",
         "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg"),
        (REDACTABLE_EVENT, "onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g",
         "Wm+VzmOUOz08Ds+0NTWb1d4CZrVsJSikkeRxh6aCcUwu6pNC78FunoD7KNWzqFn241eYHYMGCA5McEiVPdhzBA"),
    ],
    ids=["minimal", "redactable"],
)
def test_appendix_event_signing(key: Any, event: dict[str, Any], sha256: str,
                                signature: str) -> None:
    # The vectors keep the top-level "origin", which v9 redaction rules (room 10) preserve.
    original = copy.deepcopy(event)
    signed = sign_event(event, ROOM_V10, "domain", key)
    assert event == original  # input untouched
    assert signed["hashes"] == {"sha256": sha256}
    assert signed["signatures"] == {"domain": {"ed25519:1": signature}}
    assert signed["unsigned"] == {"age_ts": 1000000}
    assert signed["content"] == event["content"]
    verify_event_signatures(signed, ROOM_V10, keys_for(key))


def _message(version: RoomVersion) -> dict[str, Any]:
    room_id = "!AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" if version is ROOM_V12 else "!r:a.test"
    return {
        "room_id": room_id, "sender": "@u:a.test", "type": "m.room.message",
        "content": {"body": "hello", "msgtype": "m.text"}, "prev_events": ["$p"],
        "auth_events": ["$a"], "depth": 5, "origin_server_ts": 1, "hashes": {},
        "signatures": {},
    }


@pytest.mark.parametrize("version", ALL_VERSIONS, ids=lambda v: f"v{v.identifier}")
def test_sign_verify_roundtrip(key: Any, version: RoomVersion) -> None:
    signed = sign_event(_message(version), version, "a.test", key)
    verify_event_signatures(signed, version, keys_for(key, "a.test"))
    assert check_content_hash(signed, version) == (HashCheck.MATCH, signed)


@pytest.mark.parametrize("version", ALL_VERSIONS, ids=lambda v: f"v{v.identifier}")
def test_signature_survives_redaction(key: Any, version: RoomVersion) -> None:
    signed = sign_event(_message(version), version, "a.test", key)
    verify_event_signatures(redact(signed, version), version, keys_for(key, "a.test"))


@pytest.mark.parametrize(
    "tamper",
    [
        lambda p: p.update(origin_server_ts=2),
        lambda p: p.update(sender="@v:a.test"),
        lambda p: p["prev_events"].append("$q"),
        lambda p: p["signatures"]["a.test"].update({"ed25519:1": "AAAA"}),
        lambda p: p["signatures"]["a.test"].update({"ed25519:1": "not base64!"}),
    ],
    ids=["ts", "sender", "prev_events", "bad-signature", "bad-base64"],
)
def test_tampered_event_fails(key: Any, tamper: Any) -> None:
    signed = sign_event(_message(ROOM_V11), ROOM_V11, "a.test", key)
    tampered = copy.deepcopy(signed)
    tamper(tampered)
    with pytest.raises(SignatureError):
        verify_event_signatures(tampered, ROOM_V11, keys_for(key, "a.test"))


def test_content_change_does_not_break_signature_but_hash(key: Any) -> None:
    signed = sign_event(_message(ROOM_V11), ROOM_V11, "a.test", key)
    tampered = copy.deepcopy(signed)
    tampered["content"]["body"] = "evil"
    verify_event_signatures(tampered, ROOM_V11, keys_for(key, "a.test"))  # content not signed
    outcome, used = check_content_hash(tampered, ROOM_V11)
    assert outcome is HashCheck.MISMATCH
    assert used == redact(tampered, ROOM_V11)
    assert used["content"] == {}


def test_missing_signature_from_sender_server(key: Any) -> None:
    signed = sign_event(_message(ROOM_V11), ROOM_V11, "other.test", key)
    with pytest.raises(SignatureError, match=r"not signed by a\.test"):
        verify_event_signatures(signed, ROOM_V11, keys_for(key, "other.test"))


def test_unknown_key_only_fails(key: Any) -> None:
    signed = sign_event(_message(ROOM_V11), ROOM_V11, "a.test", key)
    other = signing_key(b"o" * 32, "2")
    with pytest.raises(SignatureError, match="no signature by a known key"):
        verify_event_signatures(signed, ROOM_V11, {"a.test": {"ed25519:2": other.verify_key}})


def test_unknown_keys_are_ignored_when_a_known_one_verifies(key: Any) -> None:
    signed = sign_event(_message(ROOM_V11), ROOM_V11, "a.test", key)
    signed["signatures"]["a.test"]["ed25519:zzz"] = "AAAA"
    verify_event_signatures(signed, ROOM_V11, keys_for(key, "a.test"))


def _restricted_join() -> dict[str, Any]:
    pdu = _message(ROOM_V11)
    pdu.update(type="m.room.member", state_key="@u:a.test",
               content={"membership": "join", "join_authorised_via_users_server": "@x:b.test"})
    return pdu


def test_required_signers() -> None:
    assert required_signers(_message(ROOM_V11)) == {"a.test"}
    assert required_signers(_restricted_join()) == {"a.test", "b.test"}


def test_join_authorised_via_needs_that_servers_signature(key: Any) -> None:
    other = signing_key(b"b" * 32, "1")
    keys = {"a.test": {"ed25519:1": key.verify_key}, "b.test": {"ed25519:1": other.verify_key}}
    only_sender = sign_event(_restricted_join(), ROOM_V11, "a.test", key)
    with pytest.raises(SignatureError, match=r"b\.test"):
        verify_event_signatures(only_sender, ROOM_V11, keys)
    both = sign_event(only_sender, ROOM_V11, "b.test", other)
    assert set(both["signatures"]) == {"a.test", "b.test"}
    verify_event_signatures(both, ROOM_V11, keys)


def test_sign_event_sets_content_hash(key: Any) -> None:
    pdu = _message(ROOM_V12)
    pdu["hashes"] = {"sha256": "wrong"}
    signed = sign_event(pdu, ROOM_V12, "a.test", key)
    assert check_content_hash(signed, ROOM_V12)[0] is HashCheck.MATCH
    assert check_content_hash(pdu, ROOM_V12)[0] is HashCheck.MISMATCH
