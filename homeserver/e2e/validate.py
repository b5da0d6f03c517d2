"""Shapes and bounds of uploaded keys. Everything here raises ``MatrixError`` 400
M_BAD_JSON (wrong shape), M_INVALID_PARAM (a value out of range) or 413 M_TOO_LARGE (too
many or too big), never anything else."""

from __future__ import annotations

import json
import re
from typing import Any

from homeserver.errors import MatrixError
from homeserver.events.identifiers import is_valid_user_id
from homeserver.storage.e2e_keys import NewKey

# One-time keys in one upload, and held per device.
MAX_ONE_TIME_KEYS_PER_UPLOAD = 100
MAX_ONE_TIME_KEYS_HELD = 1000
# One key object (device keys, a one-time key, a cross-signing key), canonical JSON bytes.
MAX_KEY_BYTES = 8 * 1024
# Users and devices named by one /keys/query or /keys/claim; signed objects in one
# /keys/signatures/upload.
MAX_QUERY_USERS = 1000
MAX_QUERY_DEVICES = 1000
MAX_CLAIM_DEVICES = 1000
MAX_SIGNED_OBJECTS = 100
# "algorithm:key_id": an algorithm is a short printable name without ":".
_ALGORITHM = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
# A key ID: device IDs (which clients may choose) appear in them, so any printable text
# without white space.
_KEY_ID = re.compile(r"^[^\s]{1,255}$")
MAX_ID_LENGTH = 255


def bad(message: str) -> MatrixError:
    return MatrixError(400, "M_BAD_JSON", message)


def invalid(message: str) -> MatrixError:
    return MatrixError(400, "M_INVALID_PARAM", message)


def too_large(message: str) -> MatrixError:
    return MatrixError(413, "M_TOO_LARGE", message)


