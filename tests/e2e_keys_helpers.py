"""Real ed25519 keys and signed key objects for the end-to-end keys tests (as a client's
crypto would make them: signatures over the canonical JSON without ``signatures`` and
``unsigned``)."""

from __future__ import annotations

import base64
from typing import Any

from nacl.signing import SigningKey

from homeserver.events.canonical import canonical_json

V3 = "/_matrix/client/v3"
PASSWORD = "correct horse battery"  # nio_user's


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode().rstrip("=")


def public(sk: SigningKey) -> str:
    return b64(bytes(sk.verify_key))


def sign(obj: dict[str, Any], user_id: str, key_id: str, sk: SigningKey) -> dict[str, Any]:
    signed = canonical_json({k: v for k, v in obj.items() if k not in ("signatures", "unsigned")})
    obj.setdefault("signatures", {}).setdefault(user_id, {})[key_id] = b64(sk.sign(signed).signature)
    return obj


def device_keys(user_id: str, device_id: str, sk: SigningKey) -> dict[str, Any]:
    keys = {
        "user_id": user_id, "device_id": device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {f"curve25519:{device_id}": b64(SigningKey.generate().encode()),
                 f"ed25519:{device_id}": public(sk)},
    }
    return sign(keys, user_id, f"ed25519:{device_id}", sk)


def one_time_keys(user_id: str, device_id: str, sk: SigningKey, count: int, start: int = 0) -> dict[str, Any]:
    out = {}
    for n in range(start, start + count):
        out[f"signed_curve25519:K{n:04d}"] = sign({"key": b64(SigningKey.generate().encode())}, user_id,
                                                  f"ed25519:{device_id}", sk)
    return out


def cross_signing_key(user_id: str, usage: str, sk: SigningKey, master: SigningKey | None) -> dict[str, Any]:
    key = {"user_id": user_id, "usage": [usage], "keys": {f"ed25519:{public(sk)}": public(sk)}}
    if master is not None:
        sign(key, user_id, f"ed25519:{public(master)}", master)
    return key


def password_auth(user_id: str, session: str) -> dict[str, Any]:
    return {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user_id},
            "password": PASSWORD, "session": session}
