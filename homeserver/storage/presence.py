"""Who may see whose presence: look-ups of shared rooms in the rooms' current state (the
presence states themselves are held in memory, ``presence/state.py``).

Each statement starts from one user's joined memberships (the ``current_state_members``
index) and joins the members of those rooms (the primary key).
"""

from __future__ import annotations

from homeserver.storage.database import Database

_JOINED_WITH = (
    "FROM current_state a JOIN current_state b ON b.room_id = a.room_id"
    " AND b.type = 'm.room.member' AND b.membership = 'join'"
    " WHERE a.type = 'm.room.member' AND a.state_key = ? AND a.membership = 'join'"
)


def _suffix_pattern(server: str) -> str:
    return "%:" + server.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class PresenceStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def users_sharing_a_room(self, user_id: str) -> set[str]:
        """Every user joined to a room ``user_id`` is joined to (``user_id`` included when
        joined anywhere)."""
        rows = await self.db.fetchall(f"SELECT DISTINCT b.state_key {_JOINED_WITH}", user_id)
        return {r[0] for r in rows}

    async def sharing_with_server(self, user_ids: list[str], server: str) -> set[str]:
        """Which of ``user_ids`` are joined to a room where a user of ``server`` is joined: one
        statement per 500 users (a presence EDU names up to 1000)."""
        found: set[str] = set()
        pattern = _suffix_pattern(server)
        for start in range(0, len(user_ids), 500):
            cond, args = self.db.dialect.in_list("a.state_key", user_ids[start:start + 500])
            rows = await self.db.fetchall(
                "SELECT DISTINCT a.state_key FROM current_state a JOIN current_state b ON b.room_id = a.room_id"
                " AND b.type = 'm.room.member' AND b.membership = 'join'"
                f" WHERE a.type = 'm.room.member' AND a.membership = 'join' AND {cond}"
                # The server part is exactly ``server``: no earlier colon in the user ID.
                " AND b.state_key LIKE ? ESCAPE '\\' AND b.state_key NOT LIKE ? ESCAPE '\\'",
                *args, pattern, "%:%" + pattern[1:],
            )
            found.update(r[0] for r in rows)
        return found

    async def share_a_room(self, user_id: str, other: str) -> bool:
        row = await self.db.fetchval(f"SELECT 1 {_JOINED_WITH} AND b.state_key = ? LIMIT 1", user_id, other)
        return row is not None

    async def servers_sharing_a_room(self, user_id: str) -> set[str]:
        """The servers with a joined member in a room ``user_id`` is joined to."""
        servers: set[str] = set()
        for other in await self.users_sharing_a_room(user_id):
            _, sep, server = other.partition(":")
            if sep:
                servers.add(server)
        return servers

    async def shares_a_room_with_server(self, user_id: str, server: str) -> bool:
        """Whether ``user_id`` is joined to a room where a user of ``server`` is joined."""
        rows = await self.db.fetchall(
            f"SELECT b.state_key {_JOINED_WITH} AND b.state_key LIKE ? ESCAPE '\\' LIMIT 100",
            user_id, _suffix_pattern(server),
        )
        return any(r[0].partition(":")[2] == server for r in rows)

    async def room_members(self, room_id: str) -> list[str]:
        rows = await self.db.fetchall(
            "SELECT state_key FROM current_state WHERE room_id = ? AND type = 'm.room.member'"
            " AND membership = 'join'",
            room_id,
        )
        return [r[0] for r in rows]

    async def joined_rooms(self, user_id: str) -> list[str]:
        rows = await self.db.fetchall(
            "SELECT room_id FROM current_state WHERE type = 'm.room.member' AND state_key = ?"
            " AND membership = 'join'",
            user_id,
        )
        return [r[0] for r in rows]