def size_of(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass"))


def is_algorithm(value: object) -> bool:
    return isinstance(value, str) and _ALGORITHM.match(value) is not None


def is_id(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH and value.isprintable()


def split_key_id(full: object, what: str) -> tuple[str, str]:
    """"algorithm:key_id" -> (algorithm, key_id), else M_INVALID_PARAM."""
    if not isinstance(full, str) or ":" not in full:
        raise invalid(f"{what}: key IDs must look like algorithm:key_id")
    algorithm, key_id = full.split(":", 1)
    if not is_algorithm(algorithm) or _KEY_ID.match(key_id) is None or not key_id.isprintable():
        raise invalid(f"{what}: bad key ID {full[:80]!r}")
    return algorithm, key_id


def object_of(body: dict[str, Any], field: str) -> dict[str, Any] | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad(f"{field} must be an object")
    return value


def device_keys(value: dict[str, Any], user_id: str, device_id: str) -> dict[str, Any]:
    """Uploaded device keys: for this user and device, with algorithms, keys and
    signatures of the right shapes."""
    if value.get("user_id") != user_id or value.get("device_id") != device_id:
        raise bad("device_keys.user_id and device_id must be the uploading user and device")
    algorithms = value.get("algorithms")
    if not isinstance(algorithms, list) or len(algorithms) > 32 or not all(is_algorithm(a) for a in algorithms):
        raise bad("device_keys.algorithms must be a list of algorithm names")
    keys = value.get("keys")
    if not isinstance(keys, dict) or not keys or len(keys) > 32:
        raise bad("device_keys.keys must be a non-empty object")
    for key_id, key in keys.items():
        split_key_id(key_id, "device_keys.keys")
        if not isinstance(key, str) or len(key) > 512:
            raise bad("device_keys.keys values must be strings")
    check_signatures(value.get("signatures"), "device_keys")
    if size_of(value) > MAX_KEY_BYTES:
        raise too_large(f"device_keys is larger than {MAX_KEY_BYTES} bytes")
    return value


def check_signatures(value: Any, what: str) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise bad(f"{what}.signatures must be an object")
    for signer, sigs in value.items():
        if not is_id(signer) or not isinstance(sigs, dict):
            raise bad(f"{what}.signatures must map users to objects")
        for key_id, sig in sigs.items():
            split_key_id(key_id, f"{what}.signatures")
            if not isinstance(sig, str) or len(sig) > 512:
                raise bad(f"{what}.signatures values must be strings")


def new_keys(value: dict[str, Any], what: str, limit: int) -> list[NewKey]:
    """"algorithm:key_id" -> key (a string or a signed object)."""
    if len(value) > limit:
        raise too_large(f"At most {limit} {what} per upload")
    out: list[NewKey] = []
    for full, key in value.items():
        algorithm, key_id = split_key_id(full, what)
        if isinstance(key, dict):
            check_signatures(key.get("signatures"), what)
            if not isinstance(key.get("key", ""), str):
                raise bad(f"{what}: key must be a string")
        elif not isinstance(key, str):
            raise bad(f"{what}: each key must be a string or an object")
        if size_of(key) > MAX_KEY_BYTES:
            raise too_large(f"{what}: a key is larger than {MAX_KEY_BYTES} bytes")
        out.append(NewKey(algorithm, key_id, key))
    return out


def cross_signing_key(value: Any, key_type: str, user_id: str) -> tuple[dict[str, Any], str]:
    """An uploaded cross-signing key for ``user_id`` with ``usage`` naming its type and
    exactly one ed25519 key; returns it and its public key."""
    if not isinstance(value, dict):
        raise bad(f"{key_type}_key must be an object")
    if value.get("user_id") != user_id:
        raise bad(f"{key_type}_key.user_id must be your user ID")
    usage = value.get("usage")
    if not isinstance(usage, list) or key_type not in usage or not all(isinstance(u, str) for u in usage):
        raise bad(f"{key_type}_key.usage must name {key_type}")
    keys = value.get("keys")
    if not isinstance(keys, dict) or len(keys) != 1:
        raise bad(f"{key_type}_key.keys must hold exactly one key")
    ((key_id, public),) = keys.items()
    algorithm, name = split_key_id(key_id, f"{key_type}_key.keys")
    if algorithm != "ed25519" or not isinstance(public, str) or public != name:
        raise invalid(f"{key_type}_key.keys must be one ed25519:<public key> entry")
    check_signatures(value.get("signatures"), f"{key_type}_key")
    if size_of(value) > MAX_KEY_BYTES:
        raise too_large(f"{key_type}_key is larger than {MAX_KEY_BYTES} bytes")
    return value, public


def public_key_of(key: dict[str, Any]) -> str | None:
    """The one ed25519 public key of a stored cross-signing key."""
    keys = key.get("keys")
    if isinstance(keys, dict):
        for key_id, public in keys.items():
            if isinstance(key_id, str) and key_id.startswith("ed25519:") and isinstance(public, str):
                return public
    return None


def parse_query(body: dict[str, Any]) -> dict[str, list[str]]:
    wanted = body.get("device_keys")
    if not isinstance(wanted, dict):
        raise bad("device_keys must be an object")
    if len(wanted) > MAX_QUERY_USERS:
        raise too_large(f"At most {MAX_QUERY_USERS} users per query")
    out: dict[str, list[str]] = {}
    for user_id, devices in wanted.items():
        if not is_valid_user_id(user_id):
            raise invalid(f"Not a user ID: {str(user_id)[:80]!r}")
        if not isinstance(devices, list) or not all(is_id(d) for d in devices):
            raise bad("device_keys values must be lists of device IDs")
        if len(devices) > MAX_QUERY_DEVICES:
            raise too_large(f"At most {MAX_QUERY_DEVICES} devices per user")
        out[user_id] = devices
    return out


def parse_claim(body: dict[str, Any]) -> dict[str, dict[str, str]]:
    wanted = body.get("one_time_keys")
    if not isinstance(wanted, dict):
        raise bad("one_time_keys must be an object")
    out: dict[str, dict[str, str]] = {}
    count = 0
    for user_id, devices in wanted.items():
        if not is_valid_user_id(user_id):
            raise invalid(f"Not a user ID: {str(user_id)[:80]!r}")
        if not isinstance(devices, dict):
            raise bad("one_time_keys values must map device IDs to algorithms")
        for device_id, algorithm in devices.items():
            if not is_id(device_id):
                raise bad("Bad device ID")
            if not is_algorithm(algorithm):
                raise invalid(f"Bad algorithm {str(algorithm)[:80]!r}")
            count += 1
        if count > MAX_CLAIM_DEVICES:
            raise too_large(f"At most {MAX_CLAIM_DEVICES} devices per claim")
        out[user_id] = dict(devices)
    return out
