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
