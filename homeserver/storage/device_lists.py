"""The device-list stream and the cache of remote users' device lists
(storage/schema/0013_e2e_keys.sql).

Guarantees: a position is taken by incrementing the one row of ``device_list_position``
inside the writing transaction, so (the row being locked until commit on PostgreSQL, and
SQLite having one writer) a /sync that has read position P never later meets a change at
or below P. A remote user's cache row holds the last ``stream_id`` its server announced;
``stale`` marks a gap to be resynced.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from homeserver.storage.database import Database
from homeserver.storage.engine.base import Connection


async def bump_stream(conn: Connection, user_id: str, device_id: str) -> int:
    """In ``conn``'s transaction: record a change of ``user_id``'s device list (``device_id``
    "" for a cross-signing change); return its position."""
    position = int(await conn.fetchval(
        "UPDATE device_list_position SET position = position + 1 WHERE only_row = 1 RETURNING position"
    ))
    await conn.execute(
        "INSERT INTO device_list_stream (stream_id, user_id, device_id) VALUES (?, ?, ?)",
        position, user_id, device_id,
    )
    return position


@dataclass(frozen=True, slots=True)
class RemoteList:
    stream_id: int
    stale: bool


@dataclass(frozen=True, slots=True)
class RemoteDevice:
    device_id: str
    display_name: str | None
    keys: dict[str, Any] | None


class DeviceListStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def max_stream_id(self) -> int:
        value = await self.db.fetchval("SELECT position FROM device_list_position WHERE only_row = 1")
        return int(value) if value is not None else 0

    async def bump(self, user_id: str, device_id: str) -> int:
        async with self.db.transaction() as conn:
            return await bump_stream(conn, user_id, device_id)

    async def last_positions(self, user_id: str, limit: int = 2) -> list[int]:
        """``user_id``'s newest stream positions, newest first."""
        rows = await self.db.fetchall(
            "SELECT stream_id FROM device_list_stream WHERE user_id = ? ORDER BY stream_id DESC LIMIT ?",
            user_id, limit,
        )
        return [int(r[0]) for r in rows]

    async def last_device_positions(self, user_id: str, limit: int) -> list[int]:
        """``user_id``'s newest positions of device changes (not cross-signing ones), newest
        first: the ``stream_id``/``prev_id`` of the m.device_list_update EDUs."""
        rows = await self.db.fetchall(
            "SELECT stream_id FROM device_list_stream WHERE user_id = ? AND device_id <> ''"
            " ORDER BY stream_id DESC LIMIT ?",
            user_id, limit,
        )
        return [int(r[0]) for r in rows]

    async def users_sharing_a_room(self, user_id: str) -> set[str]:
        """Users joined to a room ``user_id`` is joined to (``user_id`` included when joined
        anywhere)."""
        rows = await self.db.fetchall(
            "SELECT DISTINCT b.state_key FROM current_state a JOIN current_state b ON b.room_id = a.room_id"
            " WHERE a.type = 'm.room.member' AND a.state_key = ? AND a.membership = 'join'"
            " AND b.type = 'm.room.member' AND b.membership = 'join'",
            user_id,
        )
        return {r[0] for r in rows}

    async def changed(self, user_id: str, since: int, upto: int) -> list[str]:
        """Users sharing a room with ``user_id`` (and ``user_id`` itself) whose device list
        changed in (since, upto]."""
        rows = await self.db.fetchall(
            "SELECT DISTINCT s.user_id FROM device_list_stream s WHERE s.stream_id > ? AND s.stream_id <= ?"
            " AND (s.user_id = ? OR s.user_id IN (SELECT b.state_key FROM current_state a"
            " JOIN current_state b ON b.room_id = a.room_id"
            " WHERE a.type = 'm.room.member' AND a.state_key = ? AND a.membership = 'join'"
            " AND b.type = 'm.room.member' AND b.membership = 'join'))",
            since, upto, user_id, user_id,
        )
        return sorted(r[0] for r in rows)

    async def membership_moves(self, user_id: str, since: int, upto: int, leaving: bool) -> set[str]:
        """Users whose membership moved in (since, upto] (events stream orderings) in a room
        ``user_id`` is (or was) in: members who left (``leaving``) or joined such a room;
        and when ``user_id`` itself left (or joined) a room then, that room's joined members."""
        memberships = ("leave", "ban") if leaving else ("join",)
        marks = ", ".join("?" for _ in memberships)
        others = await self.db.fetchall(
            "SELECT DISTINCT e.state_key FROM events e JOIN current_state me ON me.room_id = e.room_id"
            " AND me.type = 'm.room.member' AND me.state_key = ?"
            f" WHERE e.type = 'm.room.member' AND e.membership IN ({marks})"
            " AND e.stream_ordering > ? AND e.stream_ordering <= ?",
            user_id, *memberships, since, upto,
        )
        mine = await self.db.fetchall(
            "SELECT DISTINCT cs.state_key FROM events e JOIN current_state cs ON cs.room_id = e.room_id"
            " AND cs.type = 'm.room.member' AND cs.membership = 'join'"
            f" WHERE e.type = 'm.room.member' AND e.state_key = ? AND e.membership IN ({marks})"
            " AND e.stream_ordering > ? AND e.stream_ordering <= ?",
            user_id, *memberships, since, upto,
        )
        return {r[0] for r in others} | {r[0] for r in mine}

    async def local_devices(self, user_id: str) -> list[RemoteDevice]:
        """A local user's devices with their keys (None when none uploaded), for GET
        /user/devices."""
        rows = await self.db.fetchall(
            "SELECT d.device_id, d.display_name, k.key_json FROM devices d LEFT JOIN e2e_device_keys k"
            " ON k.user_id = d.user_id AND k.device_id = d.device_id WHERE d.user_id = ? ORDER BY d.device_id",
            user_id,
        )
        return [RemoteDevice(r[0], r[1], json.loads(r[2]) if r[2] is not None else None) for r in rows]

    # ------------------------------------------------------------------ remote users

    async def remote_list(self, user_id: str) -> RemoteList | None:
        row = await self.db.fetchone("SELECT stream_id, stale FROM remote_device_lists WHERE user_id = ?", user_id)
        return None if row is None else RemoteList(int(row[0]), bool(row[1]))

    async def mark_stale(self, user_id: str) -> None:
        await self.db.execute(
            "INSERT INTO remote_device_lists (user_id, stream_id, stale) VALUES (?, 0, 1)"
            " ON CONFLICT (user_id) DO UPDATE SET stale = 1", user_id,
        )

    async def apply_remote_update(
        self, user_id: str, device_id: str, stream_id: int, display_name: str | None,
        keys: Mapping[str, Any] | None, deleted: bool,
    ) -> int:
        """One device of a remote user changed (an m.device_list_update EDU in sequence);
        return the local stream position taken."""
        async with self.db.transaction() as conn:
            if deleted:
                await conn.execute(
                    "DELETE FROM remote_device_keys WHERE user_id = ? AND device_id = ?", user_id, device_id
                )
            else:
                await conn.execute(
                    "INSERT INTO remote_device_keys (user_id, device_id, display_name, key_json) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (user_id, device_id) DO UPDATE SET display_name = excluded.display_name,"
                    " key_json = excluded.key_json",
                    user_id, device_id, display_name, json.dumps(dict(keys)) if keys is not None else None,
                )
            await conn.execute(
                "INSERT INTO remote_device_lists (user_id, stream_id, stale) VALUES (?, ?, 0)"
                " ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id", user_id, stream_id,
            )
            return await bump_stream(conn, user_id, device_id)

    async def replace_remote_list(self, user_id: str, stream_id: int, devices: Sequence[RemoteDevice]) -> int:
        """A resync: the remote user's whole device list; no longer stale."""
        async with self.db.transaction() as conn:
            await conn.execute("DELETE FROM remote_device_keys WHERE user_id = ?", user_id)
            for d in devices:
                await conn.execute(
                    "INSERT INTO remote_device_keys (user_id, device_id, display_name, key_json) VALUES (?, ?, ?, ?)",
                    user_id, d.device_id, d.display_name, json.dumps(d.keys) if d.keys is not None else None,
                )
            await conn.execute(
                "INSERT INTO remote_device_lists (user_id, stream_id, stale) VALUES (?, ?, 0)"
                " ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id, stale = 0",
                user_id, stream_id,
            )
            return await bump_stream(conn, user_id, "")

    async def remote_devices(self, user_id: str) -> list[RemoteDevice]:
        rows = await self.db.fetchall(
            "SELECT device_id, display_name, key_json FROM remote_device_keys WHERE user_id = ? ORDER BY device_id",
            user_id,
        )
        return [RemoteDevice(r[0], r[1], json.loads(r[2]) if r[2] is not None else None) for r in rows]
