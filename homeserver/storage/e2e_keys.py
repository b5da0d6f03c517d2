"""The end-to-end keys store (storage/schema/0013_e2e_keys.sql): device keys, one-time
keys, fallback keys, cross-signing keys and the signatures others upload.

Guarantees:
- a one-time key is handed out once: a claim deletes the one row it hands out
  (``DELETE ... RETURNING`` on that exact row, retried with another key when a concurrent
  claim took it first), on both engines;
- a fallback key stays until the device replaces it; claiming it only marks it used;
- every change of a user's device list or cross-signing keys takes a position in the
  device-list stream (``storage/device_lists.py``) in the same transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from homeserver.storage.database import Database
from homeserver.storage.device_lists import bump_stream
from homeserver.storage.engine.base import Connection

CROSS_SIGNING_TYPES = ("master", "self_signing", "user_signing")
# A safety bound on the retries of one claim (each retry means a concurrent claim succeeded).
_CLAIM_ATTEMPTS = 10_000


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def _loads(raw: str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    value = json.loads(raw)
    return value if isinstance(value, dict) else None


@dataclass(frozen=True, slots=True)
class NewKey:
    algorithm: str
    key_id: str
    key: Any  # the key: a string (unsigned curve25519) or an object


@dataclass(frozen=True, slots=True)
class Signature:
    target_user_id: str
    target_key_id: str  # a device ID or a cross-signing public key
    signer_user_id: str
    signer_key_id: str  # "ed25519:<device ID or public key>"
    signature: str


class E2eKeysStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ------------------------------------------------------------------ device keys

    async def set_device_keys(self, user_id: str, device_id: str, keys: Mapping[str, Any]) -> int | None:
        """Store the device's keys; the new stream position, or None if unchanged."""
        encoded = dumps(dict(keys))
        async with self.db.transaction() as conn:
            old = await conn.fetchval(
                "SELECT key_json FROM e2e_device_keys WHERE user_id = ? AND device_id = ?", user_id, device_id
            )
            if old == encoded:
                return None
            await conn.execute(
                "INSERT INTO e2e_device_keys (user_id, device_id, key_json) VALUES (?, ?, ?)"
                " ON CONFLICT (user_id, device_id) DO UPDATE SET key_json = excluded.key_json",
                user_id, device_id, encoded,
            )
            return await bump_stream(conn, user_id, device_id)

    async def device_keys(self, user_id: str, device_ids: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
        """device ID -> keys of ``user_id``'s devices (all of them when ``device_ids`` is
        empty), with ``unsigned.device_display_name`` from the device table."""
        rows = await self.db.fetchall(
            "SELECT k.device_id, k.key_json, d.display_name FROM e2e_device_keys k"
            " LEFT JOIN devices d ON d.user_id = k.user_id AND d.device_id = k.device_id"
            " WHERE k.user_id = ?",
            user_id,
        )
        wanted = set(device_ids)
        out: dict[str, dict[str, Any]] = {}
        for device_id, raw, name in rows:
            if wanted and device_id not in wanted:
                continue
            keys = _loads(raw)
            if keys is None:
                continue
            if name is not None:
                unsigned = keys.get("unsigned")
                keys["unsigned"] = {**(unsigned if isinstance(unsigned, dict) else {}), "device_display_name": name}
            out[device_id] = keys
        return out

    async def device_key(self, user_id: str, device_id: str) -> dict[str, Any] | None:
        raw = await self.db.fetchval(
            "SELECT key_json FROM e2e_device_keys WHERE user_id = ? AND device_id = ?", user_id, device_id
        )
        return _loads(raw)

    async def delete_device(self, conn: Connection, user_id: str, device_id: str) -> int:
        """In ``conn``'s transaction: drop the device's keys, one-time and fallback keys and
        the signatures of its keys; return the device-list stream position taken."""
        await conn.execute("DELETE FROM e2e_device_keys WHERE user_id = ? AND device_id = ?", user_id, device_id)
        await conn.execute("DELETE FROM e2e_one_time_keys WHERE user_id = ? AND device_id = ?", user_id, device_id)
        await conn.execute("DELETE FROM e2e_fallback_keys WHERE user_id = ? AND device_id = ?", user_id, device_id)
        await conn.execute(
            "DELETE FROM e2e_signatures WHERE target_user_id = ? AND target_key_id = ?", user_id, device_id
        )
        return await bump_stream(conn, user_id, device_id)

    # ------------------------------------------------------------------ one-time keys

    async def add_one_time_keys(self, user_id: str, device_id: str, keys: Sequence[NewKey], cap: int) -> list[str]:
        """Add the keys; keys already stored with the same content are skipped. Return the
        "algorithm:key_id" of keys stored with a different content (nothing is written then),
        or raise ``TooManyKeys`` when the device would hold more than ``cap``."""
        async with self.db.transaction() as conn:
            conflicts: list[str] = []
            fresh: list[NewKey] = []
            for k in keys:
                old = await conn.fetchval(
                    "SELECT key_json FROM e2e_one_time_keys WHERE user_id = ? AND device_id = ? AND algorithm = ?"
                    " AND key_id = ?", user_id, device_id, k.algorithm, k.key_id,
                )
                if old is None:
                    fresh.append(k)
                elif old != dumps(k.key):
                    conflicts.append(f"{k.algorithm}:{k.key_id}")
            if conflicts:
                return conflicts
            held = await conn.fetchval(
                "SELECT COUNT(*) FROM e2e_one_time_keys WHERE user_id = ? AND device_id = ?", user_id, device_id
            )
            if int(held) + len(fresh) > cap:
                raise TooManyKeys(int(held))
            for k in fresh:
                await conn.execute(
                    "INSERT INTO e2e_one_time_keys (user_id, device_id, algorithm, key_id, key_json)"
                    " VALUES (?, ?, ?, ?, ?)", user_id, device_id, k.algorithm, k.key_id, dumps(k.key),
                )
        return []

    async def one_time_key_counts(self, user_id: str, device_id: str) -> dict[str, int]:
        rows = await self.db.fetchall(
            "SELECT algorithm, COUNT(*) FROM e2e_one_time_keys WHERE user_id = ? AND device_id = ?"
            " GROUP BY algorithm", user_id, device_id,
        )
        return {r[0]: int(r[1]) for r in rows}

    async def claim(self, user_id: str, device_id: str, algorithm: str) -> tuple[str, Any] | None:
        """Hand out one of the device's one-time keys of ``algorithm`` (deleted: never
        handed out again), else its fallback key (marked used), else None. Returns
        ("algorithm:key_id", key)."""
        # One statement picks and deletes a key (atomic on SQLite). On PostgreSQL a concurrent
        # claim may delete the key picked first: the statement then deletes nothing and is run
        # again while keys are left (each retry means another claim got a key: it ends).
        for _ in range(_CLAIM_ATTEMPTS):
            async with self.db.transaction() as conn:
                row = await conn.fetchone(
                    "DELETE FROM e2e_one_time_keys WHERE user_id = ? AND device_id = ? AND algorithm = ?"
                    " AND key_id = (SELECT key_id FROM e2e_one_time_keys WHERE user_id = ? AND device_id = ?"
                    " AND algorithm = ? ORDER BY key_id LIMIT 1) RETURNING key_id, key_json",
                    user_id, device_id, algorithm, user_id, device_id, algorithm,
                )
            if row is not None:
                return f"{algorithm}:{row[0]}", json.loads(row[1])
            left = await self.db.fetchval(
                "SELECT 1 FROM e2e_one_time_keys WHERE user_id = ? AND device_id = ? AND algorithm = ? LIMIT 1",
                user_id, device_id, algorithm,
            )
            if left is None:
                break
        async with self.db.transaction() as conn:
            row = await conn.fetchone(
                "UPDATE e2e_fallback_keys SET used = 1 WHERE user_id = ? AND device_id = ? AND algorithm = ?"
                " RETURNING key_id, key_json", user_id, device_id, algorithm,
            )
        if row is None:
            return None
        return f"{algorithm}:{row[0]}", json.loads(row[1])

    # ------------------------------------------------------------------ fallback keys

    async def set_fallback_keys(self, user_id: str, device_id: str, keys: Sequence[NewKey]) -> None:
        """Replace the device's fallback key of each algorithm (unused again, unless the
        very same key is uploaded again)."""
        async with self.db.transaction() as conn:
            for k in keys:
                await conn.execute(
                    "INSERT INTO e2e_fallback_keys (user_id, device_id, algorithm, key_id, key_json, used)"
                    " VALUES (?, ?, ?, ?, ?, 0) ON CONFLICT (user_id, device_id, algorithm) DO UPDATE SET"
                    " used = CASE WHEN e2e_fallback_keys.key_id = excluded.key_id"
                    " AND e2e_fallback_keys.key_json = excluded.key_json THEN e2e_fallback_keys.used ELSE 0 END,"
                    " key_id = excluded.key_id, key_json = excluded.key_json",
                    user_id, device_id, k.algorithm, k.key_id, dumps(k.key),
                )

    async def unused_fallback_key_types(self, user_id: str, device_id: str) -> list[str]:
        rows = await self.db.fetchall(
            "SELECT algorithm FROM e2e_fallback_keys WHERE user_id = ? AND device_id = ? AND used = 0"
            " ORDER BY algorithm", user_id, device_id,
        )
        return [r[0] for r in rows]

    # ------------------------------------------------------------------ cross-signing

    async def set_cross_signing_keys(self, user_id: str, keys: Mapping[str, Mapping[str, Any]]) -> int | None:
        """Store the user's cross-signing keys (key type -> key); a new master key drops
        the signatures made with the old keys. The stream position, None if unchanged."""
        async with self.db.transaction() as conn:
            changed = False
            for key_type, key in keys.items():
                encoded = dumps(dict(key))
                old = await conn.fetchval(
                    "SELECT key_json FROM e2e_cross_signing_keys WHERE user_id = ? AND key_type = ?",
                    user_id, key_type,
                )
                if old == encoded:
                    continue
                changed = True
                await conn.execute(
                    "INSERT INTO e2e_cross_signing_keys (user_id, key_type, key_json) VALUES (?, ?, ?)"
                    " ON CONFLICT (user_id, key_type) DO UPDATE SET key_json = excluded.key_json",
                    user_id, key_type, encoded,
                )
            if not changed:
                return None
            return await bump_stream(conn, user_id, "")

    async def cross_signing_keys(self, user_id: str) -> dict[str, dict[str, Any]]:
        rows = await self.db.fetchall(
            "SELECT key_type, key_json FROM e2e_cross_signing_keys WHERE user_id = ?", user_id
        )
        out: dict[str, dict[str, Any]] = {}
        for key_type, raw in rows:
            key = _loads(raw)
            if key is not None:
                out[key_type] = key
        return out

    # ------------------------------------------------------------------ signatures

    async def add_signatures(self, signatures: Iterable[Signature], bump_users: Iterable[str]) -> int | None:
        """Store the signatures; take a stream position for each of ``bump_users``."""
        position: int | None = None
        async with self.db.transaction() as conn:
            for s in signatures:
                await conn.execute(
                    "INSERT INTO e2e_signatures (target_user_id, target_key_id, signer_user_id, signer_key_id,"
                    " signature) VALUES (?, ?, ?, ?, ?) ON CONFLICT"
                    " (target_user_id, target_key_id, signer_user_id, signer_key_id)"
                    " DO UPDATE SET signature = excluded.signature",
                    s.target_user_id, s.target_key_id, s.signer_user_id, s.signer_key_id, s.signature,
                )
            for user_id in dict.fromkeys(bump_users):
                position = await bump_stream(conn, user_id, "")
        return position

    async def signatures_of(self, target_user_id: str) -> list[Signature]:
        rows = await self.db.fetchall(
            "SELECT target_key_id, signer_user_id, signer_key_id, signature FROM e2e_signatures"
            " WHERE target_user_id = ?", target_user_id,
        )
        return [Signature(target_user_id, r[0], r[1], r[2], r[3]) for r in rows]


class TooManyKeys(Exception):
    def __init__(self, held: int) -> None:
        super().__init__(f"the device already holds {held} one-time keys")
        self.held = held
