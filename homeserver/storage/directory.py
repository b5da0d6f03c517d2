"""The directory store: room aliases of this server and the rooms published in its room
directory.

Guarantees: an alias maps to at most one room (the insert that loses a race changes
nothing and says so); publishing and unpublishing are idempotent. Stateless apart from
the database.
"""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.storage.database import Database
from homeserver.util.clock import SYSTEM_CLOCK, Clock

# The state the room directory shows of a room (all with state_key "").
SUMMARY_TYPES = (
    "m.room.create", "m.room.name", "m.room.topic", "m.room.canonical_alias", "m.room.avatar",
    "m.room.join_rules", "m.room.history_visibility", "m.room.guest_access",
)


@dataclass(frozen=True, slots=True)
class AliasRecord:
    room_alias: str
    room_id: str
    creator: str
    created_ts: int


@dataclass(frozen=True, slots=True)
class PublishedRoom:
    room_id: str
    joined_members: int
    local_joined_members: int
    state: dict[str, str]  # event type -> event ID, of SUMMARY_TYPES


class DirectoryStore:
    def __init__(self, db: Database, clock: Clock = SYSTEM_CLOCK) -> None:
        self.db = db
        self._clock = clock

    # ------------------------------------------------------------------ aliases

    async def create_alias(self, room_alias: str, room_id: str, creator: str) -> bool:
        """Map ``room_alias`` to ``room_id``; False (and nothing changed) if it is taken."""
        changed = await self.db.execute(
            "INSERT INTO room_aliases (room_alias, room_id, creator, created_ts) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (room_alias) DO NOTHING",
            room_alias, room_id, creator, self._clock.time_ms(),
        )
        return changed == 1

    async def get_alias(self, room_alias: str) -> AliasRecord | None:
        row = await self.db.fetchone(
            "SELECT room_alias, room_id, creator, created_ts FROM room_aliases WHERE room_alias = ?", room_alias
        )
        return None if row is None else AliasRecord(row[0], row[1], row[2], int(row[3]))

    async def delete_alias(self, room_alias: str) -> bool:
        return await self.db.execute("DELETE FROM room_aliases WHERE room_alias = ?", room_alias) == 1

    async def aliases_for_room(self, room_id: str) -> list[str]:
        rows = await self.db.fetchall(
            "SELECT room_alias FROM room_aliases WHERE room_id = ? ORDER BY created_ts, room_alias", room_id
        )
        return [r[0] for r in rows]

    # ------------------------------------------------------------------ published rooms

    async def is_published(self, room_id: str) -> bool:
        return await self.db.fetchval("SELECT 1 FROM published_rooms WHERE room_id = ?", room_id) is not None

    async def set_published(self, room_id: str, published: bool) -> None:
        if published:
            await self.db.execute(
                "INSERT INTO published_rooms (room_id, published_ts) VALUES (?, ?)"
                " ON CONFLICT (room_id) DO NOTHING",
                room_id, self._clock.time_ms(),
            )
        else:
            await self.db.execute("DELETE FROM published_rooms WHERE room_id = ?", room_id)

    async def published_rooms(self, server_name: str) -> list[PublishedRoom]:
        """Every published room with its joined member counts (all, and of ``server_name``)
        and the event IDs of its summary state, read from the current state in two queries."""
        counts = await self.db.fetchall(
            "SELECT p.room_id, COUNT(cs.state_key),"
            " SUM(CASE WHEN cs.state_key LIKE ? THEN 1 ELSE 0 END)"
            " FROM published_rooms p LEFT JOIN current_state cs ON cs.room_id = p.room_id"
            " AND cs.type = 'm.room.member' AND cs.membership = 'join'"
            " GROUP BY p.room_id",
            "%:" + server_name,
        )
        cond, args = self.db.dialect.in_list("cs.type", SUMMARY_TYPES)
        rows = await self.db.fetchall(
            "SELECT cs.room_id, cs.type, cs.event_id FROM published_rooms p"
            " JOIN current_state cs ON cs.room_id = p.room_id"
            f" WHERE cs.state_key = '' AND {cond}",
            *args,
        )
        state: dict[str, dict[str, str]] = {}
        for room_id, event_type, event_id in rows:
            state.setdefault(room_id, {})[event_type] = event_id
        return [
            PublishedRoom(room_id, int(total or 0), int(local or 0), state.get(room_id, {}))
            for room_id, total, local in counts
        ]
