"""This server's ed25519 signing key: the standard key file, and the published key document.

The key file holds one line per key, ``ed25519 <key_id_version> <unpadded base64 seed>``,
the format Synapse and the other homeservers use, so keys can move between them.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from signedjson.key import (
    decode_signing_key_base64,
    encode_signing_key_base64,
    encode_verify_key_base64,
    generate_signing_key,
    get_verify_key,
)
from signedjson.sign import sign_json

from homeserver.config import OldVerifyKeyConfig


class KeyFileError(Exception):
    """The signing key file is missing or malformed."""


@dataclass(frozen=True, slots=True)
class ServerSigningKey:
    """A signing key with its key ID (``ed25519:<version>``)."""

    key_id: str
    signing_key: Any  # nacl SigningKey with .alg and .version set by signedjson

    @property
    def verify_key_base64(self) -> str:
        return str(encode_verify_key_base64(get_verify_key(self.signing_key)))


def new_key_version() -> str:
    """A fresh random key version like Synapse's (``a_`` + 4 random letters)."""
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return "a_" + "".join(secrets.choice(alphabet) for _ in range(4))


def generate_key_line(version: str | None = None) -> str:
    key = generate_signing_key(version or new_key_version())
    return f"ed25519 {key.version} {encode_signing_key_base64(key)}\n"


def write_new_key_file(path: str | Path) -> None:
    """Create ``path`` with a new key, readable by the owner only. Refuses to overwrite."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(generate_key_line())


def parse_key_file(text: str, source: str = "signing key file") -> ServerSigningKey:
    """Parse the first key of a key file; raises KeyFileError with a one-line reason."""
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 3:
            raise KeyFileError(f"{source} line {lineno}: expected 'ed25519 <version> <seed>'")
        alg, version, seed = parts
        if alg != "ed25519":
            raise KeyFileError(f"{source} line {lineno}: unsupported algorithm {alg!r}")
        if not version.replace("_", "").isalnum():
            raise KeyFileError(f"{source} line {lineno}: invalid key version {version!r}")
        try:
            key = decode_signing_key_base64(alg, version, seed)
        except Exception:
            raise KeyFileError(f"{source} line {lineno}: the key is not valid base64 ed25519 seed") from None
        return ServerSigningKey(key_id=f"{alg}:{version}", signing_key=key)
    raise KeyFileError(f"{source}: no key found")


def load_key_file(path: str | Path) -> ServerSigningKey:
    p = Path(path)
    try:
        text = p.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else "unreadable"
        raise KeyFileError(f"cannot read signing key file {p}: {reason}") from None
    return parse_key_file(text, f"signing key file {p}")


def server_key_document(
    server_name: str,
    key: ServerSigningKey,
    valid_until_ts: int,
    old_verify_keys: dict[str, OldVerifyKeyConfig] | None = None,
) -> dict[str, Any]:
    """The signed JSON served at ``GET /_matrix/key/v2/server``."""
    doc: dict[str, Any] = {
        "server_name": server_name,
        "valid_until_ts": valid_until_ts,
        "verify_keys": {key.key_id: {"key": key.verify_key_base64}},
        "old_verify_keys": {
            key_id: {"key": old.key, "expired_ts": old.expired_ts}
            for key_id, old in (old_verify_keys or {}).items()
        },
    }
    signed: dict[str, Any] = sign_json(doc, server_name, key.signing_key)
    return signed
