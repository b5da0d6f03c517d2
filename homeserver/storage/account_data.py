"""The account data store: per-user JSON objects set by clients, global (``room_id`` "")
or scoped to one room, each under a type (storage/schema/0008_account_data.sql).

Guarantees: every change takes a stream position greater than every position already
committed (positions are allocated and committed under one lock, so a /sync that has
read position P never later meets a change at or below P); a row holds only its latest
content. Stateless apart from the database and that lock (one process per database, as
for the rest of the server).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from homeserver.storage.database import Database

GLOBAL = ""  # the room_id of global account data


@dataclass(frozen=True, slots=True)
class AccountDataEntry:
    room_id: str  # GLOBAL for global account data
    type: str
    content: dict[str, Any]
    stream_id: int


def _content(raw: str) -> dict[str, Any]:
    value = json.loads(raw)
    return value if isinstance(value, dict) else {}


class AccountDataStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._write_lock = asyncio.Lock()

    async def put(self, user_id: str, room_id: str, data_type: str, content: Mapping[str, Any]) -> int:
        """Set ``user_id``'s ``data_type`` (in ``room_id``, or GLOBAL); return its new position."""
        encoded = json.dumps(dict(content), separators=(",", ":"), ensure_ascii=False)
        async with self._write_lock, self.db.transaction() as conn:
            position = await conn.fetchval(
                "INSERT INTO account_data (user_id, room_id, account_data_type, content, stream_id)"
                " VALUES (?, ?, ?, ?, (SELECT COALESCE(MAX(stream_id), 0) + 1 FROM account_data))"
                " ON CONFLICT (user_id, room_id, account_data_type)"
                " DO UPDATE SET content = excluded.content, stream_id = excluded.stream_id"
                " RETURNING stream_id",
                user_id, room_id, data_type, encoded,
            )
        return int(position)

    async def get(self, user_id: str, room_id: str, data_type: str) -> dict[str, Any] | None:
        raw = await self.db.fetchval(
            "SELECT content FROM account_data WHERE user_id = ? AND room_id = ? AND account_data_type = ?",
            user_id, room_id, data_type,
        )
        return None if raw is None else _content(raw)

    async def changes(self, user_id: str, since: int, upto: int) -> list[AccountDataEntry]:
        """``user_id``'s rows changed in (since, upto], oldest change first."""
        rows = await self.db.fetchall(
            "SELECT room_id, account_data_type, content, stream_id FROM account_data"
            " WHERE user_id = ? AND stream_id > ? AND stream_id <= ? ORDER BY stream_id",
            user_id, since, upto,
        )
        return [AccountDataEntry(r[0], r[1], _content(r[2]), int(r[3])) for r in rows]

    async def max_stream_id(self) -> int:
        value = await self.db.fetchval("SELECT MAX(stream_id) FROM account_data")
        return int(value) if value is not None else 0
