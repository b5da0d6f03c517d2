"""The key backup store: each user's backup versions and the room keys in them
(storage/schema/0014_to_device_and_key_backup.sql).

Guarantees: version numbers grow per user and are never reused (a deleted version keeps its
row, marked deleted, and loses its keys); the current version is the newest one not deleted;
a version's ``etag`` changes whenever its keys change, in the transaction that changes them;
a session's stored key is replaced only by a better one (``should_replace``). Stateless
apart from the database.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from homeserver.storage.database import Connection, Database


@dataclass(frozen=True, slots=True)
class BackupVersion:
    version: str
    algorithm: str
    auth_data: dict[str, Any]
    etag: str
    count: int


@dataclass(frozen=True, slots=True)
class SessionKey:
    """One session's backed-up key (the spec's KeyBackupData)."""

    first_message_index: int
    forwarded_count: int
    is_verified: bool
    session_data: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"first_message_index": self.first_message_index, "forwarded_count": self.forwarded_count,
                "is_verified": self.is_verified, "session_data": self.session_data}


def should_replace(new: SessionKey, old: SessionKey | None) -> bool:
    """The spec's rule for a session already backed up: keep the verified one; between
    equally verified, the lower ``first_message_index``; then the lower ``forwarded_count``;
    the stored one when all three are equal."""
    if old is None:
        return True
    if new.is_verified != old.is_verified:
        return new.is_verified
    if new.first_message_index != old.first_message_index:
        return new.first_message_index < old.first_message_index
    return new.forwarded_count < old.forwarded_count


# One version of a user's backup, unless deleted: (version, algorithm, auth_data, etag).
_LIVE_VERSION = (
    "SELECT version, algorithm, auth_data, etag FROM room_key_backup_versions"
    " WHERE user_id = ? AND version = ? AND deleted = 0"
)


def _object(raw: str) -> dict[str, Any]:
    value = json.loads(raw)
    return value if isinstance(value, dict) else {}


def _encode(value: Mapping[str, Any]) -> str:
    return json.dumps(dict(value), separators=(",", ":"), ensure_ascii=False)


def _version_number(version: str) -> int | None:
    """A version as the client names it; None for anything we never issued."""
    if not version.isascii() or not version.isdigit() or len(version) > 18:
        return None
    return int(version)


CREATE_ATTEMPTS = 5
_KEY_COLUMNS = "room_id, session_id, first_message_index, forwarded_count, is_verified, session_data"


class KeyBackupStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ------------------------------------------------------------------ versions

    async def create_version(self, user_id: str, algorithm: str, auth_data: Mapping[str, Any]) -> str:
        """A new version, which becomes the current one. Two concurrent creations may pick
        the same number: the loser tries again with the next one."""
        for attempt in range(CREATE_ATTEMPTS):
            try:
                async with self.db.transaction() as conn:
                    number = await conn.fetchval(
                        "INSERT INTO room_key_backup_versions (user_id, version, algorithm, auth_data, etag, deleted)"
                        " SELECT ?, COALESCE(MAX(version), 0) + 1, ?, ?, 0, 0 FROM room_key_backup_versions"
                        " WHERE user_id = ? RETURNING version",
                        user_id, algorithm, _encode(auth_data), user_id,
                    )
                return str(number)
            except Exception as exc:
                if attempt + 1 == CREATE_ATTEMPTS or not self.db.dialect.is_unique_violation(exc):
                    raise
        raise AssertionError("unreachable")

    async def current_version(self, user_id: str) -> BackupVersion | None:
        row = await self.db.fetchone(
            "SELECT version, algorithm, auth_data, etag FROM room_key_backup_versions"
            " WHERE user_id = ? AND deleted = 0 ORDER BY version DESC LIMIT 1",
            user_id,
        )
        return None if row is None else await self._with_count(self.db, user_id, row)

    async def get_version(self, user_id: str, version: str) -> BackupVersion | None:
        """A version not deleted, or None."""
        number = _version_number(version)
        if number is None:
            return None
        row = await self.db.fetchone(
            _LIVE_VERSION, user_id, number,
        )
        return None if row is None else await self._with_count(self.db, user_id, row)

    async def _with_count(self, conn: Connection, user_id: str, row: Sequence[Any]) -> BackupVersion:
        count = await conn.fetchval(
            "SELECT COUNT(*) FROM room_key_backup_keys WHERE user_id = ? AND version = ?", user_id, int(row[0])
        )
        return BackupVersion(str(row[0]), row[1], _object(row[2]), str(row[3]), int(count))

    async def update_auth_data(self, user_id: str, version: str, auth_data: Mapping[str, Any]) -> bool:
        """False if there is no such version (or it was deleted)."""
        number = _version_number(version)
        if number is None:
            return False
        changed = await self.db.execute(
            "UPDATE room_key_backup_versions SET auth_data = ? WHERE user_id = ? AND version = ? AND deleted = 0",
            _encode(auth_data), user_id, number,
        )
        return changed > 0

    async def delete_version(self, user_id: str, version: str) -> bool:
        """Mark the version deleted and drop its keys; False if there was none to delete."""
        number = _version_number(version)
        if number is None:
            return False
        async with self.db.transaction() as conn:
            changed = await conn.execute(
                "UPDATE room_key_backup_versions SET deleted = 1 WHERE user_id = ? AND version = ? AND deleted = 0",
                user_id, number,
            )
            await conn.execute(
                "DELETE FROM room_key_backup_keys WHERE user_id = ? AND version = ?", user_id, number
            )
        return bool(changed > 0)

    # ------------------------------------------------------------------ keys

    async def put_keys(
        self, user_id: str, version: str, keys: Mapping[str, Mapping[str, SessionKey]]
    ) -> BackupVersion | None:
        """Store room -> session -> key where better than what is stored (``should_replace``);
        the etag changes if anything did. None if the version does not exist (any more)."""
        number = _version_number(version)
        if number is None:
            return None
        async with self.db.transaction() as conn:
            row = await conn.fetchone(
                _LIVE_VERSION, user_id, number,
            )
            if row is None:
                return None
            changes: list[tuple[Any, ...]] = []
            for room_id, sessions in keys.items():
                stored = await self._room_keys(conn, user_id, number, room_id)
                for session_id, key in sessions.items():
                    if should_replace(key, stored.get(session_id)):
                        changes.append((user_id, number, room_id, session_id, key.first_message_index,
                                        key.forwarded_count, int(key.is_verified), _encode(key.session_data)))
            if changes:
                await conn.executemany(
                    f"INSERT INTO room_key_backup_keys (user_id, version, {_KEY_COLUMNS})"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET"
                    " first_message_index = excluded.first_message_index,"
                    " forwarded_count = excluded.forwarded_count, is_verified = excluded.is_verified,"
                    " session_data = excluded.session_data",
                    changes,
                )
                row = await self._bump_etag(conn, user_id, number)
            return await self._with_count(conn, user_id, row)

    async def _room_keys(self, conn: Connection, user_id: str, number: int, room_id: str) -> dict[str, SessionKey]:
        rows = await conn.fetchall(
            f"SELECT {_KEY_COLUMNS} FROM room_key_backup_keys WHERE user_id = ? AND version = ? AND room_id = ?",
            user_id, number, room_id,
        )
        return {r[1]: _session_key(r) for r in rows}

    async def _bump_etag(self, conn: Connection, user_id: str, number: int) -> Sequence[Any]:
        row = await conn.fetchone(
            "UPDATE room_key_backup_versions SET etag = etag + 1 WHERE user_id = ? AND version = ?"
            " RETURNING version, algorithm, auth_data, etag",
            user_id, number,
        )
        assert row is not None
        return row

    async def get_keys(
        self, user_id: str, version: str, room_id: str | None = None, session_id: str | None = None
    ) -> dict[str, dict[str, SessionKey]]:
        """room -> session -> key, of the whole version, one room or one session."""
        number = _version_number(version)
        if number is None:
            return {}
        sql = f"SELECT {_KEY_COLUMNS} FROM room_key_backup_keys WHERE user_id = ? AND version = ?"
        args: list[Any] = [user_id, number]
        if room_id is not None:
            sql += " AND room_id = ?"
            args.append(room_id)
            if session_id is not None:
                sql += " AND session_id = ?"
                args.append(session_id)
        out: dict[str, dict[str, SessionKey]] = {}
        for r in await self.db.fetchall(sql + " ORDER BY room_id, session_id", *args):
            out.setdefault(r[0], {})[r[1]] = _session_key(r)
        return out

    async def delete_keys(
        self, user_id: str, version: str, room_id: str | None = None, session_id: str | None = None
    ) -> BackupVersion | None:
        """Delete the keys of the whole version, one room or one session; the etag changes
        if any was deleted. None if the version does not exist (any more)."""
        number = _version_number(version)
        if number is None:
            return None
        async with self.db.transaction() as conn:
            row = await conn.fetchone(
                _LIVE_VERSION, user_id, number,
            )
            if row is None:
                return None
            sql = "DELETE FROM room_key_backup_keys WHERE user_id = ? AND version = ?"
            args: list[Any] = [user_id, number]
            if room_id is not None:
                sql += " AND room_id = ?"
                args.append(room_id)
                if session_id is not None:
                    sql += " AND session_id = ?"
                    args.append(session_id)
            if await conn.execute(sql, *args):
                row = await self._bump_etag(conn, user_id, number)
            return await self._with_count(conn, user_id, row)


def _session_key(r: Sequence[Any]) -> SessionKey:
    return SessionKey(int(r[2]), int(r[3]), bool(r[4]), _object(r[5]))
