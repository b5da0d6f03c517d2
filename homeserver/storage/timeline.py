"""Read-side queries for clients: a room's accepted events by stream ordering, a user's
membership changes, and the ephemeral tables (typing, receipts).

Guarantees: only ACCEPTED events are returned as timeline (rejected, soft-failed and
outlier events are never shown to clients); pages are bounded by the caller's limit.
A stream position P stands between the events with orderings P and P+1.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from homeserver.storage.database import Database
from homeserver.storage.events import CHUNK, EventStore, StoredEvent
from homeserver.util.iters import batch_iter

# Remote typing notifications (federation/pipeline/edus.py) expire after this; local ones
# are stored with the same lifetime so that "set at" = expires_ts - TYPING_TIMEOUT_MS.
TYPING_TIMEOUT_MS = 30_000


@dataclass(frozen=True, slots=True)
class MembershipChange:
    room_id: str
    event_id: str
    membership: str
    stream_ordering: int


@dataclass(frozen=True, slots=True)
class Receipt:
    room_id: str
    receipt_type: str
    user_id: str
    thread_id: str
    event_ids: list[str]
    data: dict[str, Any]
    received_ts: int


class TimelineStore:
    def __init__(self, db: Database, events: EventStore) -> None:
        self.db = db
        self.events = events

    async def room_events(
        self, room_id: str, *, after: int, upto: int, limit: int, newest_first: bool
    ) -> list[StoredEvent]:
        """Accepted events of a room with ``after < stream_ordering <= upto``, at most
        ``limit``, newest first or oldest first."""
        order = "DESC" if newest_first else "ASC"
        rows = await self.db.fetchall(
            "SELECT event_id FROM events WHERE room_id = ? AND outcome = 'accepted'"
            f" AND stream_ordering > ? AND stream_ordering <= ? ORDER BY stream_ordering {order} LIMIT ?",
            room_id, after, upto, limit,
        )
        ids = [r[0] for r in rows]
        found = await self.events.get_events(ids)
        return [found[i] for i in ids if i in found]

    async def rooms_with_events(self, room_ids: Iterable[str], after: int, upto: int) -> set[str]:
        out: set[str] = set()
        for chunk in batch_iter(room_ids, CHUNK):
            cond, args = self.db.dialect.in_list("room_id", chunk)
            rows = await self.db.fetchall(
                f"SELECT DISTINCT room_id FROM events WHERE {cond}"
                " AND outcome = 'accepted' AND stream_ordering > ? AND stream_ordering <= ?",
                *args, after, upto,
            )
            out.update(r[0] for r in rows)
        return out

    async def membership_changes(self, user_id: str, after: int, upto: int) -> list[MembershipChange]:
        """The user's member events (accepted, or outliers such as remote invites) in the range."""
        rows = await self.db.fetchall(
            "SELECT room_id, event_id, membership, stream_ordering FROM events"
            " WHERE state_key = ? AND type = 'm.room.member' AND outcome IN ('accepted', 'outlier')"
            " AND stream_ordering > ? AND stream_ordering <= ? ORDER BY stream_ordering",
            user_id, after, upto,
        )
        return [MembershipChange(r[0], r[1], r[2] or "", int(r[3])) for r in rows]

    async def latest_membership(
        self, user_id: str, room_id: str, upto: int | None = None
    ) -> MembershipChange | None:
        """The user's newest member event in a room (at or before ``upto``)."""
        sql = (
            "SELECT room_id, event_id, membership, stream_ordering FROM events"
            " WHERE state_key = ? AND room_id = ? AND type = 'm.room.member'"
            " AND outcome IN ('accepted', 'outlier')"
        )
        args: list[Any] = [user_id, room_id]
        if upto is not None:
            sql += " AND stream_ordering <= ?"
            args.append(upto)
        row = await self.db.fetchone(sql + " ORDER BY stream_ordering DESC LIMIT 1", *args)
        return None if row is None else MembershipChange(row[0], row[1], row[2] or "", int(row[3]))

    async def current_membership(self, user_id: str, room_id: str) -> tuple[str | None, str | None]:
        row = await self.db.fetchone(
            "SELECT membership, event_id FROM current_state WHERE room_id = ? AND type = 'm.room.member'"
            " AND state_key = ?",
            room_id, user_id,
        )
        return (None, None) if row is None else (row[0], row[1])

    async def stream_ordering_of(self, event_id: str) -> int | None:
        value = await self.db.fetchval("SELECT stream_ordering FROM events WHERE event_id = ?", event_id)
        return None if value is None else int(value)

    # ------------------------------------------------------------------ ephemeral

    async def typing_users(self, room_id: str, now_ms: int) -> list[str]:
        rows = await self.db.fetchall(
            "SELECT user_id FROM typing WHERE room_id = ? AND expires_ts > ? ORDER BY user_id", room_id, now_ms
        )
        return [r[0] for r in rows]

    async def rooms_with_typing_changes(self, room_ids: Iterable[str], since_ms: int, now_ms: int) -> set[str]:
        """Rooms where someone started typing after ``since_ms`` or stopped by expiry since."""
        out: set[str] = set()
        for chunk in batch_iter(room_ids, CHUNK):
            cond, args = self.db.dialect.in_list("room_id", chunk)
            rows = await self.db.fetchall(
                f"SELECT DISTINCT room_id FROM typing WHERE {cond}"
                " AND (expires_ts - ? > ? OR (expires_ts > ? AND expires_ts <= ?))",
                *args, TYPING_TIMEOUT_MS, since_ms, since_ms, now_ms,
            )
            out.update(r[0] for r in rows)
        return out

    async def set_typing(self, room_id: str, user_id: str, typing: bool, now_ms: int) -> None:
        if typing:
            await self.db.execute(
                "INSERT INTO typing (room_id, user_id, expires_ts) VALUES (?, ?, ?)"
                " ON CONFLICT (room_id, user_id) DO UPDATE SET expires_ts = excluded.expires_ts",
                room_id, user_id, now_ms + TYPING_TIMEOUT_MS,
            )
        else:
            # Expire the row now rather than delete it: /sync sees "stopped since" as a change.
            await self.db.execute(
                "UPDATE typing SET expires_ts = ? WHERE room_id = ? AND user_id = ? AND expires_ts > ?",
                now_ms, room_id, user_id, now_ms,
            )

    async def receipts(self, room_ids: Iterable[str], since_ms: int, upto_ms: int) -> list[Receipt]:
        out: list[Receipt] = []
        for chunk in batch_iter(room_ids, CHUNK):
            cond, args = self.db.dialect.in_list("room_id", chunk)
            rows = await self.db.fetchall(
                "SELECT room_id, receipt_type, user_id, thread_id, event_ids, data, received_ts FROM receipts"
                f" WHERE {cond} AND received_ts > ? AND received_ts <= ?",
                *args, since_ms, upto_ms,
            )
            for r in rows:
                event_ids = json.loads(r[4])
                data = json.loads(r[5])
                out.append(Receipt(r[0], r[1], r[2], r[3], event_ids if isinstance(event_ids, list) else [],
                                   data if isinstance(data, dict) else {}, int(r[6])))
        return out

    async def store_receipt(
        self, room_id: str, receipt_type: str, user_id: str, thread_id: str, event_id: str,
        data: dict[str, Any], now_ms: int,
    ) -> None:
        await self.db.execute(
            "INSERT INTO receipts (room_id, receipt_type, user_id, thread_id, event_ids, data, received_ts)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (room_id, receipt_type, user_id, thread_id)"
            " DO UPDATE SET event_ids = excluded.event_ids, data = excluded.data,"
            " received_ts = excluded.received_ts",
            room_id, receipt_type, user_id, thread_id, json.dumps([event_id]), json.dumps(data), now_ms,
        )
