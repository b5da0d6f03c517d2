"""Read receipts received from other servers (``m.receipt`` EDUs), written in one batch;
the client API reads them back through ``TimelineStore.receipts``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from homeserver.storage.database import Database


@dataclass(frozen=True, slots=True)
class ReceivedReceipt:
    room_id: str
    receipt_type: str
    user_id: str
    thread_id: str
    event_ids: list[str]
    data: dict[str, Any]


class ReceiptStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def store_many(self, receipts: Sequence[ReceivedReceipt], now_ms: int) -> None:
        """Each receipt replaces the user's previous one of its room, type and thread."""
        await self.db.executemany(
            "INSERT INTO receipts (room_id, receipt_type, user_id, thread_id, event_ids, data,"
            " received_ts) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (room_id, receipt_type,"
            " user_id, thread_id) DO UPDATE SET event_ids = excluded.event_ids,"
            " data = excluded.data, received_ts = excluded.received_ts",
            [(r.room_id, r.receipt_type, r.user_id, r.thread_id, json.dumps(r.event_ids), json.dumps(r.data),
              now_ms) for r in receipts],
        )

    async def server_in_room(self, room_id: str, server: str) -> bool:
        """Whether ``server`` has a joined member in the room's current state (whose EDUs
        about the room are taken in). One indexed look-up of the room's members whose ID
        ends in ``:server``, each then checked exactly."""
        pattern = "%:" + server.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = await self.db.fetchall(
            "SELECT state_key FROM current_state WHERE room_id = ? AND type = 'm.room.member'"
            " AND membership = 'join' AND state_key LIKE ? ESCAPE '\\' LIMIT 100",
            room_id, pattern,
        )
        return any(r[0].partition(":")[2] == server for r in rows)
