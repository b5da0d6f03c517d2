"""Signing events and checking their signatures and content hashes.

Spec: server-server-api "Signing Events" and appendices "Signing JSON". Signatures cover
the redacted event; a content hash mismatch means the event is used redacted.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from enum import Enum
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey
from signedjson.sign import sign_json
from signedjson.types import SigningKey

from homeserver.events.canonical import canonical_json, decode_b64
from homeserver.events.errors import EventFormatError, SignatureError
from homeserver.events.hashes import add_content_hash, content_hash_matches
from homeserver.events.identifiers import server_name_of
from homeserver.events.redaction import redact
from homeserver.events.versions import RoomVersion

VerifyKeys = Mapping[str, Mapping[str, VerifyKey]]  # server name -> key ID -> key


class HashCheck(Enum):
    MATCH = "match"
    MISMATCH = "mismatch"  # the event must be processed in its redacted form


def sign_event(
    pdu: dict[str, Any], version: RoomVersion, server_name: str, signing_key: SigningKey
) -> dict[str, Any]:
    """Return a copy of ``pdu`` with ``hashes.sha256`` set and ``server_name``'s signature
    (of the redacted event) added to ``signatures``.

    ``signing_key`` is a signedjson signing key (a nacl SigningKey with ``alg`` and
    ``version`` attributes, as ``signedjson.key`` makes them); its key ID is
    ``alg:version``.
    """
    out = add_content_hash(pdu)
    redacted = redact(out, version)
    redacted.pop("signatures", None)
    redacted.pop("unsigned", None)
    signed = sign_json(redacted, server_name, signing_key)
    signatures = copy.deepcopy(out.get("signatures") or {})
    for name, sigs in signed["signatures"].items():
        signatures.setdefault(name, {}).update(sigs)
    out["signatures"] = signatures
    return out


def required_signers(pdu: Mapping[str, Any], version: RoomVersion | None = None) -> set[str]:
    """Servers whose signature the event must carry: the sender's server; in rooms 1 and 2
    (``version`` given) the server of the ``event_id`` too; and from room 8, for member
    events with ``content.join_authorised_via_users_server``, that user's server."""
    if not isinstance(pdu, Mapping):
        raise EventFormatError("a PDU must be a JSON object")
    signers = {server_name_of(str(pdu.get("sender", "")))}
    if version is not None and version.origin_event_ids:
        signers.add(server_name_of(str(pdu.get("event_id", ""))))
    content = pdu.get("content")
    restricted = version is None or version.restricted_joins
    if restricted and pdu.get("type") == "m.room.member" and isinstance(content, dict):
        via = content.get("join_authorised_via_users_server")
        if isinstance(via, str):
            signers.add(server_name_of(via))
    signers.discard("")
    return signers


def _signed_bytes(pdu: dict[str, Any], version: RoomVersion) -> bytes:
    redacted = redact(pdu, version)
    redacted.pop("signatures", None)
    redacted.pop("unsigned", None)
    return canonical_json(redacted)


def verify_event_signatures(
    pdu: dict[str, Any], version: RoomVersion, verify_keys: VerifyKeys
) -> None:
    """Raise SignatureError unless every server of ``required_signers(pdu, version)`` signed the
    redacted event with at least one key of ``verify_keys`` and every such signature verifies.

    Signatures by keys not in ``verify_keys`` are ignored (the spec's "unknown keys"); the
    caller passes only keys valid at the event's ``origin_server_ts``.
    """
    signers = required_signers(pdu, version)
    if not signers:
        raise SignatureError("event has no sender server to check a signature from")
    all_sigs = pdu.get("signatures")
    if not isinstance(all_sigs, dict):
        raise SignatureError("event has no signatures")
    message: bytes | None = None
    for server in sorted(signers):
        sigs = all_sigs.get(server)
        if not isinstance(sigs, dict) or not sigs:
            raise SignatureError(f"event is not signed by {server}")
        known = verify_keys.get(server, {})
        checked = 0
        for key_id, sig_b64 in sigs.items():
            if not isinstance(key_id, str) or not key_id.startswith("ed25519:") or key_id not in known:
                continue
            if message is None:
                message = _signed_bytes(pdu, version)
            try:
                signature = decode_b64(sig_b64)
                known[key_id].verify(message, signature)
            except (BadSignatureError, ValueError, TypeError) as exc:
                raise SignatureError(f"bad signature by {server} {key_id}") from exc
            checked += 1
        if not checked:
            raise SignatureError(f"no signature by a known key of {server}")


def check_content_hash(
    pdu: dict[str, Any], version: RoomVersion
) -> tuple[HashCheck, dict[str, Any]]:
    """Compare ``hashes.sha256`` with the content hash. On a match, return ``pdu`` itself;
    otherwise the redacted copy, which the caller must use instead of the received event."""
    if content_hash_matches(pdu):
        return HashCheck.MATCH, pdu
    return HashCheck.MISMATCH, redact(pdu, version)
