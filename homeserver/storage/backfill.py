"""Reads of the backfill path (rooms/backfill.py): where a room's held timeline begins,
and who made the room."""

from __future__ import annotations

from homeserver.storage.database import Database


class BackfillStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def oldest_prev_events(self, room_id: str, limit: int) -> list[str]:
        """The prev events of the room's ``limit`` oldest timeline events (not outliers),
        each once."""
        rows = await self.db.fetchall(
            "SELECT event_id FROM events WHERE room_id = ? AND outcome <> 'outlier'"
            " ORDER BY stream_ordering LIMIT ?",
            room_id, limit,
        )
        ids = [r[0] for r in rows]
        if not ids:
            return []
        condition, args = self.db.dialect.in_list("event_id", ids)
        edges = await self.db.fetchall(f"SELECT prev_event_id FROM event_edges WHERE {condition}", *args)
        return list(dict.fromkeys(r[0] for r in edges))

    async def current_create_event_id(self, room_id: str) -> str | None:
        """The ID of the room's create event in its current state."""
        value = await self.db.fetchval(
            "SELECT event_id FROM current_state WHERE room_id = ? AND type = 'm.room.create' AND state_key = ''",
            room_id,
        )
        return None if value is None else str(value)
