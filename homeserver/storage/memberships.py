"""The membership store: invites our users received over federation for rooms we are not
in (with their stripped state), those invites once rejected or ended, and rooms our users
forgot (the ``room_invites`` and ``forgotten_rooms`` tables).

Each change of an invite row takes a new ``stream_id`` (delete and insert in one
transaction), so /sync asks for rows past a position and sees every change once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from homeserver.storage.database import Database
from homeserver.util.clock import SYSTEM_CLOCK, Clock


@dataclass(frozen=True, slots=True)
class ReceivedInvite:
    stream_id: int
    user_id: str
    room_id: str
    # "invite" or "knock"; "leave" once rejected or retracted; "leave" or "ban" once the room ended it.
    membership: str
    event_id: str
    sender: str
    room_version: str
    event: dict[str, Any]
    invite_room_state: list[dict[str, Any]]  # stripped state events
    received_ts: int


_COLUMNS = (
    "stream_id, user_id, room_id, membership, event_id, sender, room_version, event_json,"
    " invite_room_state, received_ts"
)


def _row(row: Sequence[Any]) -> ReceivedInvite:
    return ReceivedInvite(
        int(row[0]), row[1], row[2], row[3], row[4], row[5], row[6],
        json.loads(row[7]), json.loads(row[8]), int(row[9]),
    )


class RoomMembershipStore:
    def __init__(self, db: Database, clock: Clock = SYSTEM_CLOCK) -> None:
        self.db = db
        self._clock = clock

    async def store_invite(
        self, user_id: str, room_id: str, event: Mapping[str, Any], event_id: str, room_version: str,
        stripped_state: Sequence[Mapping[str, Any]], membership: str = "invite",
    ) -> int:
        """Record (replacing any earlier row) an invite or its rejection; return its stream id."""
        async with self.db.transaction() as conn:
            await conn.execute(
                "DELETE FROM room_invites WHERE user_id = ? AND room_id = ?", user_id, room_id
            )
            stream_id = await conn.fetchval(
                "INSERT INTO room_invites (user_id, room_id, membership, event_id, sender, room_version,"
                " event_json, invite_room_state, received_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " RETURNING stream_id",
                user_id, room_id, membership, event_id, str(event.get("sender", "")), room_version,
                json.dumps(event, separators=(",", ":")), json.dumps(list(stripped_state), separators=(",", ":")),
                self._clock.time_ms(),
            )
        return int(stream_id)

    async def mark_rejected(self, user_id: str, room_id: str, event: Mapping[str, Any], event_id: str) -> None:
        """The user rejected the invite (the leave went through a resident server)."""
        invite = await self.get_invite(user_id, room_id)
        if invite is None:
            return
        await self.end(invite, event, event_id, "leave")

    async def delete_invite(self, user_id: str, room_id: str) -> None:
        await self.db.execute("DELETE FROM room_invites WHERE user_id = ? AND room_id = ?", user_id, room_id)

    async def get_invite(self, user_id: str, room_id: str) -> ReceivedInvite | None:
        row = await self.db.fetchone(
            f"SELECT {_COLUMNS} FROM room_invites WHERE user_id = ? AND room_id = ?", user_id, room_id
        )
        return None if row is None else _row(row)

    async def pending(self, user_id: str, room_id: str) -> ReceivedInvite | None:
        """The user's invite to, or knock on, a room received over federation, while it stands."""
        row = await self.get_invite(user_id, room_id)
        return row if row is not None and row.membership in ("invite", "knock") else None

    async def end(self, row: ReceivedInvite, event: Mapping[str, Any], event_id: str, membership: str) -> None:
        """The invite or knock ``row`` is over (``membership``: leave, or ban), ended by ``event``."""
        await self.store_invite(row.user_id, row.room_id, event, event_id, row.room_version, row.invite_room_state,
                                membership=membership)

    async def invites_for_user(self, user_id: str, since_stream_id: int = 0) -> list[ReceivedInvite]:
        """Rows for ``user_id`` changed after ``since_stream_id``, oldest first."""
        rows = await self.db.fetchall(
            f"SELECT {_COLUMNS} FROM room_invites WHERE user_id = ? AND stream_id > ? ORDER BY stream_id",
            user_id, since_stream_id,
        )
        return [_row(r) for r in rows]

    async def pending_invites_from(self, server_name: str, user_id: str, room_id: str) -> tuple[int, int]:
        """(invites pending from users of ``server_name``, those of them for ``user_id``),
        leaving out ``user_id``'s invite to ``room_id`` (the one a new invite replaces)."""
        suffix = ":" + server_name
        row = await self.db.fetchone(
            "SELECT COUNT(*), COALESCE(SUM(CASE WHEN user_id = ? THEN 1 ELSE 0 END), 0) FROM room_invites"
            " WHERE membership = 'invite' AND substr(sender, length(sender) - ? + 1) = ?"
            " AND NOT (user_id = ? AND room_id = ?)",
            user_id, len(suffix), suffix, user_id, room_id,
        )
        return (0, 0) if row is None else (int(row[0]), int(row[1]))

    async def max_stream_id(self) -> int:
        value = await self.db.fetchval("SELECT MAX(stream_id) FROM room_invites")
        return int(value) if value is not None else 0

    # ------------------------------------------------------------------ forgotten rooms

    async def forget(self, user_id: str, room_id: str) -> None:
        await self.db.execute(
            "INSERT INTO forgotten_rooms (user_id, room_id, forgotten_ts) VALUES (?, ?, ?)"
            " ON CONFLICT (user_id, room_id) DO NOTHING",
            user_id, room_id, self._clock.time_ms(),
        )

    async def unforget(self, user_id: str, room_id: str) -> None:
        await self.db.execute("DELETE FROM forgotten_rooms WHERE user_id = ? AND room_id = ?", user_id, room_id)

    async def forgotten(self, user_id: str) -> set[str]:
        rows = await self.db.fetchall("SELECT room_id FROM forgotten_rooms WHERE user_id = ?", user_id)
        return {r[0] for r in rows}
